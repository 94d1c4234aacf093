"""Issue 16 through real ansible-playbook: playbooks/verify_guests.yml.

The KVM hosts (``nodeA``, ``nodeB``) are ``connection: local`` hosts, each with a simulated kernel
tree (tests/sim) and its own private libvirtd holding domains whose ``<hostdev>`` entries name
the host's GPUs. The guests are ``connection: local`` inventory hosts too, each with
``fleetgpu_sysfs_root`` pointing at a simulated guest tree: the GPU the VM was given, at a guest
address that is not the host's, with or without its audio function, with or without a driver,
next to QEMU's emulated display adapter.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO, playbook_json
from tests.integration import libvirtd as private
from tests.sim import simkernel

pytestmark = pytest.mark.skipif(private.available() is not None, reason=str(private.available()))

VERIFY = REPO / 'playbooks' / 'verify_guests.yml'
CHECK_TASK = 'Compare with what the VM was given on its KVM host (fails a guest that lacks something)'
SAY_TASK = 'Say what the guest sees'
SUMMARY_TASK = 'Print the summary over every guest'

# nodeA (topology workstation): 01:00.0 10de:2204 (subsystem 1458:403b) + 01:00.1 audio 10de:1aef.
# nodeB (topology amd_host): its GPUs at 41:00.0 / 41:00.1 and c1:00.0.
HOSTDEVS_A = ['0000:01:00.0', '0000:01:00.1']


def hostdev_xml(name: str, addresses: list[str]) -> str:
    devs = ''
    for text in addresses:
        dom, bus, rest = text.split(':')
        slot, fn = rest.split('.')
        devs += ('<hostdev mode="subsystem" type="pci" managed="no"><source><address domain="0x%s" bus="0x%s" '
                 'slot="0x%s" function="0x%s"/></source></hostdev>' % (dom, bus, slot, fn))
    return private.domain_xml(name).replace('</devices>', devs + '</devices>')


def guest_topology(gpu: bool = True, audio: bool = True, driver: str | None = 'nvidia',
                   subsystem: str = '403b') -> dict:
    """A q35 guest: QEMU's std VGA at 00:01.0, and the passed-through GPU behind a root port at 06:00.0."""
    children = []
    if gpu:
        children.append({'address': '06:00.0', 'vendor': '10de', 'device': '2204', 'subsystem_vendor': '1458',
                         'subsystem_device': subsystem, 'class': 0x030000, 'driver': driver,
                         'multifunction': audio})
        if audio:
            children.append({'address': '06:00.1', 'vendor': '10de', 'device': '1aef', 'subsystem_vendor': '1458',
                             'subsystem_device': subsystem, 'class': 0x040300, 'driver': 'snd_hda_intel'})
    return {
        'name': 'guest', 'cpu': {'vendor': 'GenuineIntel', 'count': 2}, 'iommu': {'type': 'none'},
        'pci': [
            {'address': '00:00.0', 'vendor': '8086', 'device': '29c0', 'class': 0x060000},
            {'address': '00:01.0', 'vendor': '1234', 'device': '1111', 'class': 0x030000, 'driver': 'bochs-drm',
             'boot_vga': True},
            {'address': '00:1c.0', 'vendor': '1b36', 'device': '000c', 'class': 0x060400, 'driver': 'pcieport',
             'children': children},
        ],
    }


GUESTS = {
    # guest name: (topology, host variables)
    'g-good': (guest_topology(), {'fleetgpu_vm_name': 'vm-good', 'fleetgpu_guest_driver': 'nvidia'}),
    'g-named-host': (guest_topology(), {'fleetgpu_vm_name': 'vm-good', 'fleetgpu_vm_host': 'nodeA'}),
    'g-nogpu': (guest_topology(gpu=False), {'fleetgpu_vm_name': 'vm-a2'}),
    'g-noaudio': (guest_topology(audio=False), {'fleetgpu_vm_name': 'vm-a3'}),
    'g-nodriver': (guest_topology(driver=None), {'fleetgpu_vm_name': 'vm-a4'}),
    'g-nouveau': (guest_topology(driver='nouveau'), {'fleetgpu_vm_name': 'vm-a5', 'fleetgpu_guest_driver': 'nvidia'}),
    'g-ghost': (guest_topology(), {'fleetgpu_vm_name': 'vm-ghost'}),
    'g-twice': (guest_topology(), {'fleetgpu_vm_name': 'vm-twice'}),
    'g-badhost': (guest_topology(), {'fleetgpu_vm_name': 'vm-good', 'fleetgpu_vm_host': 'nodeZ'}),
    'g-notkvm': (guest_topology(), {'fleetgpu_vm_name': 'vm-good', 'fleetgpu_vm_host': 'g-good'}),
}


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.daemons: dict[str, private.PrivateLibvirtd] = {}
        self.sysfs = {'nodeA': simkernel.materialize('workstation', str(tmp / 'nodeA')),
                      'nodeB': simkernel.materialize('amd_host', str(tmp / 'nodeB'))}
        for name in ('nodeA', 'nodeB'):
            self.daemons[name] = private.PrivateLibvirtd().start()
        a, b = self.daemons['nodeA'], self.daemons['nodeB']
        for vm in ('vm-good', 'vm-a2', 'vm-a3', 'vm-a4', 'vm-a5', 'vm-twice'):
            a.define(vm, hostdev_xml(vm, HOSTDEVS_A))
        b.define('vm-twice', hostdev_xml('vm-twice', ['0000:41:00.0']))
        b.define('vm-b1')
        self.guests = {name: simkernel.materialize(topo, str(tmp / name)) for name, (topo, _hv) in GUESTS.items()}

    def stop(self) -> None:
        for d in self.daemons.values():
            d.cleanup()

    def inventory(self) -> str:
        hosts = {name: {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                        'fleetgpu_sysfs_root': self.sysfs[name], 'libvirt_gpu_uri': d.uri}
                 for name, d in self.daemons.items()}
        guests = {}
        for name, (_topo, hostvars) in GUESTS.items():
            guests[name] = dict(hostvars, ansible_connection='local', ansible_python_interpreter=sys.executable,
                                fleetgpu_sysfs_root=self.guests[name])
        path = self.tmp / 'inventory.json'
        path.write_text(json.dumps({'gpu_hosts': {'hosts': hosts}, 'fleetgpu_guests': {'hosts': guests}}))
        return str(path)


@pytest.fixture(scope='module')
def lab(tmp_path_factory: pytest.TempPathFactory):
    one = Lab(tmp_path_factory.mktemp('verify'))
    yield one
    one.stop()


def by_host(doc: dict, task: str) -> dict[str, dict]:
    return {t['host']: t for t in doc['tasks'] if t['task'] == task}


def summary(doc: dict) -> str:
    found = [t for t in doc['tasks'] if t['task'] == SUMMARY_TASK]
    assert len(found) == 1, found
    return found[0]['result']['msg']


def test_all_good_guests_pass(run_playbook, lab: Lab) -> None:
    proc = run_playbook(VERIFY, inventory=lab.inventory(), args=('-e', 'fleetgpu_guests=g-good:g-named-host'))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    doc = playbook_json(proc)
    checks = by_host(doc, CHECK_TASK)
    assert set(checks) == {'g-good', 'g-named-host'}
    good = checks['g-good']['result']
    assert good['ok'] is True and good['changed'] is False and good['host'] == 'nodeA'
    assert good['given'] == [{'address': '0000:01:00.0', 'vendor_device': '10de:2204', 'subsystem_vendor_id': '1458',
                              'subsystem_device_id': '403b',
                              'companions': [{'address': '0000:01:00.1', 'vendor_device': '10de:1aef'}]}]
    # the guest's own address, not the host's; QEMU's std VGA (1234:1111) is not taken for it
    assert good['matched'] == [{'address': '0000:06:00.0', 'vendor_device': '10de:2204', 'driver': 'nvidia',
                                'companions': ['10de:1aef']}]
    said = by_host(doc, SAY_TASK)
    assert said['g-good']['result']['msg'] == (
        'vm-good on nodeA: OK - 1 GPU(s) given, all seen in the guest: 10de:2204 (with 10de:1aef) at 0000:06:00.0 '
        'on nvidia')
    assert checks['g-named-host']['result']['host'] == 'nodeA'
    assert summary(doc) == ('verify_guests: 2 of 2 guest(s) OK: g-good, g-named-host; 0 lack something; '
                            '0 not checked')
    assert all(s['failures'] == 0 for s in doc['stats'].values())


def _check_failures(doc: dict) -> dict[str, str]:
    checks = by_host(doc, CHECK_TASK)
    assert 'Traceback' not in json.dumps(checks)
    return {h: t['result']['msg'] for h, t in checks.items() if t['status'] == 'failed'}


@pytest.mark.parametrize('check', [False, True], ids=['run', 'check_mode'])
def test_each_guest_that_lacks_something_fails_naming_vm_gpu_and_driver(run_playbook, lab: Lab, check: bool) -> None:
    proc = run_playbook(VERIFY, inventory=lab.inventory(), args=('--check',) if check else ())
    assert proc.returncode != 0
    doc = playbook_json(proc)
    failed = _check_failures(doc)
    assert set(failed) == {'g-nogpu', 'g-noaudio', 'g-nodriver', 'g-nouveau', 'g-ghost', 'g-twice', 'g-badhost',
                           'g-notkvm'}
    assert failed['g-nogpu'] == (
        'vm-a2 on nodeA lacks: 1 of the 1 GPU(s) 10de:2204 it was given (host 0000:01:00.0) are not seen in the '
        'guest; the companion function 10de:1aef of 10de:2204 is not seen in the guest (1 missing)')
    assert failed['g-noaudio'] == ('vm-a3 on nodeA lacks: the companion function 10de:1aef of 10de:2204 is not '
                                   'seen in the guest (1 missing)')
    assert failed['g-nodriver'] == ('vm-a4 on nodeA lacks: GPU 0000:06:00.0 (10de:2204) in the guest is on no '
                                    'driver, not a driver of its own')
    assert failed['g-nouveau'] == 'vm-a5 on nodeA lacks: GPU 0000:06:00.0 (10de:2204) in the guest is on nouveau, not nvidia'
    assert failed['g-ghost'] == "VM 'vm-ghost' is a libvirt domain on none of the KVM hosts read (nodeA, nodeB)"
    assert failed['g-twice'] == ("VM 'vm-twice' is a libvirt domain on 2 KVM hosts (nodeA, nodeB): set vm_host "
                                 "for this guest to the one it runs on")
    assert failed['g-badhost'] == "vm_host 'nodeZ' (the KVM host of VM 'vm-good') is not a host of the inventory"
    assert failed['g-notkvm'] == ("vm_host 'g-good' (the KVM host of VM 'vm-good') is not one of the KVM hosts "
                                  "read (nodeA, nodeB)")
    results = {h: t['result'] for h, t in by_host(doc, CHECK_TASK).items()}
    assert results['g-nogpu']['missing'] == ['10de:2204']
    assert results['g-noaudio']['missing_companions'] == ['10de:1aef'] and results['g-noaudio']['missing'] == []
    assert results['g-nouveau']['without_driver'] == ['0000:06:00.0']
    assert by_host(doc, SAY_TASK).keys() == {'g-good', 'g-named-host'}
    assert summary(doc) == (
        'verify_guests: 2 of 10 guest(s) OK: g-good, g-named-host; 4 lack something: g-nogpu, g-noaudio, '
        'g-nodriver, g-nouveau; 4 not checked: g-ghost, g-twice, g-badhost, g-notkvm')
    # the recap shows every failed guest; the KVM hosts were only read
    assert {h for h, s in doc['stats'].items() if s['failures']} == set(failed)
    assert all(s['changed'] == 0 for s in doc['stats'].values()), doc['stats']
    assert 'Traceback' not in proc.stdout + proc.stderr


def test_a_kvm_host_without_libvirt_is_named_for_the_vm_on_it(run_playbook, lab: Lab, tmp_path: Path) -> None:
    inventory = json.loads(Path(lab.inventory()).read_text())
    inventory['gpu_hosts']['hosts']['nodeB']['libvirt_gpu_uri'] = 'qemu:///system?socket=%s/none.sock' % tmp_path
    path = tmp_path / 'inventory.json'
    path.write_text(json.dumps(inventory))
    proc = run_playbook(VERIFY, inventory=str(path), args=('-e', 'fleetgpu_guests=g-good:g-ghost'))
    doc = playbook_json(proc)
    failed = _check_failures(doc)
    assert list(failed) == ['g-ghost']
    assert failed['g-ghost'].startswith("VM 'vm-ghost' is a libvirt domain on none of the KVM hosts read (nodeA); "
                                        "not read: nodeB (libvirt is not available: no libvirt at"), failed
    # with nodeB unread, vm-twice is found once (on nodeA) and g-good still passes
    assert by_host(doc, CHECK_TASK)['g-good']['status'] == 'ok'


def test_no_guest_in_the_inventory_is_a_clear_error(run_playbook, lab: Lab) -> None:
    proc = run_playbook(VERIFY, inventory=lab.inventory(), args=('-e', 'fleetgpu_guests=vms_nobody_has'))
    assert proc.returncode != 0
    doc = playbook_json(proc)
    failed = [t for t in doc['tasks'] if t['status'] == 'failed']
    assert len(failed) == 1 and failed[0]['task'] == 'Check the guest pattern'
    assert "No host of the inventory matches 'vms_nobody_has', so no guest would be checked" in failed[0]['result']['msg']


def test_the_summary_is_printed_when_every_guest_fails(run_playbook, lab: Lab) -> None:
    proc = run_playbook(VERIFY, inventory=lab.inventory(), args=('-e', 'fleetgpu_guests=g-nogpu:g-ghost'))
    assert proc.returncode != 0
    doc = playbook_json(proc)
    assert set(_check_failures(doc)) == {'g-nogpu', 'g-ghost'}
    assert summary(doc) == 'verify_guests: 0 of 2 guest(s) OK; 1 lack something: g-nogpu; 1 not checked: g-ghost'


def test_the_chain_in_the_guide_is_a_valid_playbook(run_playbook, tmp_path: Path) -> None:
    """docs/verify_guests.md's converge.yml (site.yml, the vendors' roles, verify_guests.yml) passes
    ansible-playbook --syntax-check, with stand-ins for the vendors' roles."""
    text = (REPO / 'docs' / 'verify_guests.md').read_text(encoding='utf-8')
    start = text.index('```yaml\n# converge.yml\n') + len('```yaml\n')
    converge = tmp_path / 'converge.yml'
    converge.write_text(text[start:text.index('```', start)])
    for role in ('nvidia.nvidia_driver', 'my_rocm'):
        (tmp_path / 'roles' / role / 'tasks').mkdir(parents=True)
        (tmp_path / 'roles' / role / 'tasks' / 'main.yml').write_text('- ansible.builtin.meta: noop\n')
    proc = run_playbook(converge, args=('--syntax-check',), json_output=False,
                        env={'ANSIBLE_ROLES_PATH': str(tmp_path / 'roles')})
    assert proc.returncode == 0, proc.stdout + proc.stderr
