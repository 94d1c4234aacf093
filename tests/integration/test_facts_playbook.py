"""gpu_facts and iommu_check through ansible-playbook, against simulated kernel trees."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, playbook_json
from tests.sim import simkernel


@pytest.fixture(scope='module')
def sims(tmp_path_factory: pytest.TempPathFactory) -> dict:
    names = ('workstation', 'iommu_off', 'shared_group', 'amd_host', 'stuck', 'hgx8')
    return {n: simkernel.materialize(n, str(tmp_path_factory.mktemp(n))) for n in names}


def tasks(doc: dict, name: str) -> list[dict]:
    return [t for t in doc['tasks'] if t['task'] == name]


def test_gpu_facts_task(run_playbook, sims: dict) -> None:
    play = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: facts
      fleetgpu.passthrough.gpu_facts:
        sysfs_root: "{{ root }}"
    - name: assert
      ansible.builtin.assert:
        that:
          - ansible_facts.gpu_passthrough.host.iommu_enabled
          - ansible_facts.gpu_passthrough.host.cpu_vendor == 'intel'
          - ansible_facts.gpu_passthrough.gpus | map(attribute='address') | list == ['0000:00:02.0', '0000:01:00.0']
          - (ansible_facts.gpu_passthrough.gpus | selectattr('address', 'eq', '0000:01:00.0') | first).state == 'available'
          - (ansible_facts.gpu_passthrough.gpus | selectattr('address', 'eq', '0000:00:02.0') | first).state == 'boot-vga'
    - name: nvidia only, in check mode
      fleetgpu.passthrough.gpu_facts:
        sysfs_root: "{{ root }}"
        vendors: ['10DE']
      check_mode: true
      register: only
'''
    proc = run_playbook(play, extra_vars={'root': sims['workstation']})
    doc = playbook_json(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    facts = tasks(doc, 'facts')[0]['result']
    assert facts['changed'] is False
    gpus = facts['ansible_facts']['gpu_passthrough']['gpus']
    assert gpus[1]['companions'][0]['kind'] == 'audio'
    only = tasks(doc, 'nvidia only, in check mode')[0]['result']
    assert [g['address'] for g in only['ansible_facts']['gpu_passthrough']['gpus']] == ['0000:01:00.0']
    assert tasks(doc, 'assert')[0]['status'] == 'ok'


@pytest.mark.parametrize('args,needle', [
    ({'addresses': ['0000:01:00.8']}, "'0000:01:00.8'"),
    ({'addresses': ['0000:42:00.0']}, '0000:42:00.0'),
    ({'vendors': ['nvidia']}, "'nvidia'"),
])
def test_gpu_facts_bad_input_fails_cleanly(run_playbook, sims: dict, args: dict, needle: str) -> None:
    play = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: facts
      fleetgpu.passthrough.gpu_facts: "{{ args | combine({'sysfs_root': root}) }}"
'''
    proc = run_playbook(play, extra_vars={'root': sims['workstation'], 'args': args})
    assert proc.returncode != 0
    result = tasks(playbook_json(proc), 'facts')[0]
    assert result['status'] == 'failed'
    assert needle in result['result']['msg']
    assert 'Traceback' not in json.dumps(result['result'])


@pytest.mark.parametrize('task', [
    'fleetgpu.passthrough.gpu_facts: {sysfs_root: "{{ root }}", addresses: [0000:01:00.0]}',
    'fleetgpu.passthrough.iommu_check: {sysfs_root: "{{ root }}", devices: [0000:01:00.0]}',
], ids=['gpu_facts', 'iommu_check'])
def test_an_unquoted_address_is_refused_with_quote_it(run_playbook, sims: dict, task: str) -> None:
    """YAML 1.1 reads 0000:01:00.0 unquoted as a base-60 number (60.0); the error says to quote it."""
    play = '- hosts: localhost\n  gather_facts: false\n  tasks:\n    - name: facts\n      %s\n' % task
    proc = run_playbook(play, extra_vars={'root': sims['workstation']})
    result = tasks(playbook_json(proc), 'facts')[0]
    assert proc.returncode != 0 and result['status'] == 'failed', result
    msg = result['result']['msg']
    assert "'60.0'" in msg and 'quote it ("0000:41:00.0")' in msg, msg
    assert 'Traceback' not in json.dumps(result['result'])


def test_stuck_device_does_not_hang_the_play(run_playbook, sims: dict) -> None:
    play = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: facts
      fleetgpu.passthrough.gpu_facts:
        sysfs_root: "{{ root }}"
        timeout: 1
'''
    proc = run_playbook(play, extra_vars={'root': sims['stuck']}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    gpus = tasks(playbook_json(proc), 'facts')[0]['result']['ansible_facts']['gpu_passthrough']['gpus']
    stuck = [g for g in gpus if g['address'] == '0000:01:00.0'][0]
    assert stuck['stuck'] == ['driver_override', 'sriov_numvfs', 'reset_method']
    assert stuck['state'] == 'unusable'


def test_iommu_check_tasks(run_playbook, sims: dict) -> None:
    play = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: ok host
      fleetgpu.passthrough.iommu_check:
        sysfs_root: "{{ roots.amd_host }}"
        devices: ['0000:41:00.0', '0000:41:00.1']
        fail_on: [iommu_off, group_not_viable, no_interrupt_remapping]
    - name: shared group
      fleetgpu.passthrough.iommu_check:
        sysfs_root: "{{ roots.shared_group }}"
        devices: ['0000:03:00.0']
        fail_on: [group_not_viable]
      ignore_errors: true
    - name: iommu off
      fleetgpu.passthrough.iommu_check:
        sysfs_root: "{{ roots.iommu_off }}"
        fail_on: [iommu_off]
      ignore_errors: true
    - name: report only
      fleetgpu.passthrough.iommu_check:
        sysfs_root: "{{ roots.iommu_off }}"
      check_mode: true
'''
    proc = run_playbook(play, extra_vars={'roots': sims})
    doc = playbook_json(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ok = tasks(doc, 'ok host')[0]
    assert ok['status'] == 'ok' and ok['result']['ready'] is True and ok['result']['changed'] is False
    shared = tasks(doc, 'shared group')[0]
    assert shared['status'] == 'ignored'
    assert '0000:03:01.0' in shared['result']['msg'] and 'To do:' in shared['result']['msg']
    off = tasks(doc, 'iommu off')[0]
    assert off['status'] == 'ignored' and 'intel_iommu=on' in off['result']['msg']
    report = tasks(doc, 'report only')[0]
    assert report['status'] == 'ok' and report['result']['ready'] is False
    assert 'iommu_off' in [f['name'] for f in report['result']['findings']]


def test_facts_playbook_fleet_report(run_playbook, sims: dict, tmp_path: Path) -> None:
    inventory = tmp_path / 'inventory.json'
    inventory.write_text(json.dumps({'gpu_hosts': {'hosts': {
        'ws1': {'ansible_connection': 'local', 'fleetgpu_sysfs_root': sims['workstation']},
        'off1': {'ansible_connection': 'local', 'fleetgpu_sysfs_root': sims['iommu_off']},
        'hgx1': {'ansible_connection': 'local', 'fleetgpu_sysfs_root': sims['hgx8']},
    }, 'vars': {'fleetgpu_report_dir': str(tmp_path / 'report')}}}))
    proc = run_playbook(REPO / 'playbooks' / 'facts.yml', inventory=str(inventory))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = playbook_json(proc)
    report = tasks(doc, 'Print the fleet report')
    assert len(report) == 1
    fleet = report[0]['result']['msg']['hosts']
    assert set(fleet) == {'ws1', 'off1', 'hgx1'}
    assert fleet['off1']['ready'] is False and fleet['off1']['problems'] == ['iommu_off']
    assert fleet['ws1']['ready'] is True
    assert '0000:01:00.0 10de:2204 nvidia available' in fleet['ws1']['gpus']
    assert sum(1 for line in fleet['hgx1']['gpus'] if line.endswith('available')) == 8
    written = json.loads((tmp_path / 'report' / 'fleet-report.json').read_text())
    assert sorted(h['name'] for h in written['hosts']) == ['hgx1', 'off1', 'ws1']
    assert (tmp_path / 'report' / 'fleet-report.html').is_file()
