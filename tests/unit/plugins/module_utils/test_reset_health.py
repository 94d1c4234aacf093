"""Reset health checks and the quarantine record (plugins/module_utils/_reset_health.py), over simulated kernels:
static trees for what a file holds (reset_method, config bytes), the FUSE kernel for reads that fail or hang."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / 'sim'))
import fusekernel  # noqa: E402  pylint: disable=wrong-import-position
import simkernel  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress, PciDevice  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._reset_health import (  # noqa: E402
    Health,
    Quarantine,
    QuarantineError,
    check,
    quarantine_failed,
    record_path,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs  # noqa: E402

GPU, AUDIO, IGPU = '0000:01:00.0', '0000:01:00.1', '0000:00:02.0'


def tree(tmp_path: Path) -> Sysfs:
    return Sysfs(simkernel.materialize('workstation', str(tmp_path / 'static')), timeout=1.0)


def devices(sysfs: Sysfs, *addresses: str) -> list[PciDevice]:
    return [PciDevice.read(sysfs, PciAddress.parse(a)) for a in addresses]


def one(sysfs: Sysfs, address: str, **kw: object) -> Health:
    return check(sysfs, devices(sysfs, address), **kw)[0]  # type: ignore[arg-type]


def test_a_healthy_device_reports_its_reset_methods_and_vendor(tmp_path: Path) -> None:
    sysfs = tree(tmp_path)
    gpu, igpu = check(sysfs, devices(sysfs, GPU, IGPU))
    assert gpu.healthy and gpu.problems == [] and gpu.warnings == []
    assert gpu.reset_method == ['bus'] and igpu.reset_method == ['flr', 'bus']
    assert gpu.config_readable and gpu.config_vendor_id == '10de' and igpu.config_vendor_id == '8086'
    assert gpu.driver == 'nvidia' and gpu.vendor_device == '10de:2204'
    assert not os.path.exists(record_path(sysfs))  # a check writes nothing


def test_no_reset_method_is_a_warning_not_a_quarantine(tmp_path: Path) -> None:
    sysfs = tree(tmp_path)
    os.unlink(sysfs.sys('bus/pci/devices', GPU, 'reset_method'))
    with open(sysfs.sys('bus/pci/devices', AUDIO, 'reset_method'), 'w', encoding='utf-8') as handle:
        handle.write('\n')
    absent, empty = check(sysfs, devices(sysfs, GPU, AUDIO))
    assert absent.healthy and absent.reset_method is None
    assert absent.warnings and 'no reset_method attribute' in absent.warnings[0] and GPU in absent.warnings[0]
    assert empty.healthy and empty.reset_method == []
    assert empty.warnings and 'empty reset_method' in empty.warnings[0]


def test_vendor_ffff_fails(tmp_path: Path) -> None:
    sysfs = tree(tmp_path)
    with open(sysfs.sys('bus/pci/devices', GPU, 'config'), 'r+b') as handle:
        handle.write(b'\xff' * 4)
    health = one(sysfs, GPU)
    assert not health.healthy and health.config_readable and health.config_vendor_id == 'ffff'
    assert 'vendor id ffff' in health.reason


def test_vendor_ffff_of_an_sriov_virtual_function_is_what_the_spec_says(tmp_path: Path) -> None:
    # A VF's vendor and device id registers read ffff (PCIe SR-IOV; seen on the test host's NVMe
    # VFs): the kernel takes the ids from the PF. Only a VF's config read itself is checked.
    sysfs = Sysfs(simkernel.materialize('sriov', str(tmp_path / 'sriov')), timeout=1.0)
    pci = sysfs.sys('bus/pci/devices')
    vf = sorted(a for a in os.listdir(pci) if os.path.lexists(os.path.join(pci, a, 'physfn')))[0]
    pf = os.path.basename(os.readlink(os.path.join(pci, vf, 'physfn')))
    for address in (vf, pf):
        with open(os.path.join(pci, address, 'config'), 'wb') as handle:
            handle.write(b'\xff' * 64)
    vf_health, pf_health = check(sysfs, devices(sysfs, vf, pf))
    assert vf_health.healthy and vf_health.config_readable and vf_health.config_vendor_id == 'ffff', vf_health.reason
    assert not pf_health.healthy and 'vendor id ffff' in pf_health.reason


def test_missing_config_fails(tmp_path: Path) -> None:
    sysfs = tree(tmp_path)
    os.unlink(sysfs.sys('bus/pci/devices', GPU, 'config'))
    health = one(sysfs, GPU)
    assert not health.healthy and not health.config_readable and 'cannot be read' in health.reason


def test_driver_is_only_required_where_expected(tmp_path: Path) -> None:
    sysfs = tree(tmp_path)
    os.unlink(sysfs.sys('bus/pci/devices', GPU, 'driver'))
    assert one(sysfs, GPU).healthy  # no driver: fine for a plain check
    after = one(sysfs, GPU, expect_driver={PciAddress.parse(GPU)})
    assert not after.healthy and 'no driver is bound after it was given back' in after.reason


@pytest.fixture()
def fuse_root(tmp_path: Path):  # type: ignore[no-untyped-def]
    with fusekernel.simulated('workstation', tmp_path) as root:
        yield root


def test_unreadable_config_space_fails_with_the_kernels_error(fuse_root: str) -> None:
    sysfs = Sysfs(fuse_root, timeout=1.0)
    fusekernel.set_faults(fusekernel.backing_of(fuse_root), [{'op': 'read', 'device': GPU, 'attr': 'config', 'error': 'EIO'}])
    gpu, audio = check(sysfs, devices(sysfs, GPU, AUDIO))
    assert not gpu.healthy and not gpu.config_readable
    assert gpu.reason == 'its config space cannot be read (Input/output error)'
    assert audio.healthy  # the fault hits one device only


def test_a_config_read_that_never_returns_is_bounded(fuse_root: str) -> None:
    sysfs = Sysfs(fuse_root, timeout=1.0)
    fusekernel.set_faults(fusekernel.backing_of(fuse_root), [{'op': 'read', 'device': GPU, 'attr': 'config', 'hang': True}])
    start = time.monotonic()
    health = one(sysfs, GPU, timeout=0.5)
    assert time.monotonic() - start < 5
    assert not health.healthy and 'did not return within 0.5s' in health.reason


# ---------------------------------------------------------------------------- the record
def failing(address: str, reason: str = 'its config space cannot be read (Input/output error)') -> Health:
    health = Health(PciAddress.parse(address))
    health.vendor_device = '10de:2204'
    health.problems.append(reason)
    return health


def test_record_round_trip_keeps_the_first_entry_and_removes_the_file_when_empty(tmp_path: Path) -> None:
    path = str(tmp_path / 'var' / 'q.json')
    rec = Quarantine.load(path)
    assert rec.entries == {} and not rec.changed
    assert rec.add(failing(GPU), 'gpu_quarantine', when='2026-01-01T00:00:00Z')
    assert not rec.add(failing(GPU, 'another reason'), 'vfio_bind')  # an entry already there is kept as it is
    assert not rec.add(Health(PciAddress.parse(AUDIO)), 'gpu_quarantine')  # healthy: nothing to record
    assert rec.changed and rec.diff()['before_header'].endswith('(absent)')
    rec.save()
    again = Quarantine.load(path)
    assert again.get(GPU) == {'address': GPU, 'reason': 'its config space cannot be read (Input/output error)',
                              'time': '2026-01-01T00:00:00Z', 'source': 'gpu_quarantine', 'vendor_device': '10de:2204'}
    assert not again.changed
    assert json.loads(Path(path).read_text())['version'] == 1
    assert again.clear(GPU) and not again.clear(GPU)
    again.save()
    assert not os.path.exists(path)


@pytest.mark.parametrize('content, needle', [
    ('{not json', 'is not valid JSON'),
    ('[]', 'is not a version 1 quarantine record'),
    ('{"version": 2, "devices": {}}', 'is not a version 1 quarantine record'),
    ('{"devices": {"zz:00.0": {"reason": "x"}}}', 'invalid address'),
    ('{"devices": {"0000:01:00.0": {"time": "x"}}}', 'malformed entry for 0000:01:00.0'),
])
def test_a_bad_record_fails_naming_the_file_and_is_left_as_it_is(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / 'quarantine.json'
    path.write_text(content)
    with pytest.raises(QuarantineError) as info:
        Quarantine.load(str(path))
    assert needle in str(info.value) and str(path) in str(info.value)
    assert path.read_text() == content


def test_record_path_follows_sysfs_root(tmp_path: Path) -> None:
    assert record_path(Sysfs('/sys')) == '/var/lib/fleetgpu-passthrough/quarantine.json'
    assert record_path(Sysfs(str(tmp_path / 'sys'))) == str(tmp_path / 'var/lib/fleetgpu-passthrough/quarantine.json')


def test_quarantine_failed_writes_only_failures_and_not_in_check_mode(tmp_path: Path) -> None:
    sysfs = tree(tmp_path)
    healthy = Health(PciAddress.parse(AUDIO))
    assert quarantine_failed(sysfs, [healthy], 'vfio_bind') == []
    predicted = quarantine_failed(sysfs, [failing(GPU), healthy], 'vfio_bind', write=False)
    assert [e['address'] for e in predicted] == [GPU] and predicted[0]['source'] == 'vfio_bind'
    assert not os.path.exists(record_path(sysfs))
    written = quarantine_failed(sysfs, [failing(GPU), healthy], 'vfio_bind')
    assert written[0]['reason'] == predicted[0]['reason']
    assert list(Quarantine.load(record_path(sysfs)).entries) == [GPU]
