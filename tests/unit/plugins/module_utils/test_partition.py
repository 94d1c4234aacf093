"""The partition room (plugins/module_utils/_partition.py): rules, UUIDs, types, VF addresses, holders, record."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._partition import (
    MDEV_NAMESPACE,
    MdevParent,
    PartitionError,
    check_uuid,
    group_holders,
    load_record,
    parent_name,
    qemu_domain,
    read_sriov,
    record_text,
    stable_mdev_uuid,
    udev_rule_count,
    udev_rule_path,
    udev_rule_text,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from tests.sim import simkernel


@pytest.fixture(scope='module')
def sysfs(tmp_path_factory: pytest.TempPathFactory) -> Sysfs:
    return Sysfs(simkernel.materialize('partition', str(tmp_path_factory.mktemp('partition'))), timeout=2.0)


def test_stable_uuid_is_the_documented_uuid5() -> None:
    want = str(uuid.uuid5(MDEV_NAMESPACE, 'mbochs/mbochs-2/vm1-0'))
    assert stable_mdev_uuid('mbochs', 'mbochs-2', 'vm1-0') == want


@pytest.mark.parametrize('text', ['', 'nope', '0f3e6b8a3c1e4d529a537a6c1d2e4f10', '0f3e6b8a-3c1e-4d52-9a53-7a6c1d2e4f1',
                                  '0f3e6b8a-3c1e-4d52-9a53-7a6c1d2e4f10; reboot'])
def test_bad_uuids_are_refused_naming_them(text: str) -> None:
    with pytest.raises(PartitionError) as info:
        check_uuid(text, 'mdevs[0].uuid')
    assert repr(text) in str(info.value)


def test_uuid_is_lowered() -> None:
    assert check_uuid('0F3E6B8A-3C1E-4D52-9A53-7A6C1D2E4F10') == '0f3e6b8a-3c1e-4d52-9a53-7a6c1d2e4f10'


def test_udev_rule_round_trip_and_path() -> None:
    text = udev_rule_text('0000:03:00.0', 6)
    assert udev_rule_count(text) == 6
    assert 'ACTION=="add|bind", SUBSYSTEM=="pci", KERNEL=="0000:03:00.0", DRIVER=="?*", ATTR{sriov_numvfs}="6"\n' in text
    assert text.startswith('# managed by fleetgpu.passthrough')
    assert udev_rule_count(None) is None and udev_rule_count('ACTION=="add", ATTR{sriov_numvfs}="2"') is None
    assert udev_rule_path(PciAddress.parse('03:00.0')) == \
        '/etc/udev/rules.d/70-fleetgpu-passthrough-sriov-0000:03:00.0.rules'


def test_parent_names(sysfs: Sysfs) -> None:
    assert parent_name(sysfs, '04:00.0') == '0000:04:00.0'
    assert parent_name(sysfs, 'mbochs') == 'mbochs'
    with pytest.raises(PartitionError, match="parent 'bogus' is neither a PCI address nor an mdev parent"):
        parent_name(sysfs, 'bogus')
    with pytest.raises(PartitionError, match='parent is empty'):
        parent_name(sysfs, ' ')


def test_types_by_id_or_human_name(sysfs: Sysfs) -> None:
    parent = MdevParent(sysfs, '0000:04:00.0')
    assert parent.find_type('nvidia-224').name == 'GRID T4-4Q'
    assert parent.find_type('grid t4-4q').id == 'nvidia-224'
    with pytest.raises(PartitionError) as info:
        parent.find_type('GRID T4-3Q')
    assert 'nvidia-222 (GRID T4-1Q), nvidia-223 (GRID T4-2Q)' in str(info.value)


def test_vf_addresses_follow_offset_and_stride_across_a_bus(sysfs: Sysfs) -> None:
    state = read_sriov(sysfs, PciAddress.parse('03:00.0'))
    assert state is not None and state.totalvfs == 8 and state.numvfs == 0 and state.driver == 'i915'
    state.offset, state.stride = 0x80, 0x40
    assert state.vf_addresses(5) == ['0000:03:10.0', '0000:03:18.0', '0000:04:00.0', '0000:04:08.0', '0000:04:10.0']
    assert read_sriov(sysfs, PciAddress.parse('04:00.0')) is None    # no SR-IOV capability


def test_qemu_domain_and_group_holders(tmp_path: Path) -> None:
    root = tmp_path / 'sys'
    root.mkdir()
    proc = tmp_path / 'proc'
    for pid, argv in ((10, ['qemu-system-x86_64', '-name', 'guest=vm1,debug-threads=on']),
                      (11, ['qemu-system-x86_64', '-name', 'plain']), (12, ['mdev-tool'])):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / 'cmdline').write_text(''.join(a + '\0' for a in argv))
    s = Sysfs(str(root))
    assert qemu_domain(s, 10) == 'vm1' and qemu_domain(s, 11) == 'plain' and qemu_domain(s, 12) is None
    held = {'/dev/vfio/7': [(10, 'qemu-system-x86'), (12, 'mdev-tool')]}
    assert group_holders(s, 7, held) == ['vm1', '12 (mdev-tool)']
    assert group_holders(s, 8, held) == [] and group_holders(s, None, held) == []


def test_record_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / 'partition.json'
    assert load_record(str(path)) == {}
    path.write_text(record_text({'u1': {'parent': 'mbochs', 'type': 'mbochs-1', 'name': None}}))
    assert load_record(str(path)) == {'u1': {'parent': 'mbochs', 'type': 'mbochs-1', 'name': None}}
    for bad in ('{', '[]', '{"version": 2, "mdevs": {}}'):
        path.write_text(bad)
        with pytest.raises(PartitionError) as info:
            load_record(str(path))
        assert str(path) in str(info.value) and 'left as it is' in str(info.value)
    assert os.path.exists(path)
