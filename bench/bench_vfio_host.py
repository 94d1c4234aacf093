"""Print how long the vfio_host planning takes on simulated hosts.

Usage: .venv/bin/python bench/bench_vfio_host.py [--runs N]

Per topology (the 8-GPU HGX-like host and a generated host with 16 GPUs and about 300 PCI
functions): the selection and early-binding decision over the gpu_facts of the tree, the
plan of the modprobe.d / initramfs files against an empty directory root, and the GRUB drop-in
plan.  No command runs.  Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

# the collection from this checkout on sys.path, before it is imported
import _pyroot  # noqa: F401  # pylint: disable=unused-import

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import vfio_host_config as _vfio_host_apply  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import backend as boot_backend  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import gather  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import Runner  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._initramfs import backend as gen_backend  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._gpu_selection import decide  # noqa: E402
from tests.sim import simkernel  # noqa: E402


class NoCommands(Runner):
    def have(self, program: str) -> bool:
        return False

    def run(self, argv: list, check: bool = True) -> tuple:
        return 0, '', ''


def median_ms(func, runs: int) -> float:
    times = []
    for _run in range(runs):
        start = time.perf_counter()
        func()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument('--runs', type=int, default=20)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix='bench-vfio-host-')
    try:
        print('%-10s %6s %12s %12s %12s' % ('topology', 'GPUs', 'decide ms', 'files ms', 'grub ms'))
        for name in ('hgx8', 'generated16'):
            sysfs = Sysfs(simkernel.materialize(name, os.path.join(tmp, name)))
            facts = gather(sysfs)
            gpus = [g for g in facts['gpus'] if not g.get('boot_vga')]
            selectors = [{'address': g['address']} for g in gpus]
            root = os.path.join(tmp, name + '-root')
            os.makedirs(os.path.join(root, 'etc', 'default'))
            with open(os.path.join(root, 'etc', 'default', 'grub'), 'w') as handle:
                handle.write('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n')
            decision = decide(facts, selectors, sysfs)
            generator = gen_backend('initramfs-tools', root, NoCommands())
            grub = boot_backend('grub', root, NoCommands())
            change = CmdlineChange(decision.cmdline_add, decision.cmdline_remove)
            t_decide = median_ms(lambda: decide(facts, selectors, sysfs), args.runs)
            t_files = median_ms(lambda: _vfio_host_apply.plan(root, generator, decision, False, '6.1.0', False), args.runs)
            t_grub = median_ms(lambda: grub.plan(change), args.runs)
            print('%-10s %6d %12.2f %12.2f %12.2f' % (name, len(gpus), t_decide, t_files, t_grub))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
