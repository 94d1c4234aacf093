"""Print gpu_facts' own body time on simulated hosts, beside `lspci -nnk` on this machine.

Usage: .venv/bin/python bench/bench_gpu_facts.py [--runs N]

The body is the in-process engine call (the module's work without Ansible's start-up):
median of N runs on the 8-GPU HGX-like topology and on a generated host with 16 GPUs and
about 300 PCI functions.  Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# the collection from this checkout on sys.path, before it is imported
import _pyroot  # noqa: F401  # pylint: disable=unused-import

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import gather  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciIds  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs  # noqa: E402
from tests.sim import simkernel  # noqa: E402


def median_ms(func, runs: int) -> tuple[float, float, float]:
    """(median wall ms, best wall ms, median CPU ms of this process) over ``runs`` calls."""
    times = []
    cpu = []
    for _run in range(runs):
        start = time.perf_counter()
        cstart = time.process_time()
        func()
        cpu.append((time.process_time() - cstart) * 1000.0)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), min(times), statistics.median(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--runs', type=int, default=21)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix='bench-gpu-facts-')
    try:
        print('gpu_facts body (in-process engine, pci.ids names on), median of %d runs' % args.runs)
        for name in ('hgx8', 'generated16'):
            root = simkernel.materialize(name, os.path.join(work, name))
            ndev = len(os.listdir(os.path.join(root, 'bus', 'pci', 'devices')))

            def body() -> dict:
                # a fresh PciIds per run, as each module run starts from nothing
                return gather(Sysfs(root), pci_ids=PciIds(), timeout=5.0)

            doc = body()
            med, best, cpu = median_ms(body, args.runs)
            print('  %-12s %3d PCI functions, %2d GPUs: median %6.1f ms  (best %6.1f ms, CPU %5.1f ms)'
                  % (name, ndev, len(doc['gpus']), med, best, cpu))
        lspci = shutil.which('lspci')
        if lspci:
            ndev = len(os.listdir('/sys/bus/pci/devices'))

            def run_lspci() -> None:
                subprocess.run([lspci, '-nnk'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

            med, best, _cpu = median_ms(run_lspci, args.runs)
            print('lspci -nnk on this machine (%d PCI functions): median %6.1f ms  (best %6.1f ms)' % (ndev, med, best))
        else:
            print('lspci is not installed: no comparison')
        print('target: gpu_facts body under 50 ms on the 300-function host')
        print('(CPU: time this process spent; the wall time also holds the forked reader and, on a busy')
        print(' machine, time waiting for a core)')
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
