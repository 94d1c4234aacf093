"""The playbooks launched the way AWX / Automation Controller launches a job: through
``ansible_runner.run()`` with a private data directory laid out as AWX lays it out
(``project/``, ``inventory/``, ``env/extravars``, ``env/envvars``, ``env/settings``),
against simulated kernel trees.

Each test checks the runner's status and return code and the job events AWX stores
(``playbook_on_stats`` changed / failure counts per host, task results per host).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import ansible_runner
import pytest
import yaml

from conftest import REPO, VENV_BIN

sys.path.insert(0, str(REPO / 'tests' / 'sim'))
simkernel = pytest.importorskip('simkernel')

PLAYBOOKS = REPO / 'playbooks'
# inventory host -> simulated topology
HOSTS = {'ws1': 'workstation', 'hgx1': 'hgx8'}


def _need(*names: str) -> None:
    missing = [n for n in names if not (REPO / n).exists()]
    if missing:
        pytest.skip('not in the tree yet: %s' % ', '.join(missing))


class Job:
    """One AWX-style job: a private data directory and the runner's result."""

    def __init__(self, base: Path, collections: Path, hosts: Dict[str, Path],
                 host_vars: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        self.pdd = base / 'pdd'
        project = self.pdd / 'project'
        shutil.copytree(PLAYBOOKS, project / 'playbooks')
        inv = {'all': {'children': {'gpu_hosts': {'hosts': {}}}}}
        for host, root in hosts.items():
            hv = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                  'sim_sysfs_root': str(root)}
            hv.update((host_vars or {}).get(host, {}))
            inv['all']['children']['gpu_hosts']['hosts'][host] = hv
        (self.pdd / 'inventory').mkdir(parents=True)
        self.inventory = self.pdd / 'inventory' / 'hosts.yml'
        self.inventory.write_text(yaml.safe_dump(inv))
        env = self.pdd / 'env'
        env.mkdir()
        # What a job template's credentials / settings put in the environment.
        (env / 'envvars').write_text(yaml.safe_dump({
            'ANSIBLE_COLLECTIONS_PATH': str(collections),
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_FORCE_COLOR': '0',
            'ANSIBLE_RETRY_FILES_ENABLED': '0',
            'ANSIBLE_LOCALHOST_WARNING': '0',
            'ANSIBLE_PYTHON_INTERPRETER': sys.executable,
        }))
        (env / 'extravars').write_text(yaml.safe_dump({}))
        (env / 'settings').write_text(yaml.safe_dump({'job_timeout': 900, 'idle_timeout': 600}))

    def run(self, playbook: str, extravars: Optional[Dict[str, Any]] = None, limit: Optional[str] = None,
            check: bool = False, diff: bool = False) -> 'ansible_runner.Runner':
        cmdline = ' '.join(a for a, on in (('--check', check), ('--diff', diff)) if on) or None
        return ansible_runner.run(private_data_dir=str(self.pdd), playbook=playbook,
                                  inventory=str(self.inventory), extravars=extravars or {},
                                  limit=limit, cmdline=cmdline, quiet=True)


def stats(r: 'ansible_runner.Runner') -> Dict[str, Dict[str, int]]:
    """playbook_on_stats event data: {'changed': {host: n}, 'ok': ..., 'failures': ..., 'dark': ...}."""
    found = [e['event_data'] for e in r.events if e.get('event') == 'playbook_on_stats']
    assert len(found) == 1, 'expected one playbook_on_stats event, got %d' % len(found)
    return found[0]


def results(r: 'ansible_runner.Runner', event: str = 'runner_on_ok') -> List[Dict[str, Any]]:
    return [e['event_data'] for e in r.events if e.get('event') == event]


def stdout(r: 'ansible_runner.Runner') -> str:
    return r.stdout.read() if r.stdout else ''


def snapshot(root: Path) -> Dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                out[str(p.relative_to(root))] = 'link:%s' % os.readlink(p) if p.is_symlink() else 'special'
                continue
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture()
def sim_roots(tmp_path: Path) -> Dict[str, Path]:
    return {host: Path(simkernel.materialize(topo, str(tmp_path / 'sim' / host))) for host, topo in HOSTS.items()}


@pytest.fixture()
def job(tmp_path: Path, installed_collection: Path, sim_roots: Dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv('PATH', '%s:%s' % (VENV_BIN, os.environ.get('PATH', '')))
    return Job(tmp_path, installed_collection, sim_roots)


def test_playbooks_exist() -> None:
    missing = [p for p in ('facts.yml', 'site.yml', 'restore.yml') if not (PLAYBOOKS / p).is_file()]
    assert not missing, 'playbooks missing: %s' % missing
