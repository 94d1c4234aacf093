"""Print facts.yml's wall time over 10 / 100 / 300 simulated hosts beside `ansible -m ping` on the same inventory.

Usage: .venv/bin/python bench/bench_fleet_facts.py [--sizes 10,100,300] [--forks 5]

Every host is ``ansible_connection: local`` with its own simulated kernel tree (the
``workstation`` topology, materialised once per host by tests/sim/simkernel.py) and no libvirt,
so facts.yml runs gpu_facts, iommu_check and libvirt_gpu_info on each host and the controller-side
fleet_plan writes the report.  The collection is built and installed first
(scripts/install-collection.sh).  Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.sim import simkernel  # noqa: E402

VENV_BIN = os.path.join(REPO, '.venv', 'bin')


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, list[str]]:
    """Wall time and the lines of failed / unreachable hosts (a loaded machine can time a host out)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    took = time.perf_counter() - t0
    bad = [line for line in proc.stdout.splitlines() if line.startswith(('fatal:', 'failed:')) or 'UNREACHABLE' in line]
    if proc.returncode != 0 and not bad:
        raise SystemExit('%s failed (%d):\n%s' % (' '.join(cmd[:2]), proc.returncode, proc.stdout[-3000:]))
    return took, bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='10,100,300')
    parser.add_argument('--forks', type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(',')]
    subprocess.run(['bash', os.path.join(REPO, 'scripts', 'install-collection.sh')], check=True,
                   stdout=subprocess.DEVNULL)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               ANSIBLE_HOST_KEY_CHECKING='0', ANSIBLE_NOCOLOR='1', ANSIBLE_FORKS=str(args.forks),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCALHOST_WARNING='0',
               PATH='%s:%s' % (VENV_BIN, os.environ.get('PATH', '')))
    with tempfile.TemporaryDirectory(prefix='fleetgpu-bench-') as tmp:
        roots = []
        for i in range(max(sizes)):
            roots.append(simkernel.materialize('workstation', os.path.join(tmp, 'h%03d' % i)))
        print('hosts  facts.yml  ansible -m ping  ratio  (forks %d, load average %.1f)'
              % (args.forks, os.getloadavg()[0]))
        for size in sizes:
            inv = os.path.join(tmp, 'inv%d.json' % size)
            hosts = {'h%03d' % i: {'ansible_connection': 'local', 'fleetgpu_sysfs_root': roots[i],
                                   'libvirt_gpu_uri': 'qemu:///system?socket=%s/none.sock' % tmp}
                     for i in range(size)}
            with open(inv, 'w', encoding='utf-8') as handle:
                json.dump({'gpu_hosts': {'hosts': hosts, 'vars': {'fleetgpu_report_dir': os.path.join(tmp, 'r%d' % size)}}},
                          handle)
            facts, facts_bad = run([os.path.join(VENV_BIN, 'ansible-playbook'), '-i', inv,
                                    os.path.join(REPO, 'playbooks', 'facts.yml')], env)
            ping, ping_bad = run([os.path.join(VENV_BIN, 'ansible'), '-i', inv, 'gpu_hosts', '-m',
                                  'ansible.builtin.ping'], env)
            with open(os.path.join(tmp, 'r%d' % size, 'fleet-report.json'), encoding='utf-8') as handle:
                summary = json.load(handle)['summary']
            print('%5d  %8.1f s  %14.1f s  %5.1f  (report lists %d hosts, %d failed; ping failures %d)'
                  % (size, facts, ping, facts / ping, summary['hosts'], len(summary['hosts_failed']), len(ping_bad)))
            for line in (facts_bad + ping_bad)[:5]:
                print('       ' + line[:300])


if __name__ == '__main__':
    main()
