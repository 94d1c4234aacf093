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
from test_real_kernel import AUDIO, BOOT_GPU, GPU, _play  # one play runner for the runtime tests

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


VIRSH = 'virsh -q -c qemu:///system'
# Each SSH round trip costs seconds under TCG: the steps on the host are batched into one shell
# script per phase. drv PHASE prints "PHASE address driver" for the three functions watched.
DRV = ('drv() { for a in %s; do d=/sys/bus/pci/devices/$a; if [ -e $d/driver ]; then '
       'echo "$1 $a $(basename $(readlink $d/driver))"; else echo "$1 $a none"; fi; done; }; '
       % ' '.join((BOOT_GPU, GPU, AUDIO)))
CLEAN = '%s destroy %s >/dev/null 2>&1; %s undefine %s >/dev/null 2>&1; ' % (VIRSH, DOMAIN, VIRSH, DOMAIN)


def _phases(host: launch.TestHost, script: str) -> Dict[str, Dict[str, str]]:
    """Run one script on the host; its drv lines as phase -> {address: driver}."""
    proc = host.ssh([DRV + script], timeout=300, check=False)
    out: Dict[str, Dict[str, str]] = {}
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3:
            out.setdefault(fields[0], {})[fields[1]] = fields[2]
    assert out, (proc.stdout, proc.stderr)
    out['stderr'] = {'text': proc.stderr[-2000:]}  # shown by a failed assertion (virsh's reason)
    return out


@pytest.fixture(scope='module')
def host(testbed_hosts: Dict[str, launch.TestHost]) -> Iterator[launch.TestHost]:
    """The intel host; the domain is taken away again afterwards, whatever happened."""
    testhost = testbed_hosts['intel']
    yield testhost
    testhost.ssh([CLEAN + 'true'], check=False)


def _role() -> dict:
    return {'name': 'libvirt_gpu', 'ansible.builtin.import_role': {'name': 'fleetgpu.passthrough.libvirt_gpu'},
            'vars': {'libvirt_gpu_domains': [
                {'name': DOMAIN, 'domain_xml': DOMAIN_XML, 'gpus': {'addresses': [GPU]}, 'binding': 'dynamic'}]}}


def test_dynamic_binding_moves_the_group_at_domain_start_and_gives_it_back_at_stop(host, tmp_path):
    started = time.monotonic()
    before = _phases(host, CLEAN + 'drv before')['before']
    assert before == HOST_DRIVERS, 'the test needs the group on its host drivers first: %s' % before
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
    play_seconds = time.monotonic() - started

    seen = _phases(host, 'drv attached; %s start %s >/dev/null && drv running && %s destroy %s >/dev/null && drv stopped; '
                   '%s undefine %s >/dev/null' % (VIRSH, DOMAIN, VIRSH, DOMAIN, VIRSH, DOMAIN))
    # nothing moved at attach time: the GPU stays on its host driver until the domain starts
    assert seen.get('attached') == HOST_DRIVERS, seen
    assert seen.get('running') == {BOOT_GPU: 'bochs-drm', GPU: 'vfio-pci', AUDIO: 'vfio-pci'}, seen
    assert seen.get('stopped') == HOST_DRIVERS, seen
    print('binding dynamic on the intel host: %.0f s (role libvirt_gpu: %.0f s; start, stop, undefine: %.0f s)'
          % (time.monotonic() - started, play_seconds, time.monotonic() - started - play_seconds))
