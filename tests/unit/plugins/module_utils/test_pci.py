"""PciAddress, ids, class names, pci.ids lookups and the device read model."""
from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (
    PciAddress,
    PciAddressError,
    PciDevice,
    PciDeviceNotFound,
    PciIdError,
    PciIds,
    class_name,
    companion_kind,
    is_bridge_class,
    is_gpu_class,
    list_addresses,
    parse_id,
    read_locked_attributes,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from tests.sim import simkernel


@pytest.mark.parametrize('text,expected', [
    ('0000:41:00.0', '0000:41:00.0'),
    ('41:00.0', '0000:41:00.0'),
    ('0000:0A:1F.7', '0000:0a:1f.7'),
    ('10000:e1:00.0', '10000:e1:00.0'),  # VMD domain
    (' 0000:01:00.1 ', '0000:01:00.1'),
])
def test_address_parse(text: str, expected: str) -> None:
    assert str(PciAddress.parse(text)) == expected


@pytest.mark.parametrize('text', ['0000:41:00.8', '0000:41:20.0', '../00:00.0', '41:00', 'g1:00.0', '',
                                  '0000:41:00.0/..', '000:41:00.0', 41, None])
def test_address_rejected_naming_input(text: object) -> None:
    with pytest.raises(PciAddressError) as info:
        PciAddress.parse(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize('value', [
    2460.0,      # what YAML 1.1 makes of an unquoted 0000:41:00.0 or 41:00.0 (base 60)
    '2460.0',    # the same number after Ansible turned it into a string
    '60.0', '3600', 2460, '1e3',
])
def test_an_address_that_became_a_number_says_quote_it(value: object) -> None:
    with pytest.raises(PciAddressError) as info:
        PciAddress.parse(value)
    assert repr(value) in str(info.value)
    assert 'base-60 number' in str(info.value) and 'quote it ("0000:41:00.0")' in str(info.value)


@pytest.mark.parametrize('value', ['41:00', 'g1:00.0', True, None])
def test_other_bad_addresses_do_not_talk_about_quoting(value: object) -> None:
    with pytest.raises(PciAddressError) as info:
        PciAddress.parse(value)
    assert 'quote' not in str(info.value)


def test_address_order_and_slot() -> None:
    a, b = PciAddress.parse('01:00.1'), PciAddress.parse('01:00.0')
    assert sorted([a, b]) == [b, a]
    assert a.slot_key == b.slot_key and a != b
    other = PciAddress(a.domain, a.bus, a.slot, 0)
    assert other == b and hash(other) == hash(b)


@pytest.mark.parametrize('text,expected', [('10de', '10de'), ('0x10DE', '10de'), (0x1002, '1002')])
def test_parse_id(text: object, expected: str) -> None:
    assert parse_id(text) == expected


@pytest.mark.parametrize('text', ['10de0', 'nvidia', '', None, '0x'])
def test_parse_id_rejected(text: object) -> None:
    with pytest.raises(PciIdError) as info:
        parse_id(text, 'vendor id')
    assert repr(text) in str(info.value)


@pytest.mark.parametrize('code,name,gpu,acc,bridge,companion', [
    (0x030000, 'VGA compatible controller', True, True, False, False),
    (0x030200, '3D controller', True, True, False, False),
    (0x038000, 'Display controller', True, True, False, False),
    (0x120000, 'Processing accelerators', False, True, False, False),
    (0x060400, 'PCI bridge', False, False, True, False),
    (0x068000, 'Bridge', False, False, False, False),
    (0x040300, 'Audio device', False, False, False, True),
    (0x0c0330, 'USB controller', False, False, False, True),
    (0x0c8000, 'Serial bus controller', False, False, False, True),
    (0x020000, 'Ethernet controller', False, False, False, False),
    (0xab0000, 'Class ab00', False, False, False, False),
])
def test_classes(code: int, name: str, gpu: bool, acc: bool, bridge: bool, companion: bool) -> None:
    assert class_name(code) == name
    assert is_gpu_class(code) is gpu
    assert is_gpu_class(code, accelerators=True) is acc
    assert is_bridge_class(code) is bridge
    assert (companion_kind(code) != 'other') is companion


def test_pci_ids(tmp_path: Path) -> None:
    path = tmp_path / 'pci.ids'
    path.write_text('# comment\n1002  Advanced Micro Devices, Inc. [AMD/ATI]\n\t73bf  Navi 21\n'
                    '\t\t1002 0e3a  Radeon RX 6900 XT\n10de  NVIDIA Corporation\n\t2204  GA102\n'
                    'C 03  Display controller\n')
    ids = PciIds(str(path))
    assert ids.vendor_name('1002') == 'Advanced Micro Devices, Inc. [AMD/ATI]'
    assert ids.device_name('1002', '73bf') == 'Navi 21'
    assert ids.subsystem_name('1002', '73bf', '1002', '0e3a') == 'Radeon RX 6900 XT'
    assert ids.device_name('10de', '2204') == 'GA102'
    assert ids.vendor_name('8086') is None and ids.device_name('10de', 'ffff') is None
    assert PciIds(str(tmp_path / 'missing')).vendor_name('10de') is None


@pytest.fixture(scope='module')
def sriov(tmp_path_factory: pytest.TempPathFactory) -> Sysfs:
    return Sysfs(simkernel.materialize('sriov', str(tmp_path_factory.mktemp('sriov'))))


def test_device_read_model(sriov: Sysfs) -> None:
    dev = PciDevice.read(sriov, PciAddress.parse('01:00.0'))
    assert (dev.vendor_id, dev.device_id, dev.subsystem_vendor_id, dev.subsystem_device_id) == ('10de', '2236', '10de', '1482')
    assert dev.class_code == 0x030200 and dev.driver == 'nvidia' and dev.numa_node == 0
    assert dev.sriov_totalvfs == 32 and dev.physfn is None
    assert [str(v) for v in dev.virtfns] == ['0000:01:00.4', '0000:01:00.5', '0000:01:00.6', '0000:01:00.7']
    assert dev.mdev_types == ['nvidia-592', 'nvidia-593', 'nvidia-594']
    assert dev.iommu_group is not None and not dev.is_bridge and dev.vendor_device == '10de:2236'
    vf = PciDevice.read(sriov, PciAddress.parse('01:00.4'))
    assert str(vf.physfn) == '0000:01:00.0' and vf.sriov_totalvfs is None
    assert PciDevice.read(sriov, PciAddress.parse('00:01.0')).is_bridge


def test_device_not_found(sriov: Sysfs) -> None:
    with pytest.raises(PciDeviceNotFound, match='0000:09:00.0'):
        PciDevice.read(sriov, PciAddress.parse('09:00.0'))


def test_list_addresses(sriov: Sysfs) -> None:
    addrs = list_addresses(sriov)
    assert addrs == sorted(addrs) and PciAddress.parse('01:00.7') in addrs


def test_locked_attributes(sriov: Sysfs) -> None:
    devs = [PciDevice.read(sriov, PciAddress.parse(a)) for a in ('01:00.0', '00:02.0')]
    values, stuck = read_locked_attributes(sriov, devs, timeout=5)
    assert stuck == {}
    assert values[(devs[0].address, 'driver_override')] == '(null)'
    assert values[(devs[0].address, 'sriov_numvfs')] == '4'
    assert values[(devs[1].address, 'reset_method')] == 'flr bus'
    assert (devs[1].address, 'sriov_numvfs') not in values  # no such attribute: not read


def test_locked_attributes_stuck(tmp_path: Path) -> None:
    s = Sysfs(simkernel.materialize('stuck', str(tmp_path)))
    devs = [PciDevice.read(s, PciAddress.parse(a)) for a in ('01:00.0', '02:00.0')]
    values, stuck = read_locked_attributes(s, devs, timeout=0.3)
    assert stuck == {devs[0].address: ['driver_override', 'sriov_numvfs', 'reset_method']}
    assert values[(devs[0].address, 'driver_override')] is None
    assert values[(devs[1].address, 'reset_method')] == 'flr bus'
