"""Partitioned devices on a real kernel (issue 14): SR-IOV virtual functions and mediated devices,
created by gpu_partition, attached by libvirt_hostdev to a domain that starts, on the runtime
phase's intel test host, through ansible-playbook over SSH.

The parts are real but are not GPUs (the test hosts have none that can be split):

* SR-IOV: QEMU's emulated NVMe controller at 03:00.0 of the intel topology
  (roles/testbed/files/launch.py, ``sriov_max_vfs=4``); its VFs are real PCI functions of the
  kernel, each in an IOMMU group of its own. It is selected by its address.
* mdev: the kernel's sample mediated display driver ``mbochs`` (built into the test-host image,
  roles/testbed/files/build_image.sh): parent ``mbochs``, types ``mbochs-small`` / ``-medium`` /
  ``-large`` with 4 / 16 / 64 MB of its 256 MB each. The test loads it, and asks for it at boot
  (modules-load.d) so that mdevctl can start the persisted devices again after the reboot: that
  is the part a vendor's driver package plays on a real GPU host.

This module runs BEFORE test_awx_runner.py, whose real job reboots the host once: VFs and mdevs
are created and persisted, capacity exhaustion and the refusal to remove what a running domain
uses are shown, and a domain holding a VF (on vfio-pci) and an mdev starts (no guest OS, as in
test_drain.py). The domain is stopped again (the job's drain refuses a running domain holding
devices) but stays defined, and the VF goes back to the driver it had. test_partition_after_reboot.py
checks after that reboot that everything came back, then removes it all.

Run by tests/testbed/e2e.sh (runtime phase).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from conftest import REPO
from test_real_kernel import _play, _result  # one play runner for the runtime tests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402

TESTBED_HOSTS = ('intel',)

PF = launch.SRIOV_PF                      # 0000:03:00.0, the emulated NVMe controller
VFS = ['0000:03:00.1', '0000:03:00.2']    # its first two VFs (offset 1, stride 1)
VF = VFS[0]
PARENT = 'mbochs'
TYPE = 'mbochs-medium'                    # 16 MB each
BIG = 'mbochs-large'                      # 64 MB each
DOMAIN = 'fleetgpu-partition'
# the names the fleet gives the mdevs of a VM DOMAIN asking for a profile (fleet_plan: <vm>-<n>): the
# same stable UUIDs, so that playbooks/restore.yml with that request finds them after the reboot
LABELS = ['%s-1' % DOMAIN, '%s-2' % DOMAIN]
# the test's stand-in for a vendor driver package: mbochs loaded at every boot
MODULES_LOAD = '/etc/modules-load.d/fleetgpu-test-mbochs.conf'
MDEVS = [{'type': TYPE, 'name': label} for label in LABELS]

DOMAIN_XML = '''<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
''' % DOMAIN

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='QEMU test hosts need root'),
    pytest.mark.skipif(not (REPO / '.cache' / 'collections').exists() and not os.environ.get('CI'),
                       reason='collection not installed (run scripts/install-collection.sh)'),
]


def stable_uuids() -> List[str]:
    """The UUIDs gpu_partition derives for LABELS (the collection's own function)."""
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._partition import stable_mdev_uuid  # pylint: disable=import-outside-toplevel
    return [stable_mdev_uuid(PARENT, TYPE, label) for label in LABELS]


def sh(host: launch.TestHost, script: str, check: bool = True) -> str:
    """Run a shell script on the host (one argument: quoted for the remote shell)."""
    return host.ssh(["sh -c '%s'" % script.replace("'", "'\\''")], timeout=120, check=check).stdout


def numvfs(host: launch.TestHost) -> int:
    return int(sh(host, 'cat /sys/bus/pci/devices/%s/sriov_numvfs' % PF).strip())


def mdevs_on(host: launch.TestHost) -> List[str]:
    return sorted(sh(host, 'ls /sys/bus/mdev/devices 2>/dev/null || true').split())


def mdevctl_defined(host: launch.TestHost) -> str:
    return sh(host, 'mdevctl list --defined 2>&1 || true')


def driver(host: launch.TestHost, address: str) -> str:
    return sh(host, 'd=/sys/bus/pci/devices/%s/driver; [ -e $d ] && basename $(readlink $d) || echo none' % address).strip()


def domstate(host: launch.TestHost) -> str:
    return sh(host, 'virsh -q -c qemu:///system domstate %s 2>&1 || true' % DOMAIN).strip()


@pytest.fixture(scope='module')
def host(testbed_hosts: Dict[str, launch.TestHost]) -> Iterator[launch.TestHost]:
    """The intel host with mbochs loaded (and asked for at boot); the domain is never left running."""
    testhost = testbed_hosts['intel']
    sh(testhost, 'echo mbochs > %s && modprobe mbochs && test -d /sys/class/mdev_bus/%s' % (MODULES_LOAD, PARENT))
    yield testhost
    sh(testhost, 'virsh -q -c qemu:///system destroy %s' % DOMAIN, check=False)


def state_task(name: str, extra: str = '') -> dict:
    """A task that prints the kernel's view (VF count, VF driver, mdevs, mdevctl definitions) and ``extra``."""
    script = ('echo numvfs $(cat /sys/bus/pci/devices/%s/sriov_numvfs); d=/sys/bus/pci/devices/%s/driver; '
              'echo vfdriver $([ -e $d ] && basename $(readlink $d) || echo none); '
              'echo mdevs $(ls /sys/bus/mdev/devices 2>/dev/null); echo defined $(mdevctl list --defined 2>&1); %s'
              % (PF, VF, extra))
    return {'name': name, 'ansible.builtin.command': {'argv': ['sh', '-c', script]}, 'changed_when': False}


def kernel_view(doc: dict, name: str) -> Dict[str, str]:
    """The lines of a state_task's output: first word -> the rest."""
    out = _result(doc, name)['result']['stdout']
    return {line.split(' ', 1)[0]: (line.split(' ', 1) + [''])[1] for line in out.splitlines() if line.strip()}


def test_vfs_and_mdevs_created_persisted_attached_and_refused_while_in_use(host, tmp_path):
    """One play (each play costs an ansible-playbook start and an SSH connection to a TCG guest)."""
    started = time.monotonic()
    uuids = stable_uuids()
    assert numvfs(host) == 0 and mdevs_on(host) == [], 'the test host is not clean'
    vfs = {'fleetgpu.passthrough.gpu_partition': {'parent': PF, 'sriov_numvfs': len(VFS)}}
    mdevs = {'fleetgpu.passthrough.gpu_partition': {'parent': PARENT, 'mdevs': MDEVS}}
    over_mdevs = [{'type': BIG, 'name': 'fleetgpu-big-%d' % i} for i in range(5)]
    attach = {'fleetgpu.passthrough.libvirt_hostdev': {
        'domain': DOMAIN, 'define_xml': DOMAIN_XML, 'devices': [VF, {'mdev': uuids[0], 'display': False}],
        'start': True}}
    doc = _play(host, tmp_path, [
        # check mode predicts, writes nothing
        dict({'name': 'vfs check'}, **vfs, check_mode=True, diff=True),
        dict({'name': 'mdevs check'}, **mdevs, check_mode=True, diff=True),
        state_task('after check'),
        # for real, then again (no change), then over capacity (refused; an unknown type is refused
        # the same way, tested on the simulated kernel)
        dict({'name': 'vfs'}, **vfs),
        dict({'name': 'mdevs'}, **mdevs),
        dict({'name': 'vfs again'}, **vfs),
        dict({'name': 'mdevs again'}, **mdevs),
        {'name': 'too many vfs', 'fleetgpu.passthrough.gpu_partition': {'parent': PF, 'sriov_numvfs': 5},
         'ignore_errors': True},
        {'name': 'too many mdevs', 'fleetgpu.passthrough.gpu_partition': {'parent': PARENT, 'mdevs': over_mdevs},
         'ignore_errors': True},
        state_task('after create', 'cat /etc/udev/rules.d/70-fleetgpu-passthrough-sriov-%s.rules' % PF),
        # a VF on vfio-pci and an mdev in a domain that starts; removing either is refused meanwhile
        {'name': 'bind', 'fleetgpu.passthrough.vfio_bind': {'devices': [VF]}},
        dict({'name': 'attach'}, **attach),
        {'name': 'attach again', 'fleetgpu.passthrough.libvirt_hostdev': {
            'domain': DOMAIN, 'devices': [VF, 'mdev:%s' % uuids[0]]}},
        {'name': 'remove the mdev in use', 'fleetgpu.passthrough.gpu_partition': {
            'parent': PARENT, 'mdevs': [MDEVS[0]], 'state': 'absent'}, 'ignore_errors': True},
        {'name': 'remove the VFs in use', 'fleetgpu.passthrough.gpu_partition': {'parent': PF, 'sriov_numvfs': 0},
         'ignore_errors': True},
        state_task('while running', 'echo domstate $(virsh -q domstate %s); echo qemu $(ps -eo args | grep -F '
                   '"guest=%s" | grep -v grep)' % (DOMAIN, DOMAIN)),
        # not running when the AWX job drains the host; the definition stays for after the reboot
        {'name': 'stop', 'ansible.builtin.command': {'argv': ['virsh', '-q', 'destroy', DOMAIN]}},
        {'name': 'unbind', 'fleetgpu.passthrough.vfio_bind': {'devices': [VF], 'state': 'absent'}},
    ], 'partition')
    print('partition tasks (s): %s' % ', '.join('%s %.1f' % (t['task'], t['seconds']) for t in doc['tasks']))

    check_vfs, check_mdevs = _result(doc, 'vfs check'), _result(doc, 'mdevs check')
    assert check_vfs['status'] == 'ok' and check_vfs['result']['changed'] is True, check_vfs
    assert [v['address'] for v in check_vfs['result']['vfs']] == VFS, check_vfs
    assert check_mdevs['status'] == 'ok' and check_mdevs['result']['changed'] is True, check_mdevs
    assert [m['uuid'] for m in check_mdevs['result']['mdevs']] == uuids, check_mdevs
    view = kernel_view(doc, 'after check')
    assert view['numvfs'] == '0' and view['mdevs'] == '' and uuids[0] not in view['defined'], view

    done_vfs, done_mdevs = _result(doc, 'vfs'), _result(doc, 'mdevs')
    assert done_vfs['status'] == 'ok' and done_vfs['result']['changed'] is True, done_vfs
    assert done_mdevs['status'] == 'ok' and done_mdevs['result']['changed'] is True, done_mdevs
    assert [(m['uuid'], m['type'], m['state'], m['persistent']) for m in done_mdevs['result']['mdevs']] == [
        (u, TYPE, 'created', True) for u in uuids], done_mdevs
    for name in ('vfs again', 'mdevs again'):
        again = _result(doc, name)
        assert again['status'] == 'ok' and again['result']['changed'] is False, again
    too_many = _result(doc, 'too many vfs')
    assert too_many['status'] == 'ignored' and '4' in too_many['result']['msg'] and PF in too_many['result']['msg'], too_many
    over = _result(doc, 'too many mdevs')
    assert over['status'] == 'ignored' and BIG in over['result']['msg'] and 'available' in over['result']['msg'], over
    # the kernel's view: two VFs, two mdevs (no big one), persisted (udev rule, mdevctl --auto)
    view = kernel_view(doc, 'after create')
    assert view['numvfs'] == str(len(VFS)) and sorted(view['mdevs'].split()) == sorted(uuids), view
    assert all(u in view['defined'] for u in uuids) and 'auto' in view['defined'], view
    assert 'sriov_numvfs' in _result(doc, 'after create')['result']['stdout']
    before_driver = view['vfdriver']

    assert _result(doc, 'bind')['status'] == 'ok', _result(doc, 'bind')
    attached = _result(doc, 'attach')
    assert attached['status'] == 'ok' and attached['result']['power'] == 'started', attached
    assert [(d['address'], d.get('mdev'), d['action']) for d in attached['result']['devices']] == [
        (VF, None, 'added'), (None, uuids[0], 'added')], attached
    again = _result(doc, 'attach again')
    assert again['status'] == 'ok' and again['result']['changed'] is False, again
    view = kernel_view(doc, 'while running')
    assert view['domstate'] == 'running' and view['vfdriver'] == 'vfio-pci', view
    assert '/sys/bus/mdev/devices/%s' % uuids[0] in view['qemu'] and '"host":"%s"' % VF in view['qemu'], view
    for name in ('remove the mdev in use', 'remove the VFs in use'):
        refused = _result(doc, name)
        assert refused['status'] == 'ignored' and DOMAIN in refused['result']['msg'], refused
    assert view['numvfs'] == str(len(VFS)) and sorted(view['mdevs'].split()) == sorted(uuids), 'a refusal changed the host'

    assert _result(doc, 'unbind')['status'] == 'ok', _result(doc, 'unbind')
    assert driver(host, VF) == before_driver
    assert domstate(host) == 'shut off'
    print('partition on the intel host: %.0f s (2 VFs, 2 mdevs, refusals, a domain with a VF and an mdev started)'
          % (time.monotonic() - started))
