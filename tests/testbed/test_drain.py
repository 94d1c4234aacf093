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


def test_a_running_domain_holding_the_gpu_is_refused_or_powered_off_then_started_again(host, tmp_path):
    started = time.monotonic()
    _virsh(host, 'destroy', DOMAIN, check=False)
    _virsh(host, 'undefine', DOMAIN, check=False)
    drain = {'fleetgpu.passthrough.libvirt_domain_drain': {'timeout': WAIT}}
    with_args = lambda **kw: {'fleetgpu.passthrough.libvirt_domain_drain': dict(drain['fleetgpu.passthrough.libvirt_domain_drain'], **kw)}  # noqa: E731
    doc = _play(host, tmp_path, [
        {'name': 'bind', 'fleetgpu.passthrough.vfio_bind': {'devices': [GPU], 'include_group': True}},
        {'name': 'start', 'fleetgpu.passthrough.libvirt_hostdev': {
            'domain': DOMAIN, 'devices': [GPU], 'define_xml': DOMAIN_XML, 'allow_shared': True, 'start': True}},
        dict({'name': 'predict'}, **drain, check_mode=True),
        dict({'name': 'refuse'}, **with_args(policy='refuse'), ignore_errors=True),
        {'name': 'role refuses', 'ansible.builtin.include_role': {
            'name': 'fleetgpu.passthrough.vfio_host', 'tasks_from': 'drain.yml', 'apply': {'ignore_errors': True}},
         'vars': {'vfio_host_running_vms': 'refuse'}},
        dict({'name': 'timeout'}, **drain, ignore_errors=True),
        dict({'name': 'force'}, **with_args(force=True)),
        dict({'name': 'again'}, **with_args(force=True)),
    ], 'drain')
    for name in ('bind', 'start', 'predict', 'force', 'again'):
        assert _result(doc, name)['status'] == 'ok', _result(doc, name)
    assert _result(doc, 'start')['result']['power'] == 'started'
    predict = _result(doc, 'predict')['result']
    assert predict['changed'] is True and predict['stopped'] == [DOMAIN], predict
    assert sorted(predict['hostdevs'][DOMAIN]) == [GPU, AUDIO], predict
    refuse = _result(doc, 'refuse')
    assert refuse['status'] == 'ignored', refuse
    assert refuse['result']['msg'].startswith('policy=refuse: domain %s runs at qemu:///system' % DOMAIN), refuse
    assert refuse['result']['running'] == [DOMAIN] and refuse['result']['stopped'] == []
    role = _result(doc, 'Say why the host is not rebooted')
    assert role['status'] == 'ignored', role
    assert 'vfio_host did not reboot' in role['result']['msg'] and DOMAIN in role['result']['msg'], role
    assert 'vfio_host_running_vms: shutdown' in role['result']['msg'], role
    timeout = _result(doc, 'timeout')
    assert timeout['status'] == 'ignored', timeout
    assert ('domain %s still running at qemu:///system %d s after the shutdown request' % (DOMAIN, WAIT)
            in timeout['result']['msg']), timeout
    assert timeout['result']['running'] == [DOMAIN] and timeout['result']['stopped'] == [], timeout
    force = _result(doc, 'force')['result']
    assert force['changed'] is True and force['stopped'] == force['forced'] == [DOMAIN], force
    assert any(DOMAIN in w and 'did not shut down within %d s' % WAIT in w for w in force.get('warnings', [])), force
    again = _result(doc, 'again')['result']
    assert again['changed'] is False and again['stopped'] == [], again
    assert _virsh(host, 'domstate', DOMAIN).strip() == 'shut off'

    start = {'fleetgpu.passthrough.libvirt_domain_drain': {'state': 'started', 'domains': [DOMAIN]}}
    doc = _play(host, tmp_path, [
        dict({'name': 'predict'}, **start, check_mode=True),
        dict({'name': 'start'}, **start),
        dict({'name': 'again'}, **start),
    ], 'undrain')
    predict, done, again = (_result(doc, n)['result'] for n in ('predict', 'start', 'again'))
    assert predict['changed'] is True and predict['started'] == [DOMAIN], predict
    assert done['changed'] is True and done['started'] == [DOMAIN] and done['running'] == [DOMAIN], done
    assert again['changed'] is False and again['started'] == [] and again['running'] == [DOMAIN], again
    assert _virsh(host, 'domstate', DOMAIN).strip() == 'running'
    print('drain on the intel host: %.0f s (two plays: refuse, timeout, force; start again)' % (time.monotonic() - started))
