"""Role fleetgpu.passthrough.testbed through ansible-playbook, on the runtime phase's running
intel host (no extra boot): a running host is reused (changed=0) and reachable through the
inventory the role adds, Molecule's instance configuration is written, check mode predicts
without starting or stopping anything, and a running host of another topology is refused.
Booting from nothing and stopping are what the fleet scenario's create and destroy do with it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from conftest import REPO, playbook_env, playbook_json, tool

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='QEMU test hosts need root'),
    pytest.mark.skipif(not (REPO / '.cache' / 'collections').exists() and not os.environ.get('CI'),
                       reason='collection not installed (run scripts/install-collection.sh)'),
]

TESTBED_HOSTS = ('intel',)


def _run(tmp_path: Path, host: launch.TestHost, role_vars: dict, check: bool = False,
         then: List[dict] | None = None) -> tuple[int, dict]:
    plays: List[dict] = [{'name': 'testbed', 'hosts': 'localhost', 'gather_facts': False, 'tasks': [
        {'name': 'Run the role', 'ansible.builtin.include_role': {'name': 'fleetgpu.passthrough.testbed'},
         'vars': dict({'testbed_run_dir': str(host.dir.parent)}, **role_vars)}]}]
    plays += then or []
    book = tmp_path / 'testbed.yml'
    book.write_text(json.dumps(plays))
    env = playbook_env(REPO / '.cache' / 'collections', {
        'ANSIBLE_CALLBACK_PLUGINS': str(REPO / 'tests' / 'callback_plugins'),
        'ANSIBLE_STDOUT_CALLBACK': 'fleetgpu_json',
        'ANSIBLE_TIMEOUT': '30',
    })
    cmd = [tool('ansible-playbook'), str(book), '-i', 'localhost,', '-c', 'local'] + (['--check'] if check else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=str(tmp_path), check=False)
    return proc.returncode, playbook_json(proc)


def _changed(doc: dict, host: str = 'localhost') -> int:
    return int(doc['stats'][host]['changed'])


def _task(doc: dict, name: str) -> dict:
    found = [t for t in doc['tasks'] if t['task'] in (name, 'fleetgpu.passthrough.testbed : ' + name)]
    assert found, 'task %r did not run: %s' % (name, json.dumps(doc)[:3000])
    return found[-1]


def test_a_running_host_is_reused_and_reachable(testbed_hosts: Dict[str, launch.TestHost], tmp_path: Path) -> None:
    host = testbed_hosts['intel']
    config = tmp_path / 'instance_config.yml'
    reach = {'name': 'on the test host', 'hosts': 'fleet_test', 'gather_facts': False, 'tasks': [
        {'name': 'Read the kernel', 'ansible.builtin.command': 'uname -r', 'changed_when': False}]}
    rc, doc = _run(tmp_path, host, {'testbed_hosts': [{'name': host.name, 'topology': 'intel',
                                                       'groups': ['fleet_test']}],
                                    'testbed_instance_config': str(config)}, then=[reach])
    assert rc == 0, json.dumps(doc)[:3000]
    # Nothing was started or built: the host kept running (same QEMU).
    assert _changed(doc) == 1, [t['task'] for t in doc['tasks'] if t['result'].get('changed')]
    assert _task(doc, 'Boot the test hosts that are not running')['status'] == 'skipped'
    assert host.alive()
    kernel = _task(doc, 'Read the kernel')
    assert kernel['host'] == host.name and kernel['status'] == 'ok' and kernel['result']['stdout']
    assert yaml.safe_load(config.read_text()) == [{
        'instance': host.name, 'address': '127.0.0.1', 'port': host.port, 'user': 'root',
        'identity_file': str(host.key)}]
    # A second run changes nothing, the instance configuration included.
    rc, doc = _run(tmp_path, host, {'testbed_hosts': [{'name': host.name, 'topology': 'intel'}],
                                    'testbed_instance_config': str(config)})
    assert rc == 0 and _changed(doc) == 0, json.dumps(doc)[:3000]


def test_check_mode_predicts_and_leaves_every_host_as_it_is(testbed_hosts: Dict[str, launch.TestHost],
                                                            tmp_path: Path) -> None:
    host = testbed_hosts['intel']
    rc, doc = _run(tmp_path, host, {'testbed_state': 'absent', 'testbed_hosts': [{'name': host.name}]}, check=True)
    assert rc == 0 and _changed(doc) == 1
    assert _task(doc, 'Say which hosts would be stopped (check mode)')['result']['msg'] == (
        'Would stop %s and drop the overlays.' % host.name)
    assert host.alive() and (host.dir / 'overlay.qcow2').exists()
    host.ssh(['true'])

    rc, doc = _run(tmp_path, host, {'testbed_hosts': [{'name': 'never-booted', 'topology': 'amd'}]}, check=True)
    assert rc == 0 and _changed(doc) == 1
    assert _task(doc, 'Say what would be built and started (check mode)')['result']['msg'].endswith(
        'start never-booted.')
    assert not (host.dir.parent / 'never-booted').exists()


def test_a_running_host_of_another_topology_is_refused(testbed_hosts: Dict[str, launch.TestHost],
                                                       tmp_path: Path) -> None:
    host = testbed_hosts['intel']
    rc, doc = _run(tmp_path, host, {'testbed_hosts': [{'name': host.name, 'topology': 'amd'}]})
    assert rc != 0
    failed = _task(doc, 'Refuse a running host whose topology is not the one asked for')
    assert failed['status'] == 'failed'
    assert failed['result']['results'][0]['msg'] == (
        '%s is running with topology intel, not amd; stop it first (testbed_state absent). '
        'Nothing was changed.' % host.name)
    assert host.alive()
    host.ssh(['true'])
