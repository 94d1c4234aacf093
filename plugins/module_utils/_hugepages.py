# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Hugepages reserved at boot through kernel arguments.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

A reservation is a list of ``{size, count, node?}`` entries (role vfio_host's
``vfio_host_hugepages``).  It is checked against the host as gpu_facts reports it
(``host.numa_nodes``: the nodes, their memory and the page sizes the kernel offers)
and rendered as the kernel's arguments:

* ``hugepagesz=2M hugepages=64``: 64 pages of 2 MiB, spread by the kernel over the nodes;
* ``hugepagesz=1G hugepages=0:4,1:4``: the node form (Linux 5.16 and later), per node;
* ``default_hugepagesz=1G`` when a default size is asked for.

``hugepagesz=`` comes before its ``hugepages=``: the kernel applies a count to the
size named last.  kernel_cmdline keeps one value per key, so one page size per host
is supported: two sizes need the key pair twice.

After a reboot, :func:`shortfall` compares what the kernel reserved (the node's
``nr_hugepages``) with the request: at boot the kernel takes what it finds and
reserves fewer pages, without failing, when memory is short or fragmented.
"""

from __future__ import annotations

import re

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError

#: At most this share of a node's memory (or of the host's, without a node) may be reserved:
#: the kernel reserves at boot before anything else runs, and a host left without memory does not come up.
MAX_SHARE = 0.9
ENTRY_KEYS = ('size', 'count', 'node')

_SIZE_RE = re.compile(r'^([0-9]+)\s*([kmg]?)(?:i?b)?$', re.IGNORECASE)
_UNIT_KIB = {'': 1, 'k': 1, 'm': 1024, 'g': 1024 * 1024}


class HugepagesError(FleetGpuError, ValueError):
    """A reservation that is malformed or that the host cannot hold."""


def size_kib(value: object, what: str) -> int:
    """A page size as KiB: ``2M``, ``1G``, ``2048kB``, ``2048K`` or a number of KiB (2048)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise HugepagesError('%s %r is not a page size (give 2M, 1G or a number of KiB)' % (what, value))
    match = _SIZE_RE.match(str(value).strip())
    if not match or int(match.group(1)) <= 0:
        raise HugepagesError('%s %r is not a page size (give 2M, 1G or a number of KiB)' % (what, value))
    return int(match.group(1)) * _UNIT_KIB[match.group(2).lower()]


def size_text(kib: int) -> str:
    """The kernel's spelling of a page size: 2M, 1G (as memparse reads it)."""
    for unit, factor in (('G', 1024 * 1024), ('M', 1024)):
        if kib % factor == 0:
            return '%d%s' % (kib // factor, unit)
    return '%dK' % kib


def _nodes(facts: dict) -> list[dict]:
    host = facts.get('host') if isinstance(facts, dict) else None
    nodes = (host or {}).get('numa_nodes') or []
    return [n for n in nodes if isinstance(n, dict) and isinstance(n.get('node'), int)]


def _sizes(nodes: list[dict]) -> list[int]:
    return sorted({int(p['size_kib']) for n in nodes for p in (n.get('hugepages') or []) if 'size_kib' in p})


def _int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise HugepagesError('%s %r is not a whole number' % (what, value))
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.match(r'^\s*-?[0-9]+\s*$', value):
        return int(value)
    raise HugepagesError('%s %r is not a whole number' % (what, value))


def plan(entries: object, facts: dict, default_size: object = '',
         option: str = 'vfio_host_hugepages', default_option: str = 'vfio_host_default_hugepagesz') -> dict:
    """Check a reservation against the host and render it.

    Returns ``{'args': [...], 'expected': [{'node', 'size_kib', 'count'}], 'size_kib', 'default_size_kib'}``
    (``node`` None: the kernel spreads the pages over the nodes).  Raises :class:`HugepagesError`
    naming the option and the entry at fault.
    """
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise HugepagesError('%s must be a list of {size, count, node} entries, not %r' % (option, entries))
    nodes = _nodes(facts)
    sizes = _sizes(nodes)
    offered = ', '.join(size_text(s) for s in sizes) or 'none'
    node_ids = [n['node'] for n in nodes]

    def supported(kib: int, what: str, given: object) -> None:
        if kib not in sizes:
            raise HugepagesError('%s %r: this host\'s kernel offers no %s hugepages (it offers: %s; 1G needs a CPU '
                                 'with pdpe1gb)' % (what, given, size_text(kib), offered))

    expected: list[dict] = []
    size = None
    spread = False
    for index, entry in enumerate(entries):
        what = '%s[%d]' % (option, index)
        if not isinstance(entry, dict):
            raise HugepagesError('%s %r is not a {size, count, node} entry' % (what, entry))
        unknown = sorted(str(k) for k in entry if k not in ENTRY_KEYS)
        if unknown:
            raise HugepagesError('%s has unknown key(s) %s (known: %s)' % (what, ', '.join(unknown), ', '.join(ENTRY_KEYS)))
        for key in ('size', 'count'):
            if entry.get(key) is None:
                raise HugepagesError('%s has no %s' % (what, key))
        kib = size_kib(entry['size'], what + '.size')
        supported(kib, what + '.size', entry['size'])
        if size is not None and kib != size:
            raise HugepagesError('%s.size %s differs from the %s of the entries before it: one page size per host is '
                                 'supported (kernel_cmdline keeps one hugepagesz= and one hugepages= argument)'
                                 % (what, size_text(kib), size_text(size)))
        size = kib
        count = _int(entry['count'], what + '.count')
        if count <= 0:
            raise HugepagesError('%s.count %d is not a positive number of pages (remove the entry to reserve none)'
                                 % (what, count))
        node = entry.get('node')
        if node is None:
            if expected:
                raise HugepagesError('%s has no node, but other entries do: give either one entry without node (the '
                                     'kernel spreads the pages over the nodes) or one entry per node' % what)
            spread = True
        else:
            node = _int(node, what + '.node')
            if spread:
                raise HugepagesError('%s names node %d, but an entry before it has no node: give either one entry '
                                     'without node or one entry per node' % (what, node))
            if node not in node_ids:
                raise HugepagesError('%s.node %d is not a NUMA node of this host (it has: %s)'
                                     % (what, node, ', '.join(str(n) for n in node_ids) or 'none reported'))
            if any(e['node'] == node for e in expected):
                raise HugepagesError('%s names node %d a second time' % (what, node))
        expected.append({'node': node, 'size_kib': kib, 'count': count})
    for row in expected:
        memory = [n.get('memory_mib') for n in nodes if row['node'] is None or n['node'] == row['node']]
        sizes_mib = [m for m in memory if isinstance(m, int)]
        if not memory or len(sizes_mib) != len(memory):
            continue
        total_kib = sum(sizes_mib) * 1024
        asked = row['count'] * row['size_kib']
        if asked > total_kib * MAX_SHARE:
            where = 'node %d' % row['node'] if row['node'] is not None else 'the host'
            raise HugepagesError('%s asks for %d pages of %s (%d MiB) on %s, which has %d MiB of memory: more than '
                                 '%d%% of it would be taken at boot before anything else runs, and the host might not '
                                 'come up' % (option, row['count'], size_text(row['size_kib']), asked // 1024, where,
                                              total_kib // 1024, int(MAX_SHARE * 100)))
    args: list[str] = []
    default_kib = None
    if default_size not in (None, ''):
        default_kib = size_kib(default_size, default_option)
        supported(default_kib, default_option, default_size)
        args.append('default_hugepagesz=%s' % size_text(default_kib))
    if expected and size is not None:
        args.append('hugepagesz=%s' % size_text(size))
        if spread:
            args.append('hugepages=%d' % expected[0]['count'])
        else:
            expected.sort(key=lambda r: r['node'])
            args.append('hugepages=' + ','.join('%d:%d' % (r['node'], r['count']) for r in expected))
    return {'args': args, 'expected': expected, 'size_kib': size, 'default_size_kib': default_kib}


def reserved(facts: dict, kib: int, node: int | None) -> int | None:
    """Pages of ``kib`` the kernel holds on ``node`` (all nodes for None); None when not reported."""
    counts = []
    for entry in _nodes(facts):
        if node is not None and entry['node'] != node:
            continue
        for pages in entry.get('hugepages') or []:
            if int(pages.get('size_kib', 0)) == kib:
                counts.append(int(pages.get('total', 0)))
    return sum(counts) if counts else None


def shortfall(facts: dict, expected: list[dict]) -> list[str]:
    """What the kernel reserved short of the request, one sentence each (empty: all there)."""
    problems = []
    for row in expected or []:
        have = reserved(facts, int(row['size_kib']), row.get('node'))
        where = 'node %d' % row['node'] if row.get('node') is not None else 'the host (all nodes)'
        size = size_text(int(row['size_kib']))
        if have is None:
            problems.append('%s reports no %s hugepages at all (asked for %d)' % (where, size, row['count']))
        elif have < int(row['count']):
            problems.append('%s has %d of the %d %s hugepages asked for: at boot the kernel found no more free '
                            'memory in pages of that size (memory short or fragmented). Lower the count, or use '
                            'the node form so that each node is asked only what it holds'
                            % (where, have, row['count'], size))
    return problems
