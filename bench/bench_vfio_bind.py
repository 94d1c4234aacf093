"""Print vfio_bind's own time: plan, bind and restore of GPU groups on the FUSE kernel.

Usage: .venv/bin/python bench/bench_vfio_bind.py [--runs N]

Runs the in-process engine (the module's work without Ansible's start-up) against the
simulated kernel of tests/sim/fusekernel.py: planning on the 8-GPU HGX-like host, then a
bind and a restore of every GPU group of that host, and the cost of one bounded kernel
write through the seam (each write runs in a forked child).  The FUSE round trips make
these figures an upper bound of the engine's own cost.  Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, List, Tuple

# the collection from this checkout on sys.path, before it is imported
import _pyroot  # noqa: F401  # pylint: disable=unused-import

import fusekernel  # noqa: E402
import simkernel  # noqa: E402

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.vfio_bind import Binder  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (  # noqa: E402
    PciDevice,
    is_gpu_class,
    list_addresses,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs  # noqa: E402


def timed(func: Callable[[], object], runs: int) -> Tuple[float, float]:
    times: List[float] = []
    for _run in range(runs):
        start = time.perf_counter()
        func()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--runs', type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix='bench-vfio-bind-')
    try:
        topo = simkernel.load_topology('hgx8')
        kernel = topo.setdefault('kernel', {})
        loaded = set(kernel.get('loaded') or [])
        for node in simkernel.iter_nodes(topo.get('pci') or []):
            if node.get('driver') and node['driver'] not in simkernel.CORE_DRIVERS:
                loaded.add(node['driver'].replace('-', '_'))
        kernel['loaded'] = sorted(loaded | {'vfio', 'vfio_pci', 'vfio_pci_core', 'vfio_iommu_type1'})
        static = Sysfs(simkernel.materialize(topo, os.path.join(work, 'static')), timeout=5.0)
        static_gpus = [str(a) for a in list_addresses(static)
                       if is_gpu_class(PciDevice.read(static, a).class_code) and not PciDevice.read(static, a).boot_vga]
        med, low = timed(lambda: Binder(static, journal_path=os.path.join(work, 'j0.json'), include_group=True,
                                        allow_in_use=True).plan(static_gpus), args.runs)
        print('vfio_bind engine, hgx8 topology, median (min) of %d runs' % args.runs)
        print('  plan, static tree (no FUSE)       %8.1f ms  (%.1f)' % (med, low))
        with fusekernel.simulated(topo, work) as root:
            sysfs = Sysfs(root, timeout=5.0)
            gpus = [str(a) for a in list_addresses(sysfs)
                    if is_gpu_class(PciDevice.read(sysfs, a).class_code) and not PciDevice.read(sysfs, a).boot_vga]
            journal = os.path.join(work, 'journal.json')
            print('  on the FUSE kernel (%d GPU groups):' % len(gpus))

            def plan() -> object:
                return Binder(sysfs, journal_path=journal, include_group=True, allow_in_use=True).plan(gpus)

            med, low = timed(plan, args.runs)
            print('  plan                              %8.1f ms  (%.1f)' % (med, low))

            binds: List[float] = []
            restores: List[float] = []
            for _run in range(args.runs):
                for state, sink in (('present', binds), ('absent', restores)):
                    b = Binder(sysfs, journal_path=journal, state=state, include_group=True, allow_in_use=True)
                    start = time.perf_counter()
                    b.apply(b.plan(gpus))
                    sink.append((time.perf_counter() - start) * 1000.0)
            print('  bind all groups to vfio-pci       %8.1f ms  (%.1f)' % (statistics.median(binds), min(binds)))
            print('  restore all groups                %8.1f ms  (%.1f)' % (statistics.median(restores), min(restores)))
            override = os.path.join(root, 'bus', 'pci', 'devices', gpus[0], 'driver_override')
            med, low = timed(lambda: sysfs.write(override, '\n'), max(args.runs * 4, 20))
            print('  one bounded sysfs write           %8.1f ms  (%.1f)' % (med, low))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
