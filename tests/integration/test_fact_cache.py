"""gpu_facts results survive a jsonfile fact cache round trip.

One ansible-playbook run gathers ``gpu_passthrough`` facts from simulated kernel trees (option
sysfs_root); a second run with ``gather_facts: false`` uses them from the cache, after the trees
are gone, so nothing could have been gathered again.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import REPO, playbook_json

sys.path.insert(0, str(REPO / 'tests' / 'sim'))
simkernel = pytest.importorskip('simkernel')

pytestmark = pytest.mark.skipif(not (REPO / 'plugins' / 'modules' / 'gpu_facts.py').exists(),
                                reason='gpu_facts module not in the tree yet')

TOPOLOGIES = {'ws1': 'workstation', 'hgx1': 'hgx8'}

GATHER = '''
- name: Gather GPU facts into the cache
  hosts: gpu_hosts
  gather_facts: false
  tasks:
    - name: Read the (simulated) kernel
      fleetgpu.passthrough.gpu_facts:
        sysfs_root: "{{ sim_sysfs_root }}"
'''

CONSUME = '''
- name: Use cached GPU facts without gathering
  hosts: gpu_hosts
  gather_facts: false
  tasks:
    - name: The facts are there
      ansible.builtin.assert:
        that:
          - ansible_facts.gpu_passthrough is mapping
          - ansible_facts.gpu_passthrough.gpus | length > 0
          - ansible_facts.gpu_passthrough.gpus[0].iommu_group is none or ansible_facts.gpu_passthrough.gpus[0].iommu_group is integer
          - ansible_facts.gpu_passthrough.host.iommu_enabled is boolean
        quiet: true
    - name: Show them
      ansible.builtin.debug:
        var: ansible_facts.gpu_passthrough

- name: Fleet view on the controller from the cache
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Count GPUs per host
      ansible.builtin.debug:
        msg: "{{ dict(groups.gpu_hosts | zip(groups.gpu_hosts | map('extract', hostvars, ['ansible_facts', 'gpu_passthrough', 'gpus']) | map('length'))) }}"
'''


def read_cached_facts(cache: Path, host: str) -> Dict[str, Any]:
    """One host's facts from a jsonfile cache directory.

    ansible-core 2.19 names the file ``s1_<host>`` and wraps the facts as a JSON string under
    ``__payload__``; older releases wrote ``<host>`` with the facts as they are.
    """
    candidates = [cache / host] + sorted(cache.glob('s*_%s' % host))
    existing = [c for c in candidates if c.is_file()]
    assert existing, 'no cache file for %s in %s: %s' % (host, cache, sorted(p.name for p in cache.iterdir()))
    data = json.loads(existing[-1].read_text())
    if isinstance(data, dict) and set(data) == {'__payload__'}:
        data = json.loads(data['__payload__'])
    return data


def _inventory(tmp_path: Path, roots: Dict[str, Path]) -> Path:
    lines = ['[gpu_hosts]']
    for host, root in roots.items():
        lines.append('%s ansible_connection=local ansible_python_interpreter=%s sim_sysfs_root=%s'
                     % (host, sys.executable, root))
    lines += ['', '[local]', 'localhost ansible_connection=local ansible_python_interpreter=%s' % sys.executable]
    path = tmp_path / 'hosts.ini'
    path.write_text('\n'.join(lines) + '\n')
    return path


def test_gpu_facts_round_trip_through_jsonfile_cache(run_playbook, tmp_path: Path) -> None:
    cache = tmp_path / 'fact_cache'
    env = {'ANSIBLE_CACHE_PLUGIN': 'jsonfile', 'ANSIBLE_CACHE_PLUGIN_CONNECTION': str(cache),
           'ANSIBLE_CACHE_PLUGIN_TIMEOUT': '3600'}
    roots = {host: Path(simkernel.materialize(topo, str(tmp_path / 'sim' / host))) for host, topo in TOPOLOGIES.items()}
    inventory = _inventory(tmp_path, roots)

    gather = run_playbook(GATHER, inventory=str(inventory), env=env)
    assert gather.returncode == 0, gather.stdout + gather.stderr
    gathered = {t['host']: t['result']['ansible_facts']['gpu_passthrough']
                for t in playbook_json(gather)['tasks'] if t['action'].endswith('gpu_facts')}
    assert sorted(gathered) == sorted(TOPOLOGIES)
    for host, facts in gathered.items():
        assert facts['gpus'], 'no GPUs gathered on %s' % host
        cached = read_cached_facts(cache, host)
        assert cached['gpu_passthrough'] == facts, 'cache file of %s differs from the module result' % host

    # nothing left to gather from: a second gathering could only fail
    shutil.rmtree(tmp_path / 'sim')

    consume = run_playbook(CONSUME, inventory=str(inventory), env=env)
    assert consume.returncode == 0, consume.stdout + consume.stderr
    doc = playbook_json(consume)
    assert not [t for t in doc['tasks'] if t['action'].endswith('gpu_facts') or t['action'].endswith('setup')]
    shown = {t['host']: t['result']['ansible_facts.gpu_passthrough'] for t in doc['tasks'] if t['task'] == 'Show them'}
    assert shown == gathered
    (fleet,) = [t['result']['msg'] for t in doc['tasks'] if t['task'] == 'Count GPUs per host']
    assert fleet == {host: len(facts['gpus']) for host, facts in gathered.items()}
    for host in TOPOLOGIES:
        assert doc['stats'][host]['changed'] == 0 and doc['stats'][host]['failures'] == 0


def test_without_the_cache_the_facts_are_gone(run_playbook, tmp_path: Path) -> None:
    """With the memory cache the consuming play sees no facts: the round trip above is the cache's doing."""
    cache = tmp_path / 'fact_cache'
    roots = {'ws1': Path(simkernel.materialize('workstation', str(tmp_path / 'sim' / 'ws1')))}
    inventory = _inventory(tmp_path, roots)
    env = {'ANSIBLE_CACHE_PLUGIN': 'jsonfile', 'ANSIBLE_CACHE_PLUGIN_CONNECTION': str(cache)}
    assert run_playbook(GATHER, inventory=str(inventory), env=env).returncode == 0
    env['ANSIBLE_CACHE_PLUGIN'] = 'memory'
    consume = run_playbook(CONSUME, inventory=str(inventory), env=env)
    assert consume.returncode != 0
    failed = [t for t in playbook_json(consume)['tasks'] if t['status'] == 'failed']
    assert failed and failed[0]['task'] == 'The facts are there'
