# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Where a GPU sits and what it needs, as the kernel shows it in sysfs: its memory BARs (from
``resource``), its PCIe path (root complex, root port, bridges) and the host's NUMA nodes
(CPUs, memory, hugepages per size). Read-only; every reader tolerates a missing file, as a
kernel built without NUMA or an older kernel leaves them out.

PRIVATE to the fleetgpu.passthrough collection: not a public API.
"""
from __future__ import annotations

import re

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress, PciAddressError, PciDevice
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs

# include/linux/ioport.h
IORESOURCE_IO = 0x00000100
IORESOURCE_MEM = 0x00000200
IORESOURCE_PREFETCH = 0x00002000
IORESOURCE_MEM_64 = 0x00100000

#: Lines 0-5 of ``resource`` are the standard BARs (6 is the expansion ROM, then the SR-IOV
#: BARs and, on bridges, the windows).
STANDARD_BARS = 6

_ROOT_BUS = re.compile(r'^pci([0-9a-f]{4,5}:[0-9a-f]{2})$')
_NODE = re.compile(r'^node([0-9]+)$')
_HUGEPAGES = re.compile(r'^hugepages-([0-9]+)kB$')


class CpuListError(FleetGpuError, ValueError):
    """A CPU list that is not the kernel's ``0-3,8,10-11`` form."""


def parse_cpulist(text: str | None, strict: bool = True) -> list[int]:
    """The kernel's CPU lists and libvirt's cpusets and nodesets: ``0-3,^2,8`` -> ``[0, 1, 3, 8]``
    (sorted, no repeats; ``^`` excludes, as libvirt allows); empty or None -> ``[]``.

    A malformed part raises :class:`CpuListError`, or is skipped when not ``strict`` (a nodeset
    read from a domain someone else wrote).
    """
    include: set[int] = set()
    exclude: set[int] = set()
    for part in (text or '').replace(' ', '').strip().split(','):
        if not part:
            continue
        target = include
        if part.startswith('^'):
            target, part = exclude, part[1:]
        first, sep, last = part.partition('-')
        if not first.isdigit() or (sep and not last.isdigit()) or (sep and int(last) < int(first)):
            if strict:
                raise CpuListError('invalid CPU list %r (at %r)' % (text, part))
            continue
        target.update(range(int(first), int(last if sep else first) + 1))
    return sorted(include - exclude)


def format_cpulist(cpus: list[int]) -> str:
    """``[0, 1, 2, 3, 8]`` -> ``0-3,8`` (the form libvirt and the kernel take)."""
    out: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else '%d-%d' % (ordered[i], ordered[j]))
        i = j + 1
    return ','.join(out)


def read_bars(sysfs: Sysfs, dev: PciDevice) -> list[dict]:
    """The device's memory BARs: ``index``, ``bytes``, ``prefetchable``, ``mem64``.

    I/O-port BARs and unused slots are left out; a 64-bit BAR occupies two slots, and the
    kernel lists it once, at its first index.
    """
    text = sysfs.read(dev.attr('resource'), default='')
    bars = []
    for index, line in enumerate(text.splitlines()[:STANDARD_BARS]):
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            start, end, flags = (int(p, 16) for p in parts)
        except ValueError:
            continue
        if not flags & IORESOURCE_MEM or end <= start:
            continue
        bars.append({
            'index': index,
            'bytes': end - start + 1,
            'prefetchable': bool(flags & IORESOURCE_PREFETCH),
            'mem64': bool(flags & IORESOURCE_MEM_64),
        })
    return bars


def pci_path(sysfs: Sysfs, dev: PciDevice) -> dict:
    """Where the device hangs: ``root_complex`` (``0000:00``), ``root_port`` (the first bridge
    below the root complex, or None for a device on the root bus) and ``upstream`` (every
    bridge from the root port down to the device's own bus), from the device's sysfs path."""
    target = sysfs.readlink(dev.path) or ''
    parts = [p for p in target.split('/') if p]
    root = None
    chain: list[str] = []
    for part in parts:
        m = _ROOT_BUS.match(part)
        if m:
            root, chain = m.group(1), []
            continue
        try:
            chain.append(str(PciAddress.parse(part)))
        except PciAddressError:
            continue
    upstream = chain[:-1] if chain and chain[-1] == str(dev.address) else chain
    return {
        'root_complex': root,
        'root_port': upstream[0] if upstream else None,
        'upstream': upstream,
    }


def _meminfo_kib(text: str, key: str) -> int | None:
    # "Node 0 MemTotal:       16318340 kB"
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] == key + ':' and words[3].isdigit():
            return int(words[3])
    return None


def numa_nodes(sysfs: Sysfs) -> list[dict]:
    """The host's NUMA nodes: ``node``, ``cpus``, ``memory_mib``, ``memory_free_mib`` and
    ``hugepages`` (per page size: ``size_kib``, ``total``, ``free``), sorted by node."""
    base = sysfs.sys('devices', 'system', 'node')
    nodes = []
    for name in sysfs.listdir(base):
        m = _NODE.match(name)
        if not m:
            continue
        path = '%s/%s' % (base, name)
        try:
            cpus = parse_cpulist(sysfs.read(path + '/cpulist', default=''))
        except CpuListError:
            cpus = []
        meminfo = sysfs.read(path + '/meminfo', default='')
        total, free = _meminfo_kib(meminfo, 'MemTotal'), _meminfo_kib(meminfo, 'MemFree')
        pages = []
        for sub in sysfs.listdir(path + '/hugepages'):
            hm = _HUGEPAGES.match(sub)
            if not hm:
                continue
            hp = '%s/hugepages/%s' % (path, sub)
            pages.append({
                'size_kib': int(hm.group(1)),
                'total': sysfs.read_int(hp + '/nr_hugepages', 10, default=0),
                'free': sysfs.read_int(hp + '/free_hugepages', 10, default=0),
            })
        nodes.append({
            'node': int(m.group(1)),
            'cpus': cpus,
            'memory_mib': total // 1024 if total is not None else None,
            'memory_free_mib': free // 1024 if free is not None else None,
            'hugepages': sorted(pages, key=lambda p: p['size_kib']),
        })
    return sorted(nodes, key=lambda n: n['node'])
