"""``mode: partition`` VM requests (issue 17): refused at planning time with the reason, never placed as whole GPUs."""
from __future__ import annotations

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import fleet_plan as fleet
from tests.unit.plugins.module_utils.module_backends.test_fleet_plan import gpu, host, run, vm


def test_partition_on_gpus_without_sriov_or_mdev_is_refused_naming_the_request() -> None:
    hosts = [host('n1', [gpu('13:00.0'), gpu('14:00.0')])]
    p = run(hosts, [vm('whole1'), vm('split1', mode='partition')], strict=False)
    assert [pl.vm.name for pl in p.placements] == ['whole1']      # the whole-GPU request is placed as before
    assert [u.vm.name for u in p.unplaced] == ['split1']
    why = p.unplaced[0].why
    assert 'mode: partition' in why and 'no GPU of model(s) a100 offers SR-IOV' in why
    assert 'not placed as whole GPUs' in why
    message = p.failure_message()
    assert "VM 'split1' asks for 1 x a100 (partitioned)" in message


def test_partition_on_capable_gpus_says_it_is_not_implemented_yet() -> None:
    sriov = gpu('13:00.0')
    sriov['sriov'] = {'totalvfs': 16, 'numvfs': 0, 'is_vf': False, 'physfn': None, 'vfs': []}
    mdev = gpu('14:00.0')
    mdev['mdev_types'] = ['nvidia-222']
    p = run([host('n1', [sriov, mdev, gpu('15:00.0')])], [vm('split1', mode='partition')], strict=False)
    assert p.placements == []
    why = p.unplaced[0].why
    assert 'n1 0000:13:00.0 (SR-IOV)' in why and 'n1 0000:14:00.0 (mdev)' in why
    assert 'partitioned placement is not implemented yet' in why


def test_partition_count_above_the_whole_gpu_count_is_not_a_model_error() -> None:
    # partitions may outnumber whole GPUs: the strict "more than the fleet has" check is for whole GPUs
    p = run([host('n1', [gpu('13:00.0')])], [vm('split1', count=4, mode='partition')], strict=True)
    assert p.errors == [] and [u.vm.name for u in p.unplaced] == ['split1']


@pytest.mark.parametrize('mode', ['slice', True, None])
def test_bad_mode_names_the_request(mode: object) -> None:
    with pytest.raises(fleet.FleetInputError, match=r'fleetgpu_vms\[0\] \(x\)\.mode must be whole .* or partition'):
        fleet.parse_vms([vm('x', mode=mode)], fleet.parse_models({'a100': {'vendor_id': '10de', 'device_id': '20b2'}}))


def test_whole_is_the_default_and_can_be_written() -> None:
    models = fleet.parse_models({'a100': {'vendor_id': '10de', 'device_id': '20b2'}})
    assert [v.mode for v in fleet.parse_vms([vm('a'), vm('b', mode='whole')], models)] == ['whole', 'whole']
