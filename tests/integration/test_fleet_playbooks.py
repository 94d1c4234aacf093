"""Issue 12 through real ansible-playbook: site.yml and facts.yml over several simulated hosts.

Each host is ``connection: local`` with its own simulated kernel tree (tests/sim, the QEMU test
host's ``identical_pair`` shape: boot GPU 00:01.0 and 01:00.0 both 1234:1111, 01:00.1 audio in
01:00.0's group, 02:00.0 1002:5159), its own fake /etc + /boot with faked update-grub /
update-initramfs (as in test_vfio_host_role) and its own private libvirtd. A per-host Python
wrapper puts the host's fake tools on PATH, so one ansible-playbook run converges several
"hosts" that do not see each other's files.  A third host, ``lab1``, has no pool GPU.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from conftest import REPO, playbook_json
from tests.integration import libvirtd as private
from tests.integration.test_vfio_host_role import Host
from tests.sim import simkernel

pytestmark = pytest.mark.skipif(private.available() is not None, reason=str(private.available()))

SITE = REPO / 'playbooks' / 'site.yml'
FACTS = REPO / 'playbooks' / 'facts.yml'
RESTORE = REPO / 'playbooks' / 'restore.yml'
MODELS = {
    'stdvga': {'vendor_id': '1234', 'device_id': '1111'},
    'rv100': {'name': 'RV100 [Radeon 7000 / Radeon VE]'},   # exact PCI name, brackets literal
}


def vm(name: str, model: str = 'stdvga', count: int = 1, **kw: object) -> dict:
    out: dict = {'name': name, 'gpus': [{'model': model, 'count': count}], 'domain_xml': private.domain_xml(name)}
    out.update(kw)
    return out


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.daemons: dict[str, private.PrivateLibvirtd] = {}
        self.hosts: dict[str, Host] = {}
        for name in ('nodeA', 'nodeB'):
            (tmp / name).mkdir()
            self.hosts[name] = Host(tmp / name, 'identical_pair')
            d = private.PrivateLibvirtd()
            d.start()
            self.daemons[name] = d
        self.lab_sysfs = simkernel.materialize('iommu_off', str(tmp / 'lab1'))
        self.report_dir = tmp / 'report'

    def stop(self) -> None:
        for d in self.daemons.values():
            d.cleanup()

    def inventory(self, extra_hosts: dict | None = None, without_binding: tuple = (), **group_vars: object) -> str:
        hosts: dict[str, dict] = dict(extra_hosts or {})
        shadow = self.tmp / 'no-libvirt-binding'
        shadow.mkdir(exist_ok=True)
        (shadow / 'libvirt.py').write_text('raise ImportError("simulated: libvirt-python is not installed")\n')
        for name, host in self.hosts.items():
            wrapper = host.tmp / 'python'
            env = host.env()
            # a host in without_binding has a Python without the libvirt binding
            wrapper.write_text('#!/bin/sh\nexport PATH=%s FLEETGPU_TEST_LOG=%s FLEETGPU_TEST_ROOT=%s%s\nexec %s "$@"\n'
                               % (env['PATH'], env['FLEETGPU_TEST_LOG'], env['FLEETGPU_TEST_ROOT'],
                                  ' PYTHONPATH=%s' % shadow if name in without_binding else '', sys.executable))
            wrapper.chmod(0o755)
            hosts[name] = {'ansible_connection': 'local', 'ansible_python_interpreter': str(wrapper),
                           'fleetgpu_sysfs_root': host.sysfs, 'vfio_host_root': str(host.root),
                           'vfio_host_runtime_bind': False, 'vfio_host_initramfs': 'initramfs-tools',
                           'libvirt_gpu_uri': self.daemons[name].uri}
        hosts['lab1'] = {'ansible_connection': 'local', 'fleetgpu_sysfs_root': self.lab_sysfs,
                         'libvirt_gpu_uri': 'qemu:///system?socket=%s/none.sock' % self.tmp}
        data = {'fleetgpu_report_dir': str(self.report_dir), 'fleetgpu_models': MODELS}
        data.update(group_vars)
        path = self.tmp / 'inventory.json'
        path.write_text(json.dumps({'gpu_hosts': {'hosts': hosts, 'vars': data}}))
        return str(path)

    def hostdevs(self, host: str) -> dict[str, list[str]]:
        conn = self.daemons[host].connect()
        try:
            out = {}
            for dom in conn.listAllDomains():
                root = ElementTree.fromstring(dom.XMLDesc(0))
                out[dom.name()] = sorted('%s:%s:%s.%s' % tuple(int(a.get(k), 16) for k in ('domain', 'bus', 'slot', 'function'))
                                         for a in root.findall('devices/hostdev/source/address'))
            return out
        finally:
            conn.close()

    def state(self) -> dict:
        return {'files': {h: host.snapshot() for h, host in self.hosts.items()},
                'domains': {h: self.hostdevs(h) for h in self.hosts}}


@pytest.fixture(scope='module')
def fleet(tmp_path_factory: pytest.TempPathFactory):
    f = Fleet(tmp_path_factory.mktemp('fleet'))
    yield f
    f.stop()


@pytest.fixture()
def clean(fleet: Fleet):
    """Every test starts from hosts without domains."""
    for d in fleet.daemons.values():
        conn = d.connect()
        try:
            for dom in conn.listAllDomains():
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        finally:
            conn.close()
    return fleet


def run(run_playbook, fleet: Fleet, playbook: Path, vms: list, args: tuple = (), extra_hosts: dict | None = None,
        without_binding: tuple = (), **group_vars: object):
    proc = run_playbook(playbook, inventory=fleet.inventory(extra_hosts, without_binding, fleetgpu_vms=vms, **group_vars),
                        args=args)
    return proc, playbook_json(proc)


def tasks(doc: dict, prefix: str) -> list[dict]:
    return [t for t in doc['tasks'] if t['task'].startswith(prefix)]


def changed(doc: dict) -> int:
    return sum(s['changed'] for s in doc['stats'].values())


def plan_task(doc: dict) -> dict:
    return tasks(doc, 'Validate the GPU models')[0]


def test_site_places_defines_converges_and_is_stable(run_playbook, clean: Fleet) -> None:
    fleet = clean
    vms = [vm('vm1'), vm('vm2')]
    # check mode: the plan and the predicted changes, nothing written anywhere
    before = fleet.state()
    proc, doc = run(run_playbook, fleet, SITE, vms, ('--check',))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert fleet.state() == before
    assert not fleet.report_dir.exists()

    proc, doc = run(run_playbook, fleet, SITE, vms)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    placement = plan_task(doc)['result']['placement']
    # spread: one VM per host, never the boot GPU 00:01.0 (same vendor:device as 01:00.0)
    assert placement == [{'vm': 'vm1', 'host': 'nodeA', 'model': 'stdvga', 'devices': ['0000:01:00.0']},
                         {'vm': 'vm2', 'host': 'nodeB', 'model': 'stdvga', 'devices': ['0000:01:00.0']}]
    assert doc['custom']['_run']['fleetgpu_placement'] == placement   # the set_stats artifact
    # defined from domain_xml on the chosen host only, GPU + its audio companion attached
    assert fleet.hostdevs('nodeA') == {'vm1': ['0:1:0.0', '0:1:0.1']}
    assert fleet.hostdevs('nodeB') == {'vm2': ['0:1:0.0', '0:1:0.1']}
    # the host's vfio-pci configuration came from the plan: the pool GPUs (placed + free), not the boot GPU
    # (1234:1111 is bound per address because the boot GPU shares its ids; 1002:5159 by id)
    for host in fleet.hosts.values():
        addrs = (host.root / 'etc/fleetgpu-passthrough/vfio-pci-addresses').read_text().split()
        assert '0000:01:00.0' in addrs and '0000:00:01.0' not in addrs
        assert 'options vfio-pci ids=1002:5159' in (host.root / 'etc/modprobe.d/fleetgpu-passthrough.conf').read_text()
    # lab1 has no pool GPU and no VM: left alone, not failed
    alone = [t for t in tasks(doc, 'Say why nothing is done here') if t['host'] == 'lab1']
    assert alone and 'left alone' in alone[0]['result']['msg']
    assert doc['stats']['lab1']['failures'] == 0 and doc['stats']['lab1']['changed'] == 0
    # the reboot summary is printed at the end without extra settings
    summary = tasks(doc, 'Print which hosts still need a reboot')[0]['result']['msg']
    assert summary['fleetgpu_reboot_required'] == {'nodeA': True, 'nodeB': True, 'lab1': False}
    # no host rebooted here (simulated roots): no VM was stopped or started again
    assert summary['fleetgpu_vms_stopped'] == {} and summary['fleetgpu_vms_restarted'] == {}
    # the report is on the controller, rewritten after the converge with the end state: the VMs
    # defined in this run hold their GPUs (play 1's report, written before, had no VM on them)
    report = json.loads((fleet.report_dir / 'fleet-report.json').read_text())
    assert report['placement'] == placement
    assert 'fleet-report.html' in tasks(doc, 'Show where the fleet report is')[0]['result']['msg']
    assert 'after the converge' in tasks(doc, 'Show where the fleet report with the end state is')[0]['result']['msg']
    held = {h['name']: {g['address']: g['vm'] for g in h['gpus']} for h in report['hosts']}
    assert held['nodeA']['0000:01:00.0'] == 'vm1' and held['nodeB']['0000:01:00.0'] == 'vm2', held
    assert [d['name'] for h in report['hosts'] if h['name'] == 'nodeA' for d in h['domains']] == ['vm1']
    # only the hosts this run changed were read again (lab1 was left alone)
    reread = {t['host'] for t in tasks(doc, 'Read the GPUs again') if t['status'] != 'skipped'}
    assert reread == {'nodeA', 'nodeB'}, reread
    assert report['mode'] == 'report'

    # second run: nothing changes, same plan (existing assignments read back from libvirt)
    after = fleet.state()
    proc, doc = run(run_playbook, fleet, SITE, vms)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert changed(doc) == 0, [(t['host'], t['task']) for t in doc['tasks'] if t['result'].get('changed')]
    assert plan_task(doc)['result']['placement'] == placement
    assert fleet.state() == after
    # a run that changed nothing reads nothing again: play 1's report is the end state
    assert [t['status'] for t in tasks(doc, 'Read the GPUs again')] == ['skipped'] * 3, tasks(doc, 'Read the GPUs again')
    # and reads each host once: play 1's libvirt_gpu_info shows every VM with its GPUs, so
    # libvirt_hostdev runs for no domain, and a run that changed nothing verifies nothing again
    for host in ('nodeA', 'nodeB'):
        ran = [t for t in doc['tasks'] if t['host'] == host and t['status'] != 'skipped']
        assert not [t for t in ran if t['action'].endswith('libvirt_hostdev')], [t['task'] for t in ran]
        assert not [t for t in ran if t['action'].endswith('libvirt_gpu_info')
                    and not t['task'].startswith('Read the libvirt domains')], [t['task'] for t in ran]
        verify = [t['task'] for t in ran if t['task'].startswith('Verify the host')
                  or t['task'].endswith(('Check the IOMMU and the groups of the selected devices',
                                         'Compare the running command line with the configured one'))]
        assert verify == [], verify
    assert json.loads((fleet.report_dir / 'fleet-report.json').read_text())['placement'] == placement

    # a third request that cannot fit fails before any change, with the per-host table
    proc, doc = run(run_playbook, fleet, SITE, vms + [vm('vm3', count=2)])
    assert proc.returncode != 0
    msg = plan_task(doc)['result']['msg']
    assert "VM 'vm3' asks for 2 x stdvga" in msg and 'no host was changed' in msg
    assert 'nodeA' in msg and 'nodeB' in msg and 'capacity: needs 2 x stdvga, 0 free' in msg
    assert 'lab1' in msg and 'no libvirt' in msg
    assert not tasks(doc, 'Make the choice of GPUs permanent') and not tasks(doc, 'Attach the GPUs')
    assert fleet.state() == after

    # a fourth request that fits moves nobody
    proc, doc = run(run_playbook, fleet, SITE, vms + [vm('vm4', model='rv100')])
    assert proc.returncode == 0, proc.stdout[-4000:]
    placed = plan_task(doc)['result']['placement']
    assert placed[:2] == placement
    assert placed[2] == {'vm': 'vm4', 'host': 'nodeA', 'model': 'rv100', 'devices': ['0000:02:00.0']}
    assert fleet.hostdevs('nodeA') == {'vm1': ['0:1:0.0', '0:1:0.1'], 'vm4': ['0:2:0.0']}
    assert fleet.hostdevs('nodeB') == {'vm2': ['0:1:0.0', '0:1:0.1']}

    # restore.yml with the same requests undoes by the fleet model: every placed VM gives its GPUs
    # back and each host's pool leaves vfio-pci (the host files are checked by test_vfio_host_role)
    proc, doc = run(run_playbook, fleet, RESTORE, vms + [vm('vm4', model='rv100')])
    assert proc.returncode == 0, [(t['task'], t['result'].get('msg')) for t in doc['tasks'] if t['status'] == 'failed']
    assert fleet.hostdevs('nodeA') == {'vm1': [], 'vm4': []}
    assert fleet.hostdevs('nodeB') == {'vm2': []}
    give_back = "Give back the kernel arguments the role changed (the host's own ones stay)"
    undo = [t['host'] for t in doc['tasks'] if t['task'].endswith(give_back) and t['status'] != 'skipped']
    assert sorted(undo) == ['nodeA', 'nodeB'], [t['task'] for t in doc['tasks']]
    alone = [t['result'].get('msg', '') for t in doc['tasks'] if t['task'] == 'Say why nothing is undone here'
             and t['status'] != 'skipped' and t['result'].get('msg')]
    assert len(alone) == 1 and alone[0].startswith('lab1: no pool GPU and no placed VM here'), alone


def _inject_facts_only(doc: dict) -> None:
    assert not tasks(doc, 'Make the choice of GPUs permanent') and not tasks(doc, 'Attach the GPUs')
    assert not tasks(doc, 'Gather the host facts the roles need')


@pytest.mark.parametrize('vms,models,needle', [
    ([vm('x', model='h100')], None, "fleetgpu_vms[0] (x).gpus[0]: unknown model 'h100'"),
    ([vm('x', count=0)], None, 'fleetgpu_vms[0] (x).gpus[0].count must be 1 or more, got 0'),
    ([vm('x', count=-1)], None, 'fleetgpu_vms[0] (x).gpus[0].count must be 1 or more, got -1'),
    ([vm('x', count=5)], None, "VM 'x' asks for 5 x stdvga but the fleet has only 4 GPU(s) of that model"),
    ([vm('x'), vm('x')], None, "fleetgpu_vms: VM name 'x' is used twice"),
    ([vm('x', host='nodeZ')], None, "fleetgpu_vms[0] (x).host: 'nodeZ' is not a host in the inventory"),
    ([], dict(MODELS, a100={'vendor_id': '10de', 'device_id': '20b2'}), 'model a100 (10de:20b2) matches no GPU on any host'),
    ([], dict(MODELS, any={'name_regex': 'radeon'}), 'matches more than one model: any, rv100'),
    ([vm('x', numa='one')], None, "fleetgpu_vms[0] (x).numa must be one of required, preferred, any, got 'one'"),
    ([vm('x', domain_xml='<domain><name>x</name>')], None, 'fleetgpu_vms[0] (x).domain_xml is not well-formed XML'),
])
def test_site_bad_input_fails_before_any_change(run_playbook, clean: Fleet, vms, models, needle: str) -> None:
    fleet = clean
    before = fleet.state()
    extra = {'fleetgpu_models': models} if models else {}
    proc, doc = run(run_playbook, fleet, SITE, vms, **extra)
    assert proc.returncode != 0
    failed = plan_task(doc)
    assert failed['status'] == 'failed' and needle in failed['result']['msg'], failed['result'].get('msg')
    assert 'Traceback' not in json.dumps(failed['result'])
    _inject_facts_only(doc)
    assert fleet.state() == before


@pytest.mark.parametrize('playbook', [SITE, FACTS, RESTORE], ids=['site', 'facts', 'restore'])
def test_a_pattern_that_matches_no_host_says_so(run_playbook, clean: Fleet, playbook: Path) -> None:
    """A typo in fleetgpu_hosts would otherwise skip every play and end "ok" having done nothing."""
    fleet = clean
    before = fleet.state()
    report = fleet.report_dir / 'fleet-report.json'
    report_before = report.read_bytes() if report.exists() else None
    proc = run_playbook(playbook, inventory=fleet.inventory(fleetgpu_vms=[vm('vm1')]),
                        args=('-e', 'fleetgpu_hosts=gpu_hots'))
    doc = playbook_json(proc)
    assert proc.returncode != 0, proc.stdout[-3000:]
    (check,) = tasks(doc, 'Fail when no inventory host matches the host pattern')
    assert check['status'] == 'failed'
    msg = check['result']['msg']
    assert "No host of the inventory matches 'gpu_hots'" in msg and '-e fleetgpu_hosts=PATTERN' in msg, msg
    assert [t['task'] for t in doc['tasks']] == [check['task']]
    assert fleet.state() == before
    assert (report.read_bytes() if report.exists() else None) == report_before
    # the same inventory with the right pattern: the check passes and says how many hosts match
    proc = run_playbook(FACTS, inventory=fleet.inventory(), args=('-e', 'fleetgpu_hosts=nodeA:nodeB'))
    assert proc.returncode == 0, proc.stdout[-3000:]
    (check,) = tasks(playbook_json(proc), 'Fail when no inventory host matches the host pattern')
    assert check['result']['msg'] == "2 host(s) match 'nodeA:nodeB'"


def test_site_domain_xml_libvirt_rejects_fails_before_any_host_change(run_playbook, clean: Fleet) -> None:
    fleet = clean
    before = fleet.state()
    bad = private.domain_xml('vmbad').replace('type="qemu"', 'type="nonsense"')
    proc, doc = run(run_playbook, fleet, SITE, [vm('vm1'), vm('vmbad', domain_xml=bad)])
    assert proc.returncode != 0
    failed = [t for t in tasks(doc, 'Define the placed VMs') if t['status'] == 'failed']
    assert failed, proc.stdout[-3000:]
    msg = json.dumps(failed[0]['result'])
    assert "rejected the domain_xml of 'vmbad'" in msg and 'Traceback' not in msg
    _inject_facts_only(doc)
    assert fleet.state()['files'] == before['files']
    assert 'vmbad' not in fleet.hostdevs('nodeB')


def test_site_drift_is_refused(run_playbook, clean: Fleet) -> None:
    fleet = clean
    models = {'stdvga': {'vendor_id': '1234', 'device_id': '1111',
                         'hosts': {'nodeA': ['0000:01:00.0'], 'nodeB': ['0000:03:00.0']}}}
    before = fleet.state()
    proc, doc = run(run_playbook, fleet, SITE, [vm('vm1', host='nodeB')], fleetgpu_models=models)
    assert proc.returncode != 0
    msg = plan_task(doc)['result']['msg']
    assert 'drift: model stdvga: 0000:03:00.0 is mapped on nodeB but the host has no GPU there' in msg
    assert plan_task(doc)['result']['drift'] == {'nodeB': [
        'model stdvga: 0000:03:00.0 is mapped on nodeB but the host has no GPU there '
        '(GPUs: 0000:00:01.0, 0000:01:00.0, 0000:02:00.0)']}
    assert fleet.state() == before
    # unpinned, the same request goes to the host whose mapping holds
    proc, doc = run(run_playbook, fleet, SITE, [vm('vm1')], ('--check',), fleetgpu_models=models)
    assert proc.returncode == 0, proc.stdout[-3000:]
    expected = [{'vm': 'vm1', 'host': 'nodeA', 'model': 'stdvga', 'devices': ['0000:01:00.0']}]
    assert plan_task(doc)['result']['placement'] == expected


def test_facts_report_renders_in_chromium(run_playbook, clean: Fleet, tmp_path: Path) -> None:
    fleet = clean
    broken = {'broken1': {'ansible_connection': 'local', 'fleetgpu_sysfs_root': str(tmp_path / 'no-such-sysfs')},
              # nothing listens on port 1 of the loopback: the host is unreachable at once
              'gone1': {'ansible_connection': 'ssh', 'ansible_host': '127.0.0.1', 'ansible_port': 1,
                        'ansible_ssh_common_args': '-o ConnectTimeout=5 -o StrictHostKeyChecking=no'}}
    proc, doc = run(run_playbook, fleet, FACTS, [vm('vm1'), vm('big', count=3)], extra_hosts=broken)
    assert proc.returncode in (2, 4), proc.stdout[-4000:]   # a failed and an unreachable host
    printed = tasks(doc, 'Print the fleet report')[0]['result']['msg']
    assert printed['unplaced'] == ['big'] and 'fleet-report.html' in printed['report']
    assert printed['failed_or_unreachable'] == ['broken1', 'gone1']
    html = fleet.report_dir / 'fleet-report.html'
    chromium = shutil.which('chromium')
    if chromium is None:
        pytest.fail('chromium is not installed (scripts/bootstrap.sh installs it)')
    flags = [chromium, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync',
             '--user-data-dir=%s' % (tmp_path / 'profile')]
    shot = tmp_path / 'report.png'
    subprocess.run(flags + ['--window-size=1280,2400', '--screenshot=%s' % shot, html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and shot.stat().st_size > 20000
    dom = subprocess.run(flags + ['--dump-dom', html.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    # the browser built the page: every host section and every GPU row of every host is in its DOM
    report = json.loads((fleet.report_dir / 'fleet-report.json').read_text())
    assert {h['name']: h['status'] for h in report['hosts']} == {
        'nodeA': 'ok', 'nodeB': 'ok', 'lab1': 'ok', 'broken1': 'failed', 'gone1': 'unreachable'}
    assert 'no-such-sysfs' in [h for h in report['hosts'] if h['name'] == 'broken1'][0]['message']
    for h in report['hosts']:
        assert 'id="host-%s" data-host="%s" data-status="%s"' % (h['name'], h['name'], h['status']) in dom
        for g in h['gpus']:
            assert 'data-host="%s" data-address="%s"' % (h['name'], g['address']) in dom
    assert sum(len(h['gpus']) for h in report['hosts']) == 7
    assert dom.count('<tr class="gpu') == 7
    assert 'Requests that cannot be placed' in dom and '<script' not in dom


def test_site_places_on_a_host_without_the_binding_and_refuses_it_before_any_change(run_playbook, clean: Fleet) -> None:
    """nodeB's Python lacks the libvirt binding: the fleet reads nodeB with virsh and places vm2 there.

    The binding is needed from the definition of vm2 on: role vfio_host installs it on a running
    host (the QEMU test hosts show that); a simulated host is a prefix root, where the role installs
    nothing, so the run stops there - on every host, before any change - and says what to install.
    """
    fleet = clean
    before = fleet.state()
    said = []
    for args in (('--check',), ()):   # check mode says what the real run does
        proc, doc = run(run_playbook, fleet, SITE, [vm('vm1'), vm('vm2')], args, without_binding=('nodeB',))
        assert proc.returncode != 0
        said.append([(t['host'], t['result']['msg']) for t in doc['tasks'] if t['status'] == 'failed'])
    assert said[0] == said[1], said
    placement = plan_task(doc)['result']['placement']
    assert [(p['vm'], p['host']) for p in placement] == [('vm1', 'nodeA'), ('vm2', 'nodeB')]
    failed = [t for t in doc['tasks'] if t['status'] == 'failed']
    assert [t['host'] for t in failed] == ['nodeB'], [(t['host'], t['task']) for t in failed]
    msg = failed[0]['result']['msg']
    assert 'vfio_host refuses to configure nodeB; nothing was written' in msg, msg
    assert 'cannot import libvirt: role libvirt_gpu needs them. Install python3-libvirt python3-lxml' in msg, msg
    assert 'the role installs packages only on the running host, vfio_host_root /' in msg, msg
    assert fleet.state() == before   # no VM defined on nodeA either, no file written
    assert 'Traceback' not in proc.stdout + proc.stderr


def test_libvirt_gpu_info_reads_every_domain_and_survives_no_libvirt(run_playbook, clean: Fleet, tmp_path: Path) -> None:
    fleet = clean
    daemon = fleet.daemons['nodeA']
    xml = private.domain_xml('info1').replace(
        '<devices>', '<numatune><memory mode="strict" nodeset="1"/></numatune><devices>').replace(
        '</devices>', '<hostdev mode="subsystem" type="pci" managed="no"><source>'
                      '<address domain="0x0000" bus="0x41" slot="0x00" function="0x0"/></source></hostdev>'
                      # a mediated device (defined only: libvirt looks for it when the domain starts)
                      '<hostdev mode="subsystem" type="mdev" model="vfio-pci"><source>'
                      '<address uuid="4B20D080-1B54-4048-85B3-A6A62D165C01"/></source></hostdev></devices>')
    daemon.define('info1', xml)
    daemon.define('info2')
    play = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: info
      fleetgpu.passthrough.libvirt_gpu_info:
        uri: "{{ uri }}"
      check_mode: true
    - name: none
      fleetgpu.passthrough.libvirt_gpu_info:
        uri: "qemu:///system?socket={{ nowhere }}"
'''
    proc = run_playbook(play, extra_vars={'uri': daemon.uri, 'nowhere': str(tmp_path / 'no.sock')})
    assert proc.returncode == 0, proc.stdout[-3000:]
    doc = playbook_json(proc)
    info = tasks(doc, 'info')[0]['result']
    assert info['available'] is True and info['changed'] is False
    assert info['domains'] == [
        {'name': 'info1', 'state': 'shut off', 'active': False, 'persistent': True, 'hostdevs': ['0000:41:00.0'],
         'mdevs': ['4b20d080-1b54-4048-85b3-a6a62d165c01'],
         'config_hostdevs': [{'address': '0000:41:00.0', 'guest_address': '0000:02:00.0', 'managed': False,
                              'multifunction': False, 'rom': None}],
         'numa_nodes': [1]},
        {'name': 'info2', 'state': 'shut off', 'active': False, 'persistent': True, 'hostdevs': [], 'mdevs': [],
         'config_hostdevs': [],
         'numa_nodes': []}]
    assert info['via'] == 'python' and info['python_modules_missing'] == []
    assert info['mdev_assignments'] == {'4b20d080-1b54-4048-85b3-a6a62d165c01': ['info1']}
    none = tasks(doc, 'none')[0]
    assert none['status'] == 'ok' and none['result']['available'] is False and none['result']['domains'] == []
    assert 'no libvirt at qemu:///system?socket=' in none['result']['error']

    # A host whose Python has neither the binding nor lxml: the same inventory, read with virsh
    # (a running domain too), so the fleet can still place VMs there.
    conn = daemon.connect()
    try:
        conn.lookupByName('info2').create()
    finally:
        conn.close()
    shadow = tmp_path / 'shadow'
    (shadow / 'lxml').mkdir(parents=True)
    (shadow / 'libvirt.py').write_text('raise ImportError("simulated: libvirt-python is not installed")\n')
    (shadow / 'lxml' / '__init__.py').write_text('raise ImportError("simulated: lxml is not installed")\n')
    both = []
    for env in ({}, {'PYTHONPATH': str(shadow)}):
        proc = run_playbook(play, extra_vars={'uri': daemon.uri, 'nowhere': str(tmp_path / 'no.sock')}, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:]
        both.append(tasks(playbook_json(proc), 'info')[0]['result'])
    binding, virsh = both
    assert virsh['via'] == 'virsh' and virsh['python_modules_missing'] == ['libvirt', 'lxml'], virsh
    assert virsh['available'] is True and virsh['error'] is None
    assert virsh['domains'] == binding['domains'], (virsh['domains'], binding['domains'])
    assert virsh['mdev_assignments'] == binding['mdev_assignments'] == {'4b20d080-1b54-4048-85b3-a6a62d165c01': ['info1']}
    assert [(d['name'], d['state'], d['active']) for d in virsh['domains']] == [
        ('info1', 'shut off', False), ('info2', 'running', True)]
