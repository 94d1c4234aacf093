"""Converge figures on a real kernel: the main job (playbooks/site.yml) on a QEMU test host.

Boots an ``intel`` test host (roles/testbed/files/launch.py), defines the VM ``gpu-vm`` in it, runs
site.yml twice through the repository inventory (inventories/testbed) and prints, for the
first converge and for the second (no-op) one: module runs on the host (tasks that start Python
there, the figure that dominates under TCG), tasks run, tasks changed, reboots, wall time.
Prints figures only; asserts nothing about time. The host is always stopped.

    .venv/bin/python bench/bench_converge.py [--topology intel|amd]

Needs root, qemu and the collection installed (bash scripts/install-collection.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402


# Actions that start no Python module on the managed host (reboot sends shell commands only).
CONTROLLER_ACTIONS = {
    'debug', 'set_fact', 'assert', 'fail', 'meta', 'include_tasks', 'import_tasks', 'include_role',
    'import_role', 'include_vars', 'set_stats', 'fleet_plan', 'reboot', 'validate_argument_spec',
}


def _is_module_run(task: dict) -> bool:
    action = task.get('action', '').rsplit('.', 1)[-1]
    return action not in CONTROLLER_ACTIONS


def boots(host: launch.TestHost) -> int:
    return len(host.ssh(['cat', '/var/lib/fleetgpu-testbed/boots']).stdout.splitlines())


def converge(host: launch.TestHost, inventory: Path, pipelining: str = 'inventory') -> Dict[str, Any]:
    env = dict(os.environ)
    env.update({
        'ANSIBLE_COLLECTIONS_PATH': str(REPO / '.cache' / 'collections'),
        'ANSIBLE_CALLBACK_PLUGINS': str(REPO / 'tests' / 'callback_plugins'),
        'ANSIBLE_STDOUT_CALLBACK': 'fleetgpu_json',
        'ANSIBLE_HOST_KEY_CHECKING': 'False',
        'ANSIBLE_NOCOLOR': '1',
    })
    bin_dir = REPO / '.venv' / 'bin'
    cmd = [str(bin_dir / 'ansible-playbook') if bin_dir.exists() else 'ansible-playbook',
           '-i', str(REPO / 'inventories' / 'testbed'), '-i', str(inventory), '-l', host.name,
           str(REPO / 'playbooks' / 'site.yml')]
    if pipelining != 'inventory':
        cmd += ['-e', 'ansible_pipelining=%s' % ('true' if pipelining == 'on' else 'false')]
    b0 = boots(host)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=2400, check=False)
    wall = time.monotonic() - t0
    start = proc.stdout.find('{"tasks"')
    if proc.returncode != 0 or start < 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit('site.yml failed (exit %d)' % proc.returncode)
    doc = json.JSONDecoder().raw_decode(proc.stdout[start:])[0]
    stats = doc['stats'][host.name]
    tasks = [t for t in doc['tasks'] if t['host'] == host.name and t['status'] != 'skipped']
    modules = [t for t in tasks if _is_module_run(t)]
    return {'modules': len(modules), 'tasks': len(tasks), 'changed': stats['changed'],
            'reboots': boots(host) - b0, 'wall_s': wall,
            'module_list': ['%s (%s)' % (t['task'], t['action']) for t in modules],
            'slowest': sorted(((t.get('seconds', 0.0), t['task']) for t in tasks), reverse=True)[:8]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--topology', default='intel', choices=['intel', 'amd'])
    ap.add_argument('--pipelining', default='inventory', choices=['inventory', 'on', 'off', 'both'],
                    help='SSH pipelining for the runs: as the inventory says (the test-bed inventory turns it '
                         'on), forced on or off, or "both": the no-op converge once with and once without')
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix='fleetgpu-bench-') as tmp:
        host = launch.TestHost('testbed-%s' % args.topology, topology=args.topology, run_dir=Path(tmp) / 'run')
        try:
            t0 = time.monotonic()
            host.start(wait=True)
            boot_s = time.monotonic() - t0
            xml = (REPO / 'molecule' / 'shared' / 'files' / 'gpu-vm.xml').read_text()
            subprocess.run(host.ssh_command(['virsh', '-q', '-c', 'qemu:///system', 'define', '/dev/stdin']),
                           input=xml, text=True, check=True, capture_output=True, timeout=120)
            inventory = Path(tmp) / 'inventory.yml'
            host.write_inventory(inventory, group='gpu_hosts')
            # "both": off and on twice, alternating, so that load changing during the run (a
            # host still settling after its reboot, other work on the machine) hits both alike
            modes = ['off', 'on', 'off', 'on'] if args.pipelining == 'both' else [args.pipelining]
            first = converge(host, inventory, modes[-1])
            noops = [(mode, converge(host, inventory, mode)) for mode in modes]
        finally:
            host.stop()
    print('test host %s: boot to SSH %.0f s' % (args.topology, boot_s))
    print('%-26s %8s %6s %8s %8s %9s' % ('converge', 'modules', 'tasks', 'changed', 'reboots', 'wall'))
    label = {'inventory': '', 'on': ', pipelining', 'off': ', no pipelining'}
    rows = [('first' + label[modes[-1]], first)] + [('no-op' + label[mode], fig) for mode, fig in noops]
    for name, fig in rows:
        print('%-26s %8d %6d %8d %8d %8.0fs' % (name, fig['modules'], fig['tasks'], fig['changed'], fig['reboots'],
                                                fig['wall_s']))
    second = noops[0][1]
    print('module runs of the no-op converge:')
    for line in second['module_list']:
        print('  ' + line)
    for mode, fig in noops:
        print('slowest tasks of the no-op converge%s:' % label[mode])
        for seconds, task in fig['slowest']:
            print('  %6.1f s  %s' % (seconds, task))
    return 0


if __name__ == '__main__':
    sys.exit(main())
