"""verify_guests' comparison (plugins/module_utils/_guest_check.py): what a VM was given on its
host against what gpu_facts sees inside the guest."""
from __future__ import annotations

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._guest_check import compare

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
                      'messages': []}


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
