"""Check mode that tells the truth (issue 11): site.yml --check --diff says what the real run will say.

Before, the check run warned "bound to bochs-drm, not vfio-pci: ... the domain cannot start" for the GPU,
because the runtime bind before libvirt_gpu only predicted the move; the real run moved it and did not
warn. An operator approving a change from a check run must see exactly what the real run will say.

A behaving simulated kernel (FUSE) with the IOMMU on and the arguments live, so vfio_host binds at
runtime, and a private libvirtd with the domain the inventory names.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import playbook_json
from tests.integration import libvirtd as private
from tests.integration.test_vfio_host_role import KERNEL, Host
from tests.sim import simkernel

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(private.available() is not None, reason=str(private.available())),
    pytest.mark.skipif(not os.path.exists('/dev/fuse'), reason='needs /dev/fuse for the behaving simulated kernel'),
]


def _messages(doc: dict) -> tuple[list[str], list[str]]:
    """(warnings, debug messages) of a run, in order, each as text."""
    warnings: list[str] = []
    said: list[str] = []
    for task in doc['tasks']:
        result = task['result']
        for res in [result] + list(result.get('results') or []):
            for warning in res.get('warnings') or []:
                text = warning if isinstance(warning, str) else json.dumps(warning.get('event', warning).get('msg', warning))
                warnings.append(text)
            if task['action'] in ('ansible.builtin.debug', 'debug') and 'msg' in res and task['status'] == 'ok':
                said.append(json.dumps(res['msg'], sort_keys=True))
    return warnings, said


def test_site_check_run_warns_exactly_as_the_real_run(run_playbook, tmp_path: Path) -> None:
    from tests.sim import fusekernel

    topo = simkernel.load_topology('identical_pair')
    topo['kernel']['cmdline'] = 'BOOT_IMAGE=/boot/vmlinuz-%s root=/dev/vda1 ro quiet intel_iommu=on iommu=pt' % KERNEL
    topo['kernel']['loaded'] = ['vfio', 'vfio_iommu_type1', 'vfio_pci', 'bochs', 'snd_hda_intel', 'ahci',
                                'virtio_pci', 'lpc_ich', 'i801_smbus']
    host = Host(tmp_path / 'h', 'identical_pair')
    (host.bin / 'modprobe').write_text('#!/bin/sh\necho "modprobe $*" >> "$FLEETGPU_TEST_LOG"\nexit 0\n')
    (host.bin / 'modprobe').chmod(0o755)
    inventory = tmp_path / 'inventory.ini'
    inventory.write_text('[gpu_hosts]\nlocalhost ansible_connection=local\n')
    daemon = private.PrivateLibvirtd()
    daemon.start()
    try:
        daemon.define('gpu-vm')
        with fusekernel.simulated(topo, tmp_path / 'k') as sysfs_root:
            host.sysfs = sysfs_root
            ev = host.vars(fleetgpu_serial=1, fleetgpu_max_fail_percentage=0, fleetgpu_sysfs_root=sysfs_root,
                           vfio_host_runtime_bind=True, libvirt_gpu_uri=daemon.uri,
                           libvirt_gpu_domains=[{'name': 'gpu-vm', 'gpus': {'addresses': ['0000:01:00.0']}}])
            site = REPO / 'playbooks' / 'site.yml'
            check = run_playbook(site, extra_vars=ev, inventory=str(inventory), env=host.env(), args=('--check', '--diff'))
            check_doc = playbook_json(check)
            assert check.returncode == 0, [t['result'].get('msg') for t in check_doc['tasks'] if t['status'] == 'failed']
            devices = Path(sysfs_root) / 'bus/pci/devices'
            assert os.path.basename(os.readlink(devices / '0000:01:00.0' / 'driver')) == 'bochs-drm'

            real = run_playbook(site, extra_vars=ev, inventory=str(inventory), env=host.env())
            real_doc = playbook_json(real)
            assert real.returncode == 0, [t['result'].get('msg') for t in real_doc['tasks'] if t['status'] == 'failed']
            assert os.path.basename(os.readlink(devices / '0000:01:00.0' / 'driver')) == 'vfio-pci'

            check_warnings, check_said = _messages(check_doc)
            real_warnings, real_said = _messages(real_doc)
            assert not [w for w in check_warnings if 'not vfio-pci' in w], check_warnings
            assert check_warnings == real_warnings
            # the debug messages too, but the preflight report of the real run sees vfio-pci not loaded yet
            # exactly as the check run did (both run before any change). The one message that differs
            # on purpose is where the fleet report is: a check run writes no file, not even on the
            # controller, and says so.

            def hosts_said(said: list[str]) -> list[str]:
                return [m for m in said if 'fleet report' not in m]
            assert any('check mode: the fleet report was not written' in m for m in check_said), check_said
            assert any('fleet report: ' in m for m in real_said), real_said
            assert hosts_said(check_said) == hosts_said(real_said)
            changed_check = [t['task'] for t in check_doc['tasks'] if t['result'].get('changed')]
            changed_real = [t['task'] for t in real_doc['tasks'] if t['result'].get('changed')]
            assert changed_check == changed_real
    finally:
        daemon.cleanup()


def test_check_mode_still_warns_when_nothing_will_bind(run_playbook, tmp_path: Path) -> None:
    """With the runtime bind off, the real run leaves the GPU on its driver: the check run must keep the
    warning (the prediction is taken only from a bind that would run)."""
    from tests.sim import fusekernel

    topo = simkernel.load_topology('identical_pair')
    topo['kernel']['cmdline'] = 'BOOT_IMAGE=/boot/vmlinuz-%s root=/dev/vda1 ro quiet intel_iommu=on iommu=pt' % KERNEL
    host = Host(tmp_path / 'h', 'identical_pair')
    inventory = tmp_path / 'inventory.ini'
    inventory.write_text('[gpu_hosts]\nlocalhost ansible_connection=local\n')
    daemon = private.PrivateLibvirtd()
    daemon.start()
    try:
        daemon.define('gpu-vm')
        with fusekernel.simulated(topo, tmp_path / 'k') as sysfs_root:
            host.sysfs = sysfs_root
            ev = host.vars(fleetgpu_serial=1, fleetgpu_max_fail_percentage=0, fleetgpu_sysfs_root=sysfs_root,
                           vfio_host_runtime_bind=False, libvirt_gpu_uri=daemon.uri,
                           libvirt_gpu_domains=[{'name': 'gpu-vm', 'gpus': {'addresses': ['0000:01:00.0']}}])
            check = run_playbook(REPO / 'playbooks' / 'site.yml', extra_vars=ev, inventory=str(inventory),
                                 env=host.env(), args=('--check',))
            doc = playbook_json(check)
            assert check.returncode == 0, [t['result'].get('msg') for t in doc['tasks'] if t['status'] == 'failed']
            warnings, _said = _messages(doc)
            assert [w for w in warnings if '0000:01:00.0 is bound to bochs-drm, not vfio-pci' in w], warnings
    finally:
        daemon.cleanup()
