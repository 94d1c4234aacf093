# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The wiring a VM with passed-through GPUs needs to run at full speed, computed from
gpu_facts: vCPUs and the emulator pinned to CPUs of the GPUs' NUMA node, guest memory bound
to that node (strict or preferred), hugepage backing checked against the node's free pages,
and a 64-bit MMIO window large enough for every BAR of the VM's GPUs.

PRIVATE to the fleetgpu.passthrough collection: not a public API.

:func:`plan` takes the ``host`` and ``gpus`` of the ``gpu_passthrough`` fact and one VM's
request, and returns the plan or raises :class:`WiringError` naming what is short. It reads
nothing itself, so it runs on the controller as well as on the host.
"""
from __future__ import annotations

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._topology import format_cpulist

MIB = 1 << 20
#: OVMF's default 64-bit aperture (32 GiB): a window is never made smaller than this.
MIN_MMIO64_MIB = 32 * 1024
#: Room left for the guest's other devices and for BAR alignment, as a fraction of the BARs.
HEADROOM = 0.25
NUMA_MODES = ('strict', 'preferred')
#: The keys of a VM's ``wiring`` request (libvirt_hostdev, libvirt_gpu_domains[], fleetgpu_vms[]).
WIRING_KEYS = ('pin_cpus', 'numa_mode', 'hugepages', 'mmio64', 'allow_spread', 'guest_numa')


def check_wiring_keys(value: object, where: str) -> dict:
    """``value`` as a wiring request (a mapping of known keys), or WiringError naming ``where``."""
    if not isinstance(value, dict):
        raise WiringError('%s must be a mapping of %s, got %r' % (where, ', '.join(WIRING_KEYS), value))
    unknown = sorted(str(k) for k in value if k not in WIRING_KEYS)
    if unknown:
        raise WiringError('%s: unknown key(s) %s (known: %s)' % (where, ', '.join(unknown), ', '.join(WIRING_KEYS)))
    return dict(value)


class WiringError(FleetGpuError, ValueError):
    """A VM's wiring cannot be satisfied on this host (what is short, and by how much)."""


def _next_power_of_two(value: int) -> int:
    power = 1
    while power < value:
        power <<= 1
    return power


def mmio64_window_mib(gpus: list[dict], headroom: float = HEADROOM) -> int:
    """The 64-bit MMIO window (MiB) for these GPUs: the sum of their memory BARs plus headroom,
    rounded up to a power of two (so that every naturally aligned BAR fits) and never below
    OVMF's 32 GiB default."""
    total = sum(int(g.get('bar_bytes') or 0) for g in gpus)
    largest = max([int(b['bytes']) for g in gpus for b in g.get('bars') or []] or [0])
    need = max(int(total * (1 + headroom)), largest)
    return max(MIN_MMIO64_MIB, _next_power_of_two(max(need, 1)) // MIB)


def _node_of(host: dict, gpus: list[dict], allow_spread: bool) -> int | None:
    nodes = host.get('numa_nodes') or []
    known = sorted({g['numa_node'] for g in gpus if g.get('numa_node') is not None})
    if len(known) > 1 and not allow_spread:
        raise WiringError('the GPUs %s sit on NUMA nodes %s: one VM cannot have its memory and vCPUs local to all '
                          'of them (place GPUs of one node, or allow the spread)'
                          % (', '.join(g['address'] for g in gpus), ', '.join(map(str, known))))
    if known:
        counts = {n: sum(1 for g in gpus if g.get('numa_node') == n) for n in known}
        return max(known, key=lambda n: (counts[n], -n))
    # the kernel says -1 on a one-node host
    return nodes[0]['node'] if len(nodes) == 1 else None


def plan(host: dict, gpus: list[dict], vcpus: int, memory_mib: int, numa_mode: str | None = 'strict',
         hugepage_kib: int | None = None, allow_spread: bool = False, headroom: float = HEADROOM,
         held_pages: int = 0, held_mib: int = 0) -> dict:
    """The wiring of one VM: ``node``, ``vcpu_pins`` (vCPU -> host CPU), ``emulator_cpus``,
    ``numatune`` (``{mode, nodeset}`` or None), ``hugepages`` (``{size_kib, pages}`` or None),
    ``mmio64_mib``, ``pcihole64_kib`` (the same window, for SeaBIOS guests) and
    ``ovmf_fw_cfg`` (the OVMF setting for UEFI guests).

    ``held_pages`` / ``held_mib``: hugepages and memory of the node that the VM itself already
    holds (it runs with this wiring), counted as free for it so that a second run agrees."""
    if vcpus < 1 or memory_mib < 1:
        raise WiringError('vcpus and memory_mib must be positive (got %r and %r)' % (vcpus, memory_mib))
    if numa_mode is not None and numa_mode not in NUMA_MODES:
        raise WiringError('numa_mode must be one of %s, not %r' % (', '.join(NUMA_MODES), numa_mode))
    node = _node_of(host, gpus, allow_spread)
    by_node = {n['node']: n for n in host.get('numa_nodes') or []}
    info = by_node.get(node) if node is not None else None
    result: dict = {'node': node, 'vcpu_pins': None, 'emulator_cpus': None, 'numatune': None, 'hugepages': None}
    if info is not None:
        cpus = list(info['cpus'])
        if len(cpus) < vcpus:
            raise WiringError('NUMA node %s has %d CPUs (%s), fewer than the %d vCPUs asked for'
                              % (node, len(cpus), format_cpulist(cpus), vcpus))
        # vCPUs one to one on the node's CPUs, from the top (CPU 0 keeps the host's housekeeping);
        # the emulator threads on the node's other CPUs, or on all of them when none are left
        pinned = cpus[-vcpus:]
        result['vcpu_pins'] = {str(v): c for v, c in enumerate(pinned)}
        rest = [c for c in cpus if c not in pinned]
        result['emulator_cpus'] = format_cpulist(rest or cpus)
        if numa_mode is not None:
            free = info.get('memory_free_mib')
            if free is not None:
                free += held_mib
            if numa_mode == 'strict' and hugepage_kib is None and free is not None and free < memory_mib:
                raise WiringError('NUMA node %s has %d MiB free, less than the %d MiB the VM needs bound to it (strict)'
                                  % (node, free, memory_mib))
            result['numatune'] = {'mode': numa_mode, 'nodeset': str(node)}
    if hugepage_kib is not None:
        if (memory_mib * 1024) % hugepage_kib:
            raise WiringError('%d MiB of memory is not a whole number of %d KiB hugepages' % (memory_mib, hugepage_kib))
        pages = memory_mib * 1024 // hugepage_kib
        if info is not None:
            sizes = {p['size_kib']: p for p in info.get('hugepages') or []}
            if hugepage_kib not in sizes:
                raise WiringError('the host has no %d KiB hugepages (sizes: %s)'
                                  % (hugepage_kib, ', '.join(str(s) for s in sorted(sizes)) or 'none'))
            free_pages = int(sizes[hugepage_kib]['free']) + held_pages
            if free_pages < pages:
                raise WiringError('NUMA node %s has %d free %d KiB hugepages, fewer than the %d the VM needs '
                                  '(%d MiB); reserve %d more' % (node, free_pages, hugepage_kib, pages, memory_mib,
                                                                 pages - free_pages))
        result['hugepages'] = {'size_kib': hugepage_kib, 'pages': pages}
    window = mmio64_window_mib(gpus, headroom)
    result['mmio64_mib'] = window
    result['pcihole64_kib'] = window * 1024
    result['ovmf_fw_cfg'] = {'name': 'opt/ovmf/X-PciMmio64Mb', 'value': str(window)}
    return result
