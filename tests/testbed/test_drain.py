"""Drain before reboot on a real kernel: a running domain that holds the vfio-bound GPU of the intel
test host is stopped by libvirt_domain_drain through ansible-playbook, then started again.

The domain has no guest OS (SeaBIOS finds nothing to boot and waits), so it never answers the
ACPI shutdown request: a graceful stop cannot happen here. What runs for real is therefore the
path of a guest that ignores the request: policy=refuse fails naming it and stops nothing, the
role's drain (vfio_host_running_vms: refuse) refuses the host naming it, the timeout without
force fails naming it (still running), and force powers it off with a warning. The graceful stop
itself is covered by the unit tests (tests/unit/plugins/module_utils/module_backends/
test_libvirt_domain_drain.py). state=started then runs it again, and a second start changes
nothing. The time of the whole test is printed.

Run by tests/testbed/e2e.sh (runtime phase) after test_guest_boot.py on the same host; the domain
is taken away again afterwards, and the GPU stays on the driver it had (vfio-pci in the session).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

from conftest import REPO
from test_real_kernel import _play, _result  # one play runner for the runtime tests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402

TESTBED_HOSTS = ('intel',)

GPU, AUDIO = '0000:01:00.0', '0000:01:00.1'
DOMAIN = 'fleetgpu-drain'
# seconds the domain is given to shut down; it has no OS, so it never does
WAIT = 5

DOMAIN_XML = '''<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
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


def _virsh(host: launch.TestHost, *args: str, check: bool = True) -> str:
    return host.ssh(['virsh', '-q', '-c', 'qemu:///system'] + list(args), timeout=120, check=check).stdout


def _driver(host: launch.TestHost, address: str) -> str:
    out = host.ssh(['d=/sys/bus/pci/devices/%s/driver; [ -e $d ] && basename $(readlink $d) || echo none' % address])
    return out.stdout.strip()


@pytest.fixture(scope='module')
def host(testbed_hosts: Dict[str, launch.TestHost], tmp_path_factory: pytest.TempPathFactory) -> Iterator[launch.TestHost]:
    """The intel host; the domain goes again afterwards, and the GPU goes back to the driver it had."""
    testhost = testbed_hosts['intel']
    before = _driver(testhost, GPU)
    yield testhost
    _virsh(testhost, 'destroy', DOMAIN, check=False)
    _virsh(testhost, 'undefine', DOMAIN, check=False)
    if before != 'vfio-pci':
        _play(testhost, tmp_path_factory.mktemp('drain-restore'), [
            {'name': 'restore', 'fleetgpu.passthrough.vfio_bind': {'devices': [GPU], 'include_group': True,
                                                                   'state': 'absent'}}], 'drain-restore')


def _role_task(doc: dict, name: str) -> dict:
    """The result of a role's task (named ``<role> : <name>`` in the play's output)."""
    found = [t for t in doc['tasks'] if t['task'].endswith(' : ' + name)]
    assert found, 'task %r did not run: %s' % (name, [t['task'] for t in doc['tasks']])
    return found[-1]


def test_a_running_domain_holding_the_gpu_is_refused_or_powered_off_then_started_again(host, tmp_path):
    started = time.monotonic()
    _virsh(host, 'destroy', DOMAIN, check=False)
    _virsh(host, 'undefine', DOMAIN, check=False)
    module = 'fleetgpu.passthrough.libvirt_domain_drain'
    # in the runtime session the GPU is on vfio-pci already (test_real_kernel.py, test_guest_boot.py)
    bind = [] if _driver(host, GPU) == 'vfio-pci' else [
        {'name': 'bind', 'fleetgpu.passthrough.vfio_bind': {'devices': [GPU], 'include_group': True}}]
    doc = _play(host, tmp_path, bind + [
        {'name': 'start', 'fleetgpu.passthrough.libvirt_hostdev': {
            'domain': DOMAIN, 'devices': [GPU], 'define_xml': DOMAIN_XML, 'allow_shared': True, 'start': True}},
        # the role's drain before its reboot, with its default vfio_host_running_vms: refuse
        {'name': 'role', 'block': [{'name': 'role refuses', 'ansible.builtin.include_role': {
            'name': 'fleetgpu.passthrough.vfio_host', 'tasks_from': 'drain.yml'}}],
         'rescue': [{'name': 'refused', 'ansible.builtin.debug': {'msg': '{{ ansible_failed_result.msg }}'}}]},
        {'name': 'timeout', module: {'timeout': WAIT}, 'ignore_errors': True},
        {'name': 'force', module: {'timeout': WAIT, 'force': True}},
    ], 'drain')
    for name in [t['name'] for t in bind] + ['start', 'force']:
        assert _result(doc, name)['status'] == 'ok', _result(doc, name)
    assert _result(doc, 'start')['result']['power'] == 'started'
    refused = _role_task(doc, 'Shut down the running domains that hold PCI host devices (vfio_host_running_vms), or refuse')
    assert refused['status'] == 'failed', refused
    assert refused['result']['msg'].startswith('policy=refuse: domain %s runs at qemu:///system' % DOMAIN), refused
    assert refused['result']['running'] == [DOMAIN] and refused['result']['stopped'] == [], refused
    assert sorted(refused['result']['hostdevs'][DOMAIN]) == [GPU, AUDIO], refused
    role = _role_task(doc, 'Say why the host is not rebooted')
    assert role['status'] == 'failed', role
    assert role['result']['msg'].startswith('vfio_host did not reboot rt-intel: policy=refuse: domain %s' % DOMAIN), role
    assert 'Set vfio_host_running_vms: shutdown' in role['result']['msg'], role
    assert _result(doc, 'refused')['result']['msg'] == role['result']['msg']
    timeout = _result(doc, 'timeout')
    assert timeout['status'] == 'ignored', timeout
    assert ('domain %s still running at qemu:///system %d s after the shutdown request' % (DOMAIN, WAIT)
            in timeout['result']['msg']), timeout
    assert timeout['result']['running'] == [DOMAIN] and timeout['result']['stopped'] == [], timeout
    force = _result(doc, 'force')['result']
    assert force['changed'] is True and force['stopped'] == force['forced'] == [DOMAIN], force
    assert any(DOMAIN in w and 'did not shut down within %d s' % WAIT in w for w in force.get('warnings', [])), force
    assert _virsh(host, 'domstate', DOMAIN).strip() == 'shut off'

    doc = _play(host, tmp_path, [{'name': 'start again', module: {'state': 'started', 'domains': [DOMAIN]}}], 'undrain')
    done = _result(doc, 'start again')['result']
    assert done['changed'] is True and done['started'] == [DOMAIN] and done['running'] == [DOMAIN], done
    assert _virsh(host, 'domstate', DOMAIN).strip() == 'running'
    print('drain on the intel host: %.0f s (the role refuses, the time-out fails, force powers off; started again)'
          % (time.monotonic() - started))
