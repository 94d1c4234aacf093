"""verify_guests' comparison (plugins/module_utils/module_backends/guest_check.py): what a VM was given on its
host against what gpu_facts sees inside the guest."""
from __future__ import annotations

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.guest_check import (
    GuestCheckError,
    HostView,
    compare,
    given_by_domain,
    locate,
    verdict,
)

A100 = {'vendor_device': '10de:20b2', 'companions': []}
L4 = {'vendor_device': '10de:27b8', 'companions': [{'vendor_device': '10de:22ba'}]}


def _seen(address: str, vendor_device: str, driver: str | None, companions: list | None = None) -> dict:
    return {'address': address, 'vendor_device': vendor_device, 'driver': driver, 'companions': companions or []}


def test_every_gpu_seen_with_its_driver_is_ok() -> None:
    result = compare('vm-a', [A100, A100, L4], [
        _seen('0000:06:00.0', '10de:20b2', 'nvidia'), _seen('0000:07:00.0', '10de:20b2', 'nvidia'),
        _seen('0000:08:00.0', '10de:27b8', 'nvidia', [{'vendor_id': '10de', 'device_id': '22ba', 'driver': None}])],
        driver='nvidia')
    assert result == {'vm': 'vm-a', 'ok': True, 'missing': [], 'missing_companions': [], 'without_driver': [],
                      'messages': [], 'matched': [
                          {'address': '0000:06:00.0', 'vendor_device': '10de:20b2', 'driver': 'nvidia', 'companions': []},
                          {'address': '0000:07:00.0', 'vendor_device': '10de:20b2', 'driver': 'nvidia', 'companions': []},
                          {'address': '0000:08:00.0', 'vendor_device': '10de:27b8', 'driver': 'nvidia',
                           'companions': ['10de:22ba']}]}


def test_a_missing_gpu_a_missing_audio_function_and_a_guest_without_driver_are_named() -> None:
    result = compare('vm-a', [A100, A100, L4], [
        _seen('0000:06:00.0', '10de:20b2', 'vfio-pci'), _seen('0000:08:00.0', '10de:27b8', 'nouveau')],
        driver='nvidia')
    assert not result['ok']
    assert result['missing'] == ['10de:20b2']
    assert result['missing_companions'] == ['10de:22ba']
    assert result['without_driver'] == ['0000:06:00.0', '0000:08:00.0']
    assert result['messages'] == [
        'vm-a: 1 of the 2 GPU(s) 10de:20b2 it was given are not seen in the guest',
        'vm-a: GPU 0000:06:00.0 (10de:20b2) in the guest is on vfio-pci, not nvidia',
        'vm-a: the companion function 10de:22ba of 10de:27b8 is not seen in the guest (1 missing)',
        'vm-a: GPU 0000:08:00.0 (10de:27b8) in the guest is on nouveau, not nvidia',
    ]


def test_without_an_expected_driver_any_driver_of_its_own_will_do() -> None:
    assert compare('vm-b', [A100], [_seen('0000:06:00.0', '10de:20b2', 'nouveau')])['ok'] is True
    unbound = compare('vm-b', [A100], [_seen('0000:06:00.0', '10de:20b2', None)])
    assert unbound['messages'] == ['vm-b: GPU 0000:06:00.0 (10de:20b2) in the guest is on no driver, not a driver '
                                   'of its own']


HOST_GPUS = [
    {'address': '0000:41:00.0', 'vendor_device': '10de:27b8', 'subsystem_vendor_id': '10de', 'subsystem_device_id': '16ca',
     'companions': [{'address': '0000:41:00.1', 'vendor_id': '10de', 'device_id': '22ba'}]},
    {'address': '0000:81:00.0', 'vendor_device': '10de:20b2', 'subsystem_vendor_id': '10de', 'subsystem_device_id': '1463',
     'companions': []},
]


def test_given_by_domain_takes_the_gpus_among_the_hostdevs_with_the_companions_given_too() -> None:
    given = given_by_domain([
        {'name': 'infer', 'hostdevs': ['0000:41:00.0', '0000:41:00.1', '0000:05:00.0']},   # 05:00.0 a NIC
        {'name': 'train', 'hostdevs': ['0000:81:00.0', '0000:41:00.0']},                   # 41:00.1 kept back
        {'name': 'plain', 'hostdevs': []},
    ], HOST_GPUS)
    assert given == {
        'infer': [{'address': '0000:41:00.0', 'vendor_device': '10de:27b8', 'subsystem_vendor_id': '10de',
                   'subsystem_device_id': '16ca',
                   'companions': [{'address': '0000:41:00.1', 'vendor_device': '10de:22ba'}]}],
        'train': [{'address': '0000:41:00.0', 'vendor_device': '10de:27b8', 'subsystem_vendor_id': '10de',
                   'subsystem_device_id': '16ca', 'companions': []},
                  {'address': '0000:81:00.0', 'vendor_device': '10de:20b2', 'subsystem_vendor_id': '10de',
                   'subsystem_device_id': '1463', 'companions': []}],
        'plain': [],
    }


def test_an_emulated_adapter_with_the_same_ids_is_not_taken_for_the_given_gpu() -> None:
    """QEMU's std VGA and the test hosts' secondary-vga are both 1234:1111; the subsystem ids tell them apart."""
    given = [{'vendor_device': '1234:1111', 'subsystem_vendor_id': '1af4', 'subsystem_device_id': '1100', 'companions': []}]
    emulated = {'address': '0000:00:01.0', 'vendor_device': '1234:1111', 'driver': 'bochs-drm', 'companions': [],
                'subsystem_vendor_id': '1af4', 'subsystem_device_id': '1111'}
    passed = {'address': '0000:05:00.0', 'vendor_device': '1234:1111', 'driver': None, 'companions': [],
              'subsystem_vendor_id': '1af4', 'subsystem_device_id': '1100'}
    result = compare('vm-c', given, [emulated, passed])
    assert [m['address'] for m in result['matched']] == ['0000:05:00.0']
    assert result['without_driver'] == ['0000:05:00.0']


HOSTS = [HostView('nodeA', {'vm1': [], 'vm2': []}), HostView('nodeB', {'vm2': []}),
         HostView('nodeC', error='libvirt is not available: no libvirt at qemu:///system')]
INVENTORY = {'nodeA', 'nodeB', 'nodeC', 'guest1'}


def test_locate_finds_the_one_host_or_takes_the_one_named() -> None:
    assert locate('vm1', None, HOSTS, INVENTORY).name == 'nodeA'
    assert locate('vm2', 'nodeB', HOSTS, INVENTORY).name == 'nodeB'


@pytest.mark.parametrize('vm,vm_host,message', [
    ('vm2', None, "VM 'vm2' is a libvirt domain on 2 KVM hosts (nodeA, nodeB): set vm_host for this guest to the one "
                  "it runs on"),
    ('vm9', None, "VM 'vm9' is a libvirt domain on none of the KVM hosts read (nodeA, nodeB); not read: nodeC "
                  "(libvirt is not available: no libvirt at qemu:///system)"),
    ('vm1', 'nodeZ', "vm_host 'nodeZ' (the KVM host of VM 'vm1') is not a host of the inventory"),
    ('vm1', 'guest1', "vm_host 'guest1' (the KVM host of VM 'vm1') is not one of the KVM hosts read (nodeA, nodeB, "
                      "nodeC)"),
    ('vm1', 'nodeC', "VM 'vm1': its KVM host nodeC could not be read: libvirt is not available: no libvirt at "
                     "qemu:///system"),
    ('vm1', 'nodeB', "VM 'vm1' is not a libvirt domain on its KVM host nodeB (domains there: vm2)"),
    ('vm1', '', "vm_host of VM 'vm1' is empty: name its KVM host, or leave vm_host out to search every KVM host"),
])
def test_locate_names_the_vm_and_the_host_it_cannot_tell(vm: str, vm_host: str | None, message: str) -> None:
    with pytest.raises(GuestCheckError) as err:
        locate(vm, vm_host, HOSTS, INVENTORY)
    assert str(err.value) == message


def test_verdict_is_one_line_per_guest() -> None:
    seen = [_seen('0000:06:00.0', '10de:27b8', 'nvidia', [{'vendor_id': '10de', 'device_id': '22ba'}])]
    given = [{'vendor_device': '10de:27b8', 'companions': [{'vendor_device': '10de:22ba'}]}]
    assert verdict(compare('vm-d', given, seen, 'nvidia'), 'nodeA') == (
        'vm-d on nodeA: OK - 1 GPU(s) given, all seen in the guest: 10de:27b8 (with 10de:22ba) at 0000:06:00.0 on nvidia')
    assert verdict(compare('vm-d', [], seen), 'nodeA') == 'vm-d on nodeA: OK - it was given no GPU'
    assert verdict(compare('vm-d', given, [], 'nvidia'), 'nodeA') == (
        'vm-d on nodeA lacks: 1 of the 1 GPU(s) 10de:27b8 it was given are not seen in the guest; the companion '
        'function 10de:22ba of 10de:27b8 is not seen in the guest (1 missing)')
