"""libvirt_hostdev through ansible-playbook against a real libvirtd (qemu driver).

The daemon is private to the test session (tests/integration/libvirtd.py): its
own configuration, state and socket, so the machine's libvirt is untouched.
Domains are small TCG definitions without disks.  libvirt does not check at
definition time that a hostdev's source exists, so the GPU + audio cases use
addresses of a simulated kernel tree (sysfs_root) and the plain cases use a
device of this machine's own /sys.
"""
from __future__ import annotations

import itertools
import json
import os

import pytest

from conftest import playbook_json
from tests.integration import libvirtd as private
from tests.sim import simkernel

pytestmark = pytest.mark.skipif(private.available() is not None, reason=str(private.available()))

_names = itertools.count()


@pytest.fixture(scope='module')
def daemon():
    d = private.PrivateLibvirtd()
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(scope='module')
def workstation(tmp_path_factory: pytest.TempPathFactory) -> str:
    return simkernel.materialize('workstation', str(tmp_path_factory.mktemp('workstation')))


@pytest.fixture()
def domain(daemon):
    name = 'hostdev-it-%d' % next(_names)
    daemon.define(name)
    yield name
    conn = daemon.connect()
    try:
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    except Exception:  # noqa: BLE001 - best-effort cleanup of a test domain
        pass
    finally:
        conn.close()


def task_yaml(name: str, args: dict, check: bool = False, register: str | None = None, ignore: bool = False) -> str:
    lines = ['    - name: %s' % name, '      fleetgpu.passthrough.libvirt_hostdev:']
    for key, value in args.items():
        lines.append('        %s: %s' % (key, _yaml(value)))
    if check:
        lines.append('      check_mode: true')
    if ignore:
        lines.append('      ignore_errors: true')
    return '\n'.join(lines)


def _yaml(value: object) -> str:
    return json.dumps(value)  # JSON is YAML


def play(*tasks: str) -> str:
    return '- hosts: all\n  gather_facts: false\n  tasks:\n' + '\n'.join(tasks) + '\n'


def results(proc) -> list[dict]:
    doc = playbook_json(proc)
    return list(doc['tasks'])


def hostdevs(daemon, name: str) -> list[tuple[str, str | None, bool]]:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import DomainDefinition
    return [(h.to_dict()['address'], h.to_dict()['guest_address'], h.multifunction)
            for h in DomainDefinition(daemon.domain_xml(name)).hostdevs()]


def test_gpu_and_audio_on_one_guest_slot_check_real_repeat(run_playbook, daemon, domain, workstation) -> None:
    args = {'domain': domain, 'uri': daemon.uri, 'devices': ['0000:01:00.0'], 'sysfs_root': workstation}
    proc = run_playbook(play(
        task_yaml('plan', args, check=True),
        task_yaml('attach', args),
        task_yaml('repeat', args),
        task_yaml('repeat in check mode', args, check=True),
    ), args=('--diff',))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan, attach, repeat, repeat_check = [t['result'] for t in results(proc)]
    assert [plan['changed'], attach['changed'], repeat['changed'], repeat_check['changed']] == [True, True, False, False]
    assert [(d['address'], d['action']) for d in plan['devices']] == [('0000:01:00.0', 'added'), ('0000:01:00.1', 'added')]
    # The real daemon accepted the multifunction layout and kept it.
    got = hostdevs(daemon, domain)
    assert [a for a, _g, _m in got] == ['0000:01:00.0', '0000:01:00.1']
    (g0, g1) = (got[0][1], got[1][1])
    assert g0[:-1] == g1[:-1] and g0.endswith('.0') and g1.endswith('.1')
    assert got[0][2] is True and got[1][2] is False
    # Diff: before without hostdevs, after with both, on the libvirt-assigned slot.
    assert '<hostdev' not in attach['diff']['before']
    assert attach['diff']['after'].count('<hostdev') == 2
    assert "multifunction=\"on\"" in attach['diff']['after']
    assert repeat['diff']['before'] == repeat['diff']['after']
    # libvirt turns that definition into the QEMU command line seen to work on a real IOMMU
    # (tests/testbed): both functions on one PCIe root port, function 0 multifunction.
    # (The vfio driver is named because this machine cannot tell libvirt it supports VFIO.)
    conn = daemon.connect()
    try:
        xml = conn.lookupByName(domain).XMLDesc(0).replace('<source>', "<driver name='vfio'/><source>")
        argv = conn.domainXMLToNative('qemu-argv', xml, 0)
    finally:
        conn.close()
    vfio = [json.loads(arg.split(' ', 1)[1].strip().strip("'")) for arg in argv.split(' -')
            if arg.startswith('device ') and 'vfio-pci' in arg]
    assert [(v['host'], v['addr'], v.get('multifunction')) for v in vfio] == [
        ('0000:01:00.0', '0x0', True), ('0000:01:00.1', '0x0.0x1', None)]
    assert vfio[0]['bus'] == vfio[1]['bus']
    # The unmanaged default warns that the GPU is not on vfio-pci in that tree.
    assert any('0000:01:00.0 is bound to nvidia, not vfio-pci' in w for w in attach.get('warnings', []))


def test_detach_in_config_and_absent_of_absent(run_playbook, daemon, domain, workstation) -> None:
    base = {'domain': domain, 'uri': daemon.uri, 'devices': ['0000:01:00.0'], 'sysfs_root': workstation}
    absent = dict(base, state='absent')
    proc = run_playbook(play(
        task_yaml('attach', base),
        task_yaml('plan removal', absent, check=True),
        task_yaml('remove', absent),
        task_yaml('remove again', absent),
    ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    attach, plan, remove, again = [t['result'] for t in results(proc)]
    assert attach['changed'] and plan['changed'] and remove['changed'] and not again['changed']
    assert [(d['address'], d['action']) for d in remove['devices']] == [('0000:01:00.0', 'removed'), ('0000:01:00.1', 'removed')]
    assert hostdevs(daemon, domain) == []


def test_device_of_this_machine_already_in_domain_is_no_change(run_playbook, daemon, domain) -> None:
    addr = sorted(a for a in os.listdir('/sys/bus/pci/devices'))[-1]
    # Put it there with libvirt itself first: the module must see it, not duplicate it.
    conn = daemon.connect()
    try:
        import libvirt
        from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import hostdev_xml
        from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress
        conn.lookupByName(domain).attachDeviceFlags(hostdev_xml(PciAddress.parse(addr), False),
                                                    libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    finally:
        conn.close()
    args = {'domain': domain, 'uri': daemon.uri, 'devices': [addr], 'companions': False}
    proc = run_playbook(play(task_yaml('attach what is there', args)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = results(proc)[0]['result']
    assert res['changed'] is False
    assert [a for a, _g, _m in hostdevs(daemon, domain)] == [addr]


MDEV = '9d5b7c2e-58a1-4f0e-9c1d-2b1f6f0e7a31'


def test_mdev_check_real_repeat_absent_through_the_qemu_driver(run_playbook, daemon, domain, tmp_path) -> None:
    """A mediated device (vGPU) into the definition and out again; the qemu driver keeps the entry
    as written (model vfio-pci, display off) and turns it into QEMU's vfio-pci sysfsdev."""
    args = {'domain': domain, 'uri': daemon.uri, 'devices': [{'mdev': MDEV.upper(), 'display': False}],
            'sysfs_root': str(tmp_path / 'sys')}
    absent = dict(args, devices=['mdev:%s' % MDEV], state='absent')
    proc = run_playbook(play(
        task_yaml('plan', args, check=True),
        task_yaml('attach', args),
        task_yaml('repeat', args),
        task_yaml('repeat in check mode', args, check=True),
        task_yaml('bad entry', dict(args, devices=[{'mdev': 'xyz'}]), ignore=True),
    ), args=('--diff',))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan, attach, repeat, repeat_check, bad = [t['result'] for t in results(proc)]
    assert [plan['changed'], attach['changed'], repeat['changed'], repeat_check['changed']] == [True, True, False, False]
    assert [(d['mdev'], d['action'], d['display']) for d in plan['devices']] == [(MDEV, 'added', False)]
    assert "type=\"mdev\"" in attach['diff']['after'] and "type=\"mdev\"" not in attach['diff']['before']
    # this machine has no such mdev: the definition takes it, with a warning naming it
    assert any('mdev %s does not exist on this host now' % MDEV in w for w in attach.get('warnings', []))
    assert "devices[0] mdev 'xyz' is not a UUID" in bad['msg']
    xml = daemon.domain_xml(domain)
    assert "type='mdev'" in xml and "model='vfio-pci'" in xml and "display='off'" in xml and MDEV in xml
    conn = daemon.connect()
    try:
        argv = conn.domainXMLToNative('qemu-argv', conn.lookupByName(domain).XMLDesc(0), 0)
    finally:
        conn.close()
    assert '"sysfsdev":"/sys/bus/mdev/devices/%s"' % MDEV in argv, argv

    proc = run_playbook(play(task_yaml('remove', absent), task_yaml('remove again', absent)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    remove, again = [t['result'] for t in results(proc)]
    assert remove['changed'] is True and again['changed'] is False
    assert "type='mdev'" not in daemon.domain_xml(domain)


def test_refusals_and_errors_name_the_input(run_playbook, daemon, domain, workstation) -> None:
    other = domain + '-other'
    daemon.define(other)
    try:
        base = {'uri': daemon.uri, 'devices': ['0000:01:00.0'], 'sysfs_root': workstation}
        proc = run_playbook(play(
            task_yaml('first domain takes it', dict(base, domain=other)),
            task_yaml('second domain wants it', dict(base, domain=domain), ignore=True),
            task_yaml('allowed for domains that never run together', dict(base, domain=domain, allow_shared=True)),
            task_yaml('missing domain', dict(base, domain='no-such-vm'), ignore=True),
            task_yaml('malformed address', dict(base, domain=domain, devices=['0000:01:00.9']), ignore=True),
            task_yaml('device not on this host', dict(base, domain=domain, devices=['0000:77:00.0']), ignore=True),
        ))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        tasks = results(proc)
        shared, allowed, missing, malformed, absent_dev = (t['result'] for t in tasks[1:])
        assert tasks[1]['status'] == 'ignored'
        assert "0000:01:00.0 is already assigned to domain '%s'" % other in shared['msg']
        assert 'allow_shared=true' in shared['msg']
        assert allowed['changed'] is True
        assert "domain 'no-such-vm' is not defined at %s" % daemon.uri in missing['msg']
        assert domain in missing['msg']  # lists what is there
        assert "invalid PCI address '0000:01:00.9'" in malformed['msg']
        assert 'PCI device 0000:77:00.0 does not exist under %s' % workstation in absent_dev['msg']
        assert all('Traceback' not in t['result'].get('module_stderr', '') for t in tasks)
    finally:
        conn = daemon.connect()
        try:
            conn.lookupByName(other).undefine()
        finally:
            conn.close()


def test_live_attach_to_running_domain_reports_libvirt_refusal(run_playbook, daemon, domain) -> None:
    """This machine has no IOMMU: QEMU cannot take a host device, and the module must say so
    clearly. A real hot-plug and unplug into a running guest: tests/testbed/test_guest_boot.py
    (intel test host, end-to-end phase)."""
    conn = daemon.connect()
    try:
        conn.lookupByName(domain).create()
    finally:
        conn.close()
    addr = sorted(os.listdir('/sys/bus/pci/devices'))[-1]
    args = {'domain': domain, 'uri': daemon.uri, 'devices': [addr], 'companions': False, 'where': 'live'}
    proc = run_playbook(play(
        task_yaml('plan hot-plug', args, check=True),
        task_yaml('hot-plug', args, ignore=True),
    ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tasks = results(proc)
    plan, live = [t['result'] for t in tasks]
    assert plan['changed'] is True and plan['live'] == [{'address': addr, 'action': 'added'}]
    assert tasks[1]['status'] == 'ignored'
    assert "live attach of %s failed (domain '%s' at %s)" % (addr, domain, daemon.uri) in live['msg']
    # The persistent definition was not touched by a live-only change.
    assert hostdevs(daemon, domain) == []


def test_libvirtd_stopped(run_playbook, tmp_path) -> None:
    stopped = private.PrivateLibvirtd(str(tmp_path / 'stopped'))
    stopped.start()
    stopped.define('vm-of-a-stopped-daemon')
    stopped.stop()
    assert not stopped.running
    args = {'domain': 'vm-of-a-stopped-daemon', 'uri': stopped.uri, 'devices': ['0000:01:00.0'], 'companions': False}
    proc = run_playbook(play(task_yaml('daemon is down', args, ignore=True)))
    task = results(proc)[0]
    res = task['result']
    assert task['status'] == 'ignored'
    assert 'cannot connect to libvirt at %s' % stopped.uri in res['msg']
    stopped.cleanup()


@pytest.mark.skipif(not os.path.exists('/usr/bin/python3'), reason='no system python')
def test_missing_python_libraries_are_named(run_playbook) -> None:
    """A managed host whose Python lacks libvirt-python gets Ansible's standard message."""
    import subprocess
    probe = subprocess.run(['/usr/bin/python3', '-c', 'import libvirt'], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip('the system python has libvirt-python')
    args = {'domain': 'any', 'devices': ['0000:01:00.0']}
    proc = run_playbook(play(task_yaml('no libvirt-python here', args, ignore=True)),
                        env={'ANSIBLE_PYTHON_INTERPRETER': '/usr/bin/python3'})
    task = results(proc)[0]
    assert task['status'] == 'ignored'
    assert 'Failed to import the required Python library (libvirt-python)' in task['result']['msg']


@pytest.mark.parametrize('machine,guest_address,expected', [
    # A chosen guest slot on a bus that does not exist yet: libvirt adds the controllers.
    ('q35', '0000:09:00.0', ['0000:09:00.0', '0000:09:00.1']),
    # i440fx: the lowest free slot of bus 0 (1-3 hold the ISA bridge, the video card, ...).
    ('pc', None, None),
])
def test_placement_is_accepted_by_libvirt(daemon, workstation, machine: str, guest_address: str | None,
                                          expected: list[str] | None) -> None:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_hostdev import HostdevBackend, Request
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
    name = 'placement-%s' % machine
    xml = private.domain_xml(name)
    if machine == 'pc':
        xml = xml.replace('machine="q35"', 'machine="pc"').replace('<controller type="pci" model="pcie-root"/>', '')
    daemon.define(name, xml)
    try:
        request = Request(domain=name, uri=daemon.uri, devices=[PciAddress.parse('01:00.0')],
                          guest_address=PciAddress.parse(guest_address) if guest_address else None)
        first = HostdevBackend(request, Sysfs(workstation)).run(False)
        again = HostdevBackend(request, Sysfs(workstation)).run(False)
        assert first['changed'] is True and again['changed'] is False
        got = [(h['guest_address'], h['multifunction']) for h in again['hostdevs']]
        if expected:
            assert [g for g, _m in got] == expected
        else:
            assert got[0][0].startswith('0000:00:') and got[0][0].endswith('.0')
            assert got[1][0] == got[0][0][:-1] + '1'
        assert [m for _g, m in got] == [True, False]
    finally:
        conn = daemon.connect()
        try:
            conn.lookupByName(name).undefine()
        finally:
            conn.close()
