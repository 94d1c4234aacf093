"""Print the wiring computed for a VM with 1, 2 and 8 large-BAR GPUs on a simulated two-socket
host, and the time to compute it.

Usage: .venv/bin/python bench/bench_vm_wiring.py [--runs N]

The host is the simulated ``hgx8`` (tests/sim/topologies/hgx8.yml): two NUMA nodes of 8 CPUs
and 512 GiB each, 1 GiB hugepages reserved on node 0 only, eight A100 80GB with 128 GiB
BAR1 each, four per node. The gpu_facts of the host are read once; the time printed is the
median of N calls of the wiring computation alone (plugins/module_utils/_vm_wiring.py).
Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

# the collection from this checkout on sys.path, before it is imported
import _pyroot  # noqa: F401  # pylint: disable=unused-import

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import gather  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._topology import format_cpulist  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vm_wiring import plan  # noqa: E402
from tests.sim import simkernel  # noqa: E402

# (GPUs, vCPUs, memory MiB, hugepage KiB): 1 and 2 GPUs fit node 0 with 1 GiB pages; 8 GPUs
# span both nodes (allowed), 4 KiB pages.
CASES = [(1, 6, 65536, 1048576), (2, 7, 131072, 1048576), (8, 8, 262144, None)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--runs', type=int, default=2001)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        facts = gather(Sysfs(simkernel.materialize('hgx8', tmp)), timeout=2.0)
    a100 = [g for g in facts['gpus'] if g['vendor_device'] == '10de:20b2']
    print('host hgx8: %d NUMA nodes, %d A100 (BARs %.1f GiB each)' % (
        len(facts['host']['numa_nodes']), len(a100), a100[0]['bar_bytes'] / (1 << 30)))
    print('%-5s %-5s %-8s %-5s %-12s %-10s %-17s %-17s %-12s %s' % (
        'GPUs', 'vCPU', 'memory', 'node', 'vCPU pins', 'emulator', 'numatune', 'hugepages', 'MMIO64 MiB', 'compute'))
    for count, vcpus, memory, page in CASES:
        gpus = a100[:count]
        kwargs = dict(vcpus=vcpus, memory_mib=memory, hugepage_kib=page, allow_spread=count > 4)
        wiring = plan(facts['host'], gpus, **kwargs)
        times = []
        for _run in range(args.runs):
            start = time.perf_counter()
            plan(facts['host'], gpus, **kwargs)
            times.append(time.perf_counter() - start)
        pages = wiring['hugepages']
        print('%-5d %-5d %-8s %-5s %-12s %-10s %-17s %-17s %-12d %.1f us' % (
            count, vcpus, '%dG' % (memory // 1024), wiring['node'],
            format_cpulist(list(wiring['vcpu_pins'].values())), wiring['emulator_cpus'],
            '%s node %s' % (wiring['numatune']['mode'], wiring['numatune']['nodeset']),
            '%d x %dK' % (pages['pages'], pages['size_kib']) if pages else '-',
            wiring['mmio64_mib'], statistics.median(times) * 1e6))
    return 0


if __name__ == '__main__':
    sys.exit(main())
