"""binding: dynamic on a real kernel: libvirt moves the GPU's whole IOMMU group to vfio-pci when
its domain starts and gives every function back to its own driver when the domain stops.

On the intel host, right after test_real_kernel.py gave the group back (01:00.0 on bochs-drm,
01:00.1 on snd_hda_intel), role libvirt_gpu runs as users run it, with one domain asking for
01:00.0 with ``binding: dynamic`` (its check mode and repeat are asserted on the simulated kernel,
tests/integration/test_libvirt_gpu_dynamic.py: each run of the role costs about 30 s here). The
domain has no guest OS (SeaBIOS finds nothing to boot and waits): it only needs to start. Then
``virsh start`` puts both functions on vfio-pci, ``virsh destroy`` puts each back on its own
driver, and the boot GPU 00:01.0 (the same vendor:device 1234:1111) stays on bochs-drm
throughout. The domain is undefined again, so the host is left as found for
test_awx_runner.py and test_guest_boot.py.

Run by tests/testbed/e2e.sh (runtime phase), after test_real_kernel.py on the same host.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from conftest import REPO
from test_real_kernel import AUDIO, BOOT_GPU, GPU, _drivers, _play  # one play runner for the runtime tests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402

TESTBED_HOSTS = ('intel',)

DOMAIN = 'fleetgpu-dynamic'
# No kernel, no disk: SeaBIOS finds nothing to boot and waits. Small and without emulated extras.
DOMAIN_XML = '''<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
''' % DOMAIN
HOST_DRIVERS = {BOOT_GPU: 'bochs-drm', GPU: 'bochs-drm', AUDIO: 'snd_hda_intel'}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='QEMU test hosts need root'),
    pytest.mark.skipif(not (REPO / '.cache' / 'collections').exists() and not os.environ.get('CI'),
                       reason='collection not installed (run scripts/install-collection.sh)'),
]


def _virsh(host: launch.TestHost, *args: str, check: bool = True) -> str:
    return host.ssh(['virsh', '-q', '-c', 'qemu:///system'] + list(args), timeout=120, check=check).stdout


@pytest.fixture(scope='module')
def host(testbed_hosts: Dict[str, launch.TestHost]) -> Iterator[launch.TestHost]:
    """The intel host; the domain is taken away again afterwards, whatever happened."""
    testhost = testbed_hosts['intel']
    yield testhost
    _virsh(testhost, 'destroy', DOMAIN, check=False)
    _virsh(testhost, 'undefine', DOMAIN, check=False)


def _role() -> dict:
    return {'name': 'libvirt_gpu', 'ansible.builtin.import_role': {'name': 'fleetgpu.passthrough.libvirt_gpu'},
            'vars': {'libvirt_gpu_domains': [
                {'name': DOMAIN, 'domain_xml': DOMAIN_XML, 'gpus': {'addresses': [GPU]}, 'binding': 'dynamic'}]}}


def test_dynamic_binding_moves_the_group_at_domain_start_and_gives_it_back_at_stop(host, tmp_path):
    started = time.monotonic()
    assert _drivers(host) == HOST_DRIVERS, 'the test needs the group on its host drivers first'
    _virsh(host, 'destroy', DOMAIN, check=False)
    _virsh(host, 'undefine', DOMAIN, check=False)
    # One run of the role (check mode and the repeat are asserted on the simulated kernel with a real
    # libvirtd: tests/integration/test_libvirt_gpu_dynamic.py); each run costs about 30 s here.
    doc = _play(host, tmp_path, [_role()], 'dynamic')
    failed = [t for t in doc['tasks'] if t['status'] == 'failed']
    assert not failed, failed
    attach: List[dict] = [t for t in doc['tasks'] if t['action'] == 'fleetgpu.passthrough.libvirt_hostdev']
    assert len(attach) == 1, [(t['task'], t['status']) for t in attach]
    results = attach[0]['result']['results']
    assert len(results) == 1 and results[0]['changed'] and results[0]['defined'], attach
    # every function of the group, managed: libvirt detaches and re-attaches them itself
    assert {h['address']: h['managed'] for h in results[0]['hostdevs']} == {GPU: True, AUDIO: True}, results[0]
    # nothing moved yet: the GPU stays on its host driver until the domain starts
    assert _drivers(host) == HOST_DRIVERS
    play_seconds = time.monotonic() - started

    _virsh(host, 'start', DOMAIN)
    on_vm = _drivers(host)
    _virsh(host, 'destroy', DOMAIN)
    after = _drivers(host)
    _virsh(host, 'undefine', DOMAIN)
    assert on_vm == {BOOT_GPU: 'bochs-drm', GPU: 'vfio-pci', AUDIO: 'vfio-pci'}, on_vm
    assert after == HOST_DRIVERS, after
    print('binding dynamic on the intel host: %.0f s (role libvirt_gpu: %.0f s; start, stop, undefine: %.0f s)'
          % (time.monotonic() - started, play_seconds, time.monotonic() - started - play_seconds))
