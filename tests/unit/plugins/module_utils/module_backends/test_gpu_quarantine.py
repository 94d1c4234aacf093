"""The gpu_quarantine engine over simulated kernels, and the quarantine's way through the collection:
checked -> gpu_facts reports it -> fleet placement skips it -> cleared -> placed again."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / 'sim'))
import fusekernel  # noqa: E402  pylint: disable=wrong-import-position
import simkernel  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import fleet_plan as fleet  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import gather  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_quarantine import (  # noqa: E402
    QuarantineInputError,
    run,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._reset_health import (  # noqa: E402
    QuarantineError,
    record_path,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs  # noqa: E402

GPU, AUDIO, IGPU = '0000:01:00.0', '0000:01:00.1', '0000:00:02.0'
FAULT = [{'op': 'read', 'device': GPU, 'attr': 'config', 'error': 'EIO'}]


@pytest.fixture()
def sysfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    with fusekernel.simulated('workstation', tmp_path) as root:
        yield Sysfs(root, timeout=1.0)


def fault(sysfs: Sysfs, faults: list) -> None:
    fusekernel.set_faults(fusekernel.backing_of(sysfs.sys_root), faults)


def record(sysfs: Sysfs) -> dict | None:
    path = record_path(sysfs)
    return json.loads(Path(path).read_text()) if os.path.exists(path) else None


def test_all_gpus_healthy_is_no_change_and_writes_nothing(sysfs: Sysfs) -> None:
    result, warnings = run(sysfs, 'checked', [], diff=True)
    assert result['changed'] is False and 'diff' not in result and warnings == []
    assert [d['address'] for d in result['devices']] == [IGPU, GPU]  # every display controller, no audio
    assert all(d['healthy'] and d['quarantined'] is False for d in result['devices'])
    assert result['devices'][1]['reset_method'] == ['bus'] and result['devices'][0]['reset_method'] == ['flr', 'bus']
    assert result['quarantined'] == {} and result['added'] == [] and record(sysfs) is None


def test_checked_quarantines_check_mode_predicts_second_run_is_no_change(sysfs: Sysfs) -> None:
    fault(sysfs, FAULT)
    predicted, _w = run(sysfs, 'checked', [GPU, AUDIO], check_mode=True, diff=True)
    assert predicted['changed'] is True and predicted['added'] == [GPU]
    assert record(sysfs) is None  # check mode writes nothing
    assert predicted['diff']['before'] == '' and GPU in predicted['diff']['after']

    done, _w = run(sysfs, 'checked', [GPU, AUDIO], diff=True)
    assert done['changed'] is True and done['added'] == [GPU]
    gpu, audio = done['devices']
    assert gpu['healthy'] is False and gpu['problems'] == ['its config space cannot be read (Input/output error)']
    assert gpu['quarantined']['reason'] == 'its config space cannot be read (Input/output error)'
    assert gpu['quarantined']['source'] == 'gpu_quarantine' and gpu['quarantined']['time'].endswith('Z')
    assert audio['healthy'] is True and audio['quarantined'] is False
    assert json.loads(done['diff']['after']) == record(sysfs)
    assert record(sysfs)['devices'][GPU]['address'] == GPU  # type: ignore[index]
    # the check mode run predicted the same entry, but for its time
    assert {k: v for k, v in predicted['quarantined'][GPU].items() if k != 'time'} == \
        {k: v for k, v in done['quarantined'][GPU].items() if k != 'time'}

    again, _w = run(sysfs, 'checked', [GPU, AUDIO], diff=True)
    assert again['changed'] is False and again['added'] == [] and 'diff' not in again
    # healthy again: still quarantined, only the named action releases it
    fault(sysfs, [])
    healed, _w = run(sysfs, 'checked', [GPU])
    assert healed['changed'] is False and healed['devices'][0]['healthy'] is True
    assert healed['devices'][0]['quarantined']['reason'].startswith('its config space')


def test_cleared_releases_check_mode_predicts_and_unknown_addresses_are_no_change(sysfs: Sysfs) -> None:
    fault(sysfs, FAULT)
    run(sysfs, 'checked', [GPU])
    fault(sysfs, [])
    predicted, _w = run(sysfs, 'cleared', [GPU], check_mode=True, diff=True)
    assert predicted['changed'] is True and predicted['cleared'] == [GPU] and predicted['quarantined'] == {}
    assert predicted['diff']['after'] == '' and predicted['diff']['after_header'].endswith('(absent)')
    assert record(sysfs) is not None
    done, _w = run(sysfs, 'cleared', ['01:00.0'])
    assert done['changed'] is True and done['cleared'] == [GPU]
    assert record(sysfs) is None
    again, _w = run(sysfs, 'cleared', [GPU, '0000:42:00.0'])  # not quarantined, not even on the host: no change
    assert again['changed'] is False and again['cleared'] == []


@pytest.mark.parametrize('state, addresses, needle', [
    ('checked', ['01:00'], "addresses: invalid PCI address '01:00'"),
    ('checked', ['0000:42:00.0'], 'no PCI device 0000:42:00.0 on this host'),
    ('cleared', ['zz:00.0'], "addresses: invalid PCI address 'zz:00.0'"),
    ('cleared', [], 'state=cleared needs addresses'),
    ('gone', [], "state must be checked or cleared, not 'gone'"),
])
def test_bad_input_names_it(tmp_path: Path, state: str, addresses: list, needle: str) -> None:
    sysfs = Sysfs(simkernel.materialize('workstation', str(tmp_path / 'static')))
    with pytest.raises(QuarantineInputError) as info:
        run(sysfs, state, addresses)
    assert needle in str(info.value)


def test_a_corrupt_record_fails_every_reader_naming_it(tmp_path: Path) -> None:
    sysfs = Sysfs(simkernel.materialize('workstation', str(tmp_path / 'static')))
    path = Path(record_path(sysfs))
    path.parent.mkdir(parents=True)
    path.write_text('{"devices": [')
    with pytest.raises(QuarantineError, match=str(path)):
        run(sysfs, 'checked', [])
    with pytest.raises(QuarantineError, match=str(path)):
        gather(sysfs)


def test_no_reset_method_warns_and_does_not_quarantine(tmp_path: Path) -> None:
    sysfs = Sysfs(simkernel.materialize('workstation', str(tmp_path / 'static')))
    os.unlink(sysfs.sys('bus/pci/devices', GPU, 'reset_method'))
    result, warnings = run(sysfs, 'checked', [GPU])
    assert result['changed'] is False and result['devices'][0]['healthy'] is True
    assert len(warnings) == 1 and 'no reset_method attribute' in warnings[0]


def fleet_of(sysfs: Sysfs) -> fleet.FleetPlan:
    facts = gather(sysfs)
    host = fleet.HostInput(name='ws1', facts=facts, libvirt={'available': True, 'domains': []})
    models = fleet.parse_models({'rtx3090': {'vendor_id': '10de', 'device_id': '2204'}}, {'ws1'})
    xml = '<domain type="kvm"><name>vm1</name><memory>1</memory></domain>'
    vms = fleet.parse_vms([{'name': 'vm1', 'gpus': [{'model': 'rtx3090', 'count': 1}], 'domain_xml': xml}], models, {'ws1'})
    return fleet.plan({'ws1': host}, models, vms)


def test_quarantine_is_reported_skipped_by_placement_and_cleared_for_placement_again(sysfs: Sysfs) -> None:
    placed = fleet_of(sysfs)
    assert [(p.vm.name, p.devices) for p in placed.placements] == [('vm1', {'rtx3090': [GPU]})]

    fault(sysfs, FAULT)
    run(sysfs, 'checked', [])
    fault(sysfs, [])
    facts = gather(sysfs)
    by_addr = {g['address']: g for g in facts['gpus']}
    assert by_addr[GPU]['quarantined']['reason'] == 'its config space cannot be read (Input/output error)'
    assert by_addr[IGPU]['quarantined'] is False
    assert by_addr[GPU]['state'] == 'available'  # the state is the kernel's; the quarantine is its own key

    skipped = fleet_of(sysfs)
    assert skipped.placements == [] and [u.vm.name for u in skipped.unplaced] == ['vm1']
    gpu = [g for g in skipped.gpus['ws1'] if g.address == GPU][0]
    assert not gpu.usable and gpu.reason.startswith('quarantined: its config space cannot be read')
    rejection = skipped.unplaced[0].rejections[0]
    assert 'capacity' in rejection.reason and 'quarantined (skipped): %s' % GPU in rejection.reason
    assert 'quarantined (skipped): %s' % GPU in skipped.failure_message()
    assert skipped.host_plan('ws1')['vfio_host_devices'] == []  # not in the host's pool either

    run(sysfs, 'cleared', [GPU])
    again = fleet_of(sysfs)
    assert [(p.vm.name, p.devices) for p in again.placements] == [('vm1', {'rtx3090': [GPU]})]
