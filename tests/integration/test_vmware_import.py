"""Issue 17 through real ansible-playbook runs (three in all, the phase is near its time budget).

1. playbooks/import_vmware.yml reads a directory of real-shaped .vmx / .ovf files, prints the
   derived requests and, with fleetgpu_import_place, places them over simulated hosts
   (tests/integration/test_fleet_playbooks.Fleet: simulated kernels, private libvirtd) as a dry run.
2. site.yml refuses a ``mode: partition`` request at planning time, naming it, before any change.
3. Role vfio_host refuses, in its preflight and before any change, hosts where KVM passthrough
   cannot apply; the facts are simulated by a playbook-adjacent module (macOS, Windows, VirtualBox /
   VMware guests, no /dev/kvm) while a KVM guest converges as before.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, playbook_json
from tests.integration import libvirtd as private
from tests.integration.test_fleet_playbooks import Fleet, vm
from tests.integration.test_vfio_host_role import Host

IMPORT = REPO / 'playbooks' / 'import_vmware.yml'
SITE = REPO / 'playbooks' / 'site.yml'
FIXTURES = REPO / 'tests' / 'unit' / 'fixtures' / 'vmware' / 'good'
needs_libvirtd = pytest.mark.skipif(private.available() is not None, reason=str(private.available()))

# what the old ESXi host had; 65:00.0 does not exist on the simulated hosts (identity, not address)
LAB_VMX = '''\
.encoding = "UTF-8"
displayName = "{name}"
pciPassthru0.present = "TRUE"
pciPassthru0.id = "0000:65:00.0"
pciPassthru0.vendorId = "0x1234"
pciPassthru0.deviceId = "0x1111"
pciPassthru0.systemId = "5f3e9a21-7c4d-0b1e-2a11-3cecef0a1b2c"
'''


@pytest.fixture(scope='module')
def fleet(tmp_path_factory: pytest.TempPathFactory):
    if private.available() is not None:
        pytest.skip(str(private.available()))
    f = Fleet(tmp_path_factory.mktemp('vmware-fleet'))
    yield f
    f.stop()


def tasks(doc: dict, prefix: str) -> list[dict]:
    return [t for t in doc['tasks'] if t['task'].startswith(prefix)]


@needs_libvirtd
def test_import_prints_requests_and_places_them_as_a_dry_run(run_playbook, fleet: Fleet, tmp_path: Path) -> None:
    export = tmp_path / 'export'
    shutil.copytree(FIXTURES, export)
    (export / 'lab').mkdir()
    (export / 'lab' / 'vm-a.vmx').write_text(LAB_VMX.format(name='vm-a'))
    (export / 'lab' / 'vm-b.vmx').write_text(LAB_VMX.format(name='vm-b'))
    fleet.daemons['nodeB'].define('vm-a', private.domain_xml('vm-a'))   # vm-a exists on nodeB, vm-b nowhere
    before = fleet.state()

    vars_file = tmp_path / 'imported.yml'
    proc = run_playbook(IMPORT, inventory=fleet.inventory(fleetgpu_vms=[]),
                        extra_vars={'fleetgpu_vmware_dir': str(export), 'fleetgpu_import_place': True,
                                    'fleetgpu_import_vars_file': str(vars_file)})
    doc = playbook_json(proc)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    printed = tasks(doc, 'Print the derived requests')[0]['result']['msg']
    # by model (fleetgpu_models of the GPU hosts), never by the old address
    assert printed['fleetgpu_vms'] == [{'name': 'vm-a', 'gpus': [{'model': 'stdvga', 'count': 1}]},
                                       {'name': 'vm-b', 'gpus': [{'model': 'stdvga', 'count': 1}]}]
    pending = dict(p.split(': ', 1) for p in printed['pending'])
    assert 'mdev' in pending['vdi07'] and 'grid_t4-4q' in pending['vdi07']
    assert 'mdev' in pending['vdi-template']
    assert '10de:20b2 has no model in the fleet model table' in pending['train01']
    assert any('variants.vmx 10 pciPassthru2 network / storage adapter' in s for s in printed['skipped'])
    assert printed['summary'].endswith('from 11 file(s)')

    plan = tasks(doc, 'Place the imported requests')[0]['result']
    assert plan['placement'] == [{'vm': 'vm-a', 'host': 'nodeB', 'model': 'stdvga', 'devices': ['0000:01:00.0']}]
    unplaced = {u['vm']: u for u in plan['unplaced']}
    assert set(unplaced) == {'vm-b'}
    assert 'not defined on any reachable host' in json.dumps(unplaced['vm-b'])
    # a dry run: nothing changed on any host, no domain touched; only the asked-for vars file
    # was written on the controller, and it holds exactly the printed requests for site.yml
    assert {h: s['changed'] for h, s in doc['stats'].items() if s['changed']} == {'localhost': 1}
    assert fleet.state() == before
    assert yaml.safe_load(vars_file.read_text()) == {'fleetgpu_vms': printed['fleetgpu_vms']}


@needs_libvirtd
def test_partition_request_is_refused_before_any_change(run_playbook, fleet: Fleet) -> None:
    fleet.daemons['nodeB'].clear_domains()
    before = fleet.state()
    proc = run_playbook(SITE, inventory=fleet.inventory(fleetgpu_vms=[vm('whole1'), vm('split1', mode='partition')]))
    doc = playbook_json(proc)
    assert proc.returncode != 0
    msg = tasks(doc, 'Validate the GPU models')[0]['result']['msg']
    assert "VM 'split1' asks for 1 x stdvga (partitioned)" in msg
    assert 'no GPU of model(s) stdvga offers SR-IOV virtual functions or mediated device types' in msg
    assert 'not placed as whole GPUs' in msg and 'no host was changed' in msg
    assert not tasks(doc, 'Make the choice of GPUs permanent') and not tasks(doc, 'Attach the GPUs')
    assert fleet.state() == before


FAKE_FACTS = '''#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={'facts': {'type': 'dict', 'required': True}}, supports_check_mode=True)
    module.exit_json(changed=False, ansible_facts=module.params['facts'])


if __name__ == '__main__':
    main()
'''

REFUSAL_PLAY = '''
- name: vfio_host on hosts whose platform facts are simulated
  hosts: all
  gather_facts: false
  tasks:
    - name: Simulate the facts setup would have gathered
      fake_facts:
        facts: "{{ simulated_facts }}"

    - name: Converge
      ansible.builtin.include_role:
        name: fleetgpu.passthrough.vfio_host
'''

LINUX = {'system': 'Linux', 'os_family': 'Debian', 'distribution': 'Debian', 'distribution_major_version': '12',
         'virtualization_role': 'host', 'virtualization_type': 'kvm', 'virtualization_tech_host': ['kvm'],
         'virtualization_tech_guest': []}
CASES = {
    'mac': (dict(LINUX, system='Darwin', os_family='Darwin'), ['macOS has neither KVM nor VFIO', 'Metal via Venus']),
    'win': (dict(LINUX, system='Win32NT', os_family='Windows'), ['Windows has neither KVM nor VFIO', 'GPU-P', 'DDA']),
    'vbox': (dict(LINUX, virtualization_role='guest', virtualization_type='virtualbox'),
             ['itself a virtualbox guest', 'no supported GPU passthrough']),
    'vmw': (dict(LINUX, virtualization_role='guest', virtualization_type='VMware'),
            ['nested passthrough is not supported under VMware']),
    'nokvm': (dict(LINUX, virtualization_tech_host=[]), ['there is no /dev/kvm']),
    # our QEMU test hosts: KVM/QEMU guests, under TCG without /dev/kvm
    'kvmguest': (dict(LINUX, virtualization_role='guest', virtualization_type='kvm', virtualization_tech_host=[]), None),
}


def test_role_refuses_hosts_where_kvm_passthrough_cannot_apply(run_playbook, tmp_path: Path) -> None:
    hosts: dict[str, Host] = {}
    inventory: dict[str, dict] = {}
    for name, (facts, _expect) in CASES.items():
        (tmp_path / name).mkdir()
        host = hosts[name] = Host(tmp_path / name, 'identical_pair')
        env = host.env()
        wrapper = host.tmp / 'python'
        wrapper.write_text('#!/bin/sh\nexport PATH=%s FLEETGPU_TEST_LOG=%s FLEETGPU_TEST_ROOT=%s\nexec %s "$@"\n'
                           % (env['PATH'], env['FLEETGPU_TEST_LOG'], env['FLEETGPU_TEST_ROOT'], sys.executable))
        wrapper.chmod(0o755)
        inventory[name] = dict(host.vars(), ansible_connection='local', ansible_python_interpreter=str(wrapper),
                               simulated_facts=facts)
    library = tmp_path / 'library'
    library.mkdir()
    (library / 'fake_facts.py').write_text(FAKE_FACTS)
    inv = tmp_path / 'inventory.json'
    inv.write_text(json.dumps({'all': {'hosts': inventory}}))
    before = {name: host.snapshot() for name, host in hosts.items()}

    proc = run_playbook(REFUSAL_PLAY, inventory=str(inv))
    doc = playbook_json(proc)
    refusal = {t['host']: t for t in doc['tasks']
               if t['task'].endswith('Preflight - refuse a host where KVM passthrough cannot apply (not Linux, no KVM, '
                                     'a guest that cannot pass devices on)')}
    failed = [(t['host'], t['task'], t['result'].get('msg')) for t in doc['tasks'] if t['status'] == 'failed']
    assert set(refusal) == set(CASES), (failed, proc.stderr[-2000:])
    for name, (_facts, expect) in CASES.items():
        host = hosts[name]
        if expect is None:
            # a KVM guest passes the refusal and converges as before
            assert refusal[name]['status'] == 'ok', refusal[name]
            mine = [t for t in doc['tasks'] if t['host'] == name and t['status'] == 'failed']
            assert doc['stats'][name]['failures'] == 0, mine
            assert host.snapshot() != before[name]
            continue
        assert refusal[name]['status'] == 'failed', (name, refusal[name])
        msg = refusal[name]['result']['msg']
        assert msg.startswith('vfio_host refuses to configure %s; nothing was written: KVM GPU passthrough cannot '
                              'apply on this host' % name), msg
        assert 'supported: a Linux host with KVM' in msg
        for fragment in expect:
            assert fragment in msg, (name, msg)
        # nothing changed: the host's files, no command run, no change reported
        assert host.snapshot() == before[name], name
        assert host.commands() == [], name
        assert doc['stats'][name]['changed'] == 0, name
    for name, host in hosts.items():
        assert host.host_log.read_text() == '', name     # the running machine's tools were never called
