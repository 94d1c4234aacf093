"""Role vfio_host with vfio_host_dynamic_devices against a directory root and a simulated kernel
(identical_pair: the boot GPU 00:01.0 and the GPU 01:00.0 share vendor:device 1234:1111; 01:00.0
has its audio function 01:00.1): a GPU of a domain with binding dynamic stays on its host driver."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import playbook_json
from tests.integration.test_vfio_host_role import Host, _changed, _facts, _run

GPU = '0000:01:00.0'


@pytest.fixture()
def host(tmp_path: Path) -> Host:
    return Host(tmp_path, 'identical_pair')


def test_only_dynamic_gpus_give_the_iommu_arguments_and_no_early_binding(run_playbook, host: Host) -> None:
    before = host.snapshot()
    extra = {'vfio_host_devices': [], 'vfio_host_dynamic_devices': [GPU]}
    doc = _run(run_playbook, host, ('--check',), **extra)
    assert _changed(doc) > 0 and host.snapshot() == before
    doc = _run(run_playbook, host, (), **extra)
    assert _facts(doc)['selected'] == []
    config = [t for t in doc['tasks'] if t['action'] == 'fleetgpu.passthrough.vfio_host_config'][-1]['result']
    assert config['ids'] == [] and config['addresses'] == [], config
    dropin = (host.root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg').read_text()
    assert 'intel_iommu=on iommu=pt' in dropin
    # nothing of the GPU is bound early: no vfio-pci ids, no address list
    modprobe = host.root / 'etc/modprobe.d/fleetgpu-passthrough.conf'
    assert not modprobe.exists() or 'ids=' not in modprobe.read_text()
    addresses = host.root / 'etc/fleetgpu-passthrough/vfio-pci-addresses'
    assert not addresses.exists() or GPU not in addresses.read_text()
    doc = _run(run_playbook, host, (), **extra)
    assert _changed(doc) == 0
    doc = _run(run_playbook, host, ('--check',), **extra)
    assert _changed(doc) == 0


def test_a_dynamic_gpu_is_never_selected_and_an_address_naming_it_is_refused(run_playbook, host: Host) -> None:
    # a vendor:device match that would take the GPU skips it (and the boot GPU): nothing is left to select
    proc = run_playbook(_play(), extra_vars=host.vars(vfio_host_devices=[{'vendor_id': '1234', 'device_id': '1111'}],
                                                      vfio_host_dynamic_devices=['01:00.0']), env=host.env())
    assert proc.returncode != 0 and 'matches only the boot GPU' in proc.stdout, proc.stdout[-2000:]
    before = host.snapshot()
    proc = run_playbook(_play(), extra_vars=host.vars(vfio_host_dynamic_devices=[GPU]), env=host.env())
    failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
    assert proc.returncode != 0 and failed
    assert ('vfio_host_devices[0] names 0000:01:00.0, which vfio_host_dynamic_devices keeps on its host driver'
            in failed[0]['result']['msg']), failed
    assert host.snapshot() == before


def _play() -> str:
    from tests.integration.test_vfio_host_role import PLAY
    return PLAY
