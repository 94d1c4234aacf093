"""Role fleetgpu.passthrough.testbed where no QEMU is needed: a host name that is not one plain
path component is refused before anything is touched, and the overlay a crashed run left is
predicted by check mode, dropped by the real run (reported), and a second run changes nothing.
Booting and stopping real test hosts is in tests/testbed (runtime phase and the fleet scenario).
"""
from __future__ import annotations

import json
from pathlib import Path

from conftest import playbook_json


def _play(run_dir: Path, state: str, names: list[str]) -> str:
    return json.dumps([{'name': 'testbed', 'hosts': 'localhost', 'gather_facts': False, 'tasks': [
        {'name': 'Run the role', 'ansible.builtin.include_role': {'name': 'fleetgpu.passthrough.testbed'},
         'vars': {'testbed_state': state, 'testbed_run_dir': str(run_dir),
                  'testbed_hosts': [{'name': n} for n in names]}}]}])


def _task(doc: dict, name: str) -> dict:
    found = [t for t in doc['tasks'] if t['task'] == 'fleetgpu.passthrough.testbed : ' + name]
    assert found, json.dumps(doc)[:3000]
    return found[-1]


def test_a_name_outside_the_run_directory_is_refused(run_playbook, tmp_path: Path) -> None:
    outside = tmp_path / 'victim'
    outside.mkdir()
    (outside / 'overlay.qcow2').write_text('keep')
    run_dir = tmp_path / 'run'
    for state in ('present', 'absent'):
        proc = run_playbook(_play(run_dir, state, ['../victim']))
        assert proc.returncode != 0
        failed = _task(playbook_json(proc), 'Read which of the test hosts are running')
        assert failed['status'] == 'failed'
        assert "invalid test host name '../victim'" in failed['result']['stderr']
        assert 'Traceback' not in failed['result']['stderr']
    assert (outside / 'overlay.qcow2').read_text() == 'keep' and not run_dir.exists()


def test_the_overlay_of_a_crashed_run_is_predicted_dropped_and_reported_once(run_playbook, tmp_path: Path) -> None:
    run_dir = tmp_path / 'run'
    (run_dir / 'h1').mkdir(parents=True)
    (run_dir / 'h1' / 'overlay.qcow2').write_text('x')
    (run_dir / 'h1' / 'serial.log').write_text('console')
    play = _play(run_dir, 'absent', ['h1', 'h2'])

    proc = run_playbook(play, args=('--check',))
    doc = playbook_json(proc)
    assert proc.returncode == 0 and doc['stats']['localhost']['changed'] == 1
    assert _task(doc, 'Say which hosts would be stopped (check mode)')['result']['msg'] == (
        'Would drop the overlays left by h1.')
    assert (run_dir / 'h1' / 'overlay.qcow2').exists()

    proc = run_playbook(play)
    doc = playbook_json(proc)
    assert proc.returncode == 0 and doc['stats']['localhost']['changed'] == 1
    assert not (run_dir / 'h1' / 'overlay.qcow2').exists()
    assert (run_dir / 'h1' / 'serial.log').read_text() == 'console'     # the console log is kept to read

    proc = run_playbook(play)
    assert proc.returncode == 0 and playbook_json(proc)['stats']['localhost']['changed'] == 0
