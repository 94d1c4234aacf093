# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Simulated kernel trees for tests: a declarative host topology -> a static tree
shaped like the kernel's ``/sys``, ``/proc``, ``/dev`` and ``/lib/modules``.

A topology (YAML file under ``tests/sim/topologies/`` or a dict) says::

    cpu:     {vendor: GenuineIntel | AuthenticAMD, flags: [...], count: 4}
    kernel:  {release, cmdline, builtin: [modules.builtin lines],
              available: [paths of .ko files under /lib/modules/<release>/],
              loaded: [module names] (default: the drivers in use)}
    iommu:   {type: intel | amd | none, interrupt_remapping: bool, units: 1}
    secure_boot: true | false | null       (null: no efivars)
    pci:     list of functions; a bridge lists ``children``
    processes: [{pid, comm, cmdline: [argv...], fds: {N: /dev/...}}]
    mdev_parents: [{name: mbochs, types: [like mdev_types]}]  (virtual parents, /sys/class/mdev_bus/<name>)
    numa:    [{cpus: '0-31', memory_mib, memory_free_mib, hugepages: {2048: {total, free}}}]
             (node N is the Nth entry; default one node with every CPU and 16 GiB)

Each PCI function: ``address`` (``00:02.0`` or ``0000:00:02.0``), ``vendor``,
``device``, ``subsystem_vendor``, ``subsystem_device``, ``class`` (24-bit,
``0x030000``), ``revision``, ``driver`` (bound now, or null),
``default_driver`` (what a probe would bind; default: ``driver``),
``boot_vga``, ``numa_node``, ``reset_method`` (list or null), ``sriov``
``{totalvfs, numvfs, offset, stride, vf_device, vf_driver}``, ``mdev_types``
(list of names or of ``{name, description, available_instances, device_api}``),
``iommu_group`` (int or ``auto``), ``drm`` (list such as ``[card1, renderD128]``
or ``auto``), ``stuck`` (its ``driver_override`` and ``sriov_numvfs`` become
FIFOs: any open blocks, as a device lock held by a stuck probe does),
``acs`` (bridges: false puts everything below into the bridge's group),
``children`` (bridges), ``mdev_types`` entries may carry ``type_name`` (the
human name in the type's ``name`` file), ``bars`` (memory BARs: a size such as ``16M`` or
``{size, index, prefetchable, mem64, io}``; written to ``resource`` at aligned
addresses, a 64-bit BAR taking two slots).

:func:`materialize` writes the tree and returns ``dest/sys``, the
``sysfs_root`` to pass to the modules.  ``dest/.sim/devices.json`` records,
per address, what a behaving layer needs (default driver, ids, path).

CLI: ``python tests/sim/simkernel.py materialize <topology-name-or-path> <dest>``
     ``python tests/sim/simkernel.py list``
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
TOPOLOGY_DIR = os.path.join(HERE, 'topologies')

EFI_GLOBAL_GUID = '8be4df61-93ca-11d2-aa0d-00e098032b8c'

# Drivers that expose DRM nodes (``drm/cardN`` and ``renderDN``) when bound.
DRM_DRIVERS = frozenset(['i915', 'xe', 'amdgpu', 'radeon', 'nouveau', 'bochs-drm', 'bochs', 'qxl',
                         'virtio-pci', 'ast', 'mgag200', 'nvidia'])
# Drivers that are part of the core kernel, never listed in /proc/modules.
CORE_DRIVERS = frozenset(['pcieport', 'shpchp'])

INTEL_CAP = 'd2008c40660462'
INTEL_ECAP_IR = 'f050da'      # bit 3 (IR) set
INTEL_ECAP_NO_IR = 'f050d2'   # bit 3 clear

Topology = Dict[str, Any]
Node = Dict[str, Any]


class TopologyError(ValueError):
    """A topology file that cannot be materialized."""


# ----------------------------------------------------------------------------- loading
def topology_names() -> List[str]:
    names = [f[:-4] for f in os.listdir(TOPOLOGY_DIR) if f.endswith('.yml')]
    return sorted(names + list(GENERATORS))


def load_topology(spec: Any) -> Topology:
    """A topology from a dict, a name under topologies/, a generator name or a path."""
    if isinstance(spec, dict):
        return copy.deepcopy(spec)
    spec = str(spec)
    if spec in GENERATORS:
        return GENERATORS[spec]()
    path = spec if os.path.exists(spec) else os.path.join(TOPOLOGY_DIR, spec + '.yml')
    if not os.path.exists(path):
        raise TopologyError('unknown topology %r (known: %s)' % (spec, ', '.join(topology_names())))
    with open(path, 'r', encoding='utf-8') as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise TopologyError('topology %s is not a mapping' % path)
    return data


def norm_address(text: Any) -> str:
    text = str(text).strip().lower()
    if text.count(':') == 1:
        text = '0000:' + text
    parts = text.replace('.', ':').split(':')
    if len(parts) != 4:
        raise TopologyError('bad PCI address %r in topology' % text)
    return '%04x:%02x:%02x.%x' % tuple(int(p, 16) for p in parts)


def _hex_id(value: Any, width: int = 4) -> str:
    if isinstance(value, int):
        return '%0*x' % (width, value)
    text = str(value).lower()
    if text.startswith('0x'):
        text = text[2:]
    return text.zfill(width)


def _class(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(str(value), 16)


def iter_nodes(nodes: List[Node]) -> Iterator[Node]:
    for node in nodes:
        yield node
        yield from iter_nodes(node.get('children') or [])


# ----------------------------------------------------------------------------- writing
class _Writer:
    def __init__(self, dest: str) -> None:
        self.dest = os.path.abspath(dest)
        self.sys = os.path.join(self.dest, 'sys')

    def path(self, *parts: str) -> str:
        return os.path.join(self.dest, *parts)

    def mkdir(self, path: str) -> str:
        os.makedirs(path, exist_ok=True)
        return path

    def write(self, path: str, text: str) -> None:
        self.mkdir(os.path.dirname(path))
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write(text)

    def write_bytes(self, path: str, data: bytes) -> None:
        self.mkdir(os.path.dirname(path))
        with open(path, 'wb') as handle:
            handle.write(data)

    def fifo(self, path: str) -> None:
        self.mkdir(os.path.dirname(path))
        if os.path.lexists(path):
            os.unlink(path)
        os.mkfifo(path, 0o644)

    def link(self, path: str, target_abs: str) -> None:
        """A relative symlink at ``path`` pointing to ``target_abs``, as the kernel makes them."""
        self.mkdir(os.path.dirname(path))
        rel = os.path.relpath(target_abs, os.path.dirname(path))
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(rel, path)

    def abs_link(self, path: str, target: str) -> None:
        self.mkdir(os.path.dirname(path))
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(target, path)


class _Function:
    """One PCI function after defaults and auto values are resolved."""

    def __init__(self, node: Node, parent: Optional['_Function'], root_dir: str) -> None:
        self.node = node
        self.parent = parent
        self.address = norm_address(node['address'])
        self.vendor = _hex_id(node.get('vendor', '8086'))
        self.device = _hex_id(node.get('device', '0000'))
        self.subsystem_vendor = _hex_id(node.get('subsystem_vendor', node.get('vendor', '8086')))
        self.subsystem_device = _hex_id(node.get('subsystem_device', '0000'))
        self.class_code = _class(node.get('class', 0x000000))
        self.revision = int(node.get('revision', 0xa1))
        self.driver: Optional[str] = node.get('driver')
        self.default_driver: Optional[str] = node.get('default_driver', self.driver)
        self.boot_vga = bool(node.get('boot_vga', False))
        self.numa_node = int(node.get('numa_node', -1))
        self.reset_method: Optional[List[str]] = node.get('reset_method')
        self.sriov: Optional[Dict[str, Any]] = node.get('sriov')
        self.mdev_types = node.get('mdev_types') or []
        self.bars = [_bar(b, i) for i, b in enumerate(node.get('bars') or [])]
        self.group_spec = node.get('iommu_group', 'auto')
        self.group: Optional[int] = None
        self.stuck = bool(node.get('stuck', False))
        self.acs = node.get('acs', True)
        self.drm = node.get('drm', 'auto')
        self.physfn: Optional['_Function'] = None
        self.vfs: List['_Function'] = []
        self.children: List['_Function'] = []
        base = parent.dir if parent else root_dir
        self.dir = os.path.join(base, self.address)

    @property
    def is_bridge(self) -> bool:
        return (self.class_code >> 8) in (0x0604, 0x0609)

    @property
    def slot_key(self) -> str:
        return self.address[:-2]


_SIZE_UNITS = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}


def _size(value: Any) -> int:
    """``16M`` / ``64G`` / ``4096`` -> bytes."""
    text = str(value).strip().upper().rstrip('B').rstrip('I')
    unit = _SIZE_UNITS.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _SIZE_UNITS else text
    if not number.isdigit() or int(number) <= 0:
        raise TopologyError('invalid BAR size %r' % value)
    return int(number) * unit


def _bar(spec: Any, position: int) -> Dict[str, Any]:
    """A BAR: ``{size, index, prefetchable, mem64, io}`` (or just a size); the index defaults
    to the next free slot, a 64-bit BAR using two."""
    spec = spec if isinstance(spec, dict) else {'size': spec}
    size = _size(spec['size'])
    if size & (size - 1):
        raise TopologyError('BAR size %r is not a power of two' % spec['size'])
    return {'size': size, 'index': spec.get('index'), 'prefetchable': bool(spec.get('prefetchable', False)),
            'mem64': bool(spec.get('mem64', size > (1 << 31))), 'io': bool(spec.get('io', False)), 'position': position}


def _resource_lines(fn: '_Function', alloc: Dict[str, int]) -> str:
    """The 13 lines of ``resource`` (start end flags), with the function's BARs at addresses
    aligned to their size, as the kernel assigns them."""
    lines = ['0x%016x 0x%016x 0x%016x' % (0, 0, 0)] * 13
    slot = 0
    for spec in fn.bars:
        index = spec['index'] if spec['index'] is not None else slot
        if index >= 6:
            raise TopologyError('%s: BAR index %d out of range' % (fn.address, index))
        size = spec['size']
        if spec['io']:
            flags = 0x40101
            key = 'io'
        else:
            flags = 0x40200 | (0x2000 | 0x8 if spec['prefetchable'] else 0) | (0x100000 | 0x4 if spec['mem64'] else 0)
            key = 'mem64' if spec['mem64'] else 'mem32'
        start = (alloc[key] + size - 1) & ~(size - 1)
        alloc[key] = start + size
        lines[index] = '0x%016x 0x%016x 0x%016x' % (start, start + size - 1, flags)
        slot = index + (2 if spec['mem64'] and not spec['io'] else 1)
    return '\n'.join(lines) + '\n'


def _build_functions(topology: Topology, sys_root: str) -> List[_Function]:
    functions: List[_Function] = []

    def visit(nodes: List[Node], parent: Optional[_Function], root_dir: str) -> None:
        for node in nodes:
            fn = _Function(node, parent, root_dir)
            functions.append(fn)
            if parent is not None:
                parent.children.append(fn)
            visit(node.get('children') or [], fn, root_dir)
            sriov = fn.sriov or {}
            numvfs = int(sriov.get('numvfs') or 0)
            if numvfs:
                _add_vfs(fn, sriov, numvfs, functions, root_dir)

    for node in topology.get('pci') or []:
        addr = norm_address(node['address'])
        root_dir = os.path.join(sys_root, 'devices', 'pci%s' % addr[:7])
        visit([node], None, root_dir)
    seen: Dict[str, _Function] = {}
    for fn in functions:
        if fn.address in seen:
            raise TopologyError('PCI address %s appears twice in the topology' % fn.address)
        seen[fn.address] = fn
    return functions


def _add_vfs(pf: _Function, sriov: Dict[str, Any], numvfs: int, functions: List[_Function], root_dir: str) -> None:
    offset = int(sriov.get('offset', 1))
    stride = int(sriov.get('stride', 1))
    dom, bus, rest = pf.address.split(':')
    slot, func = rest.split('.')
    devfn = (int(slot, 16) << 3) | int(func, 16)
    bus_n = int(bus, 16)
    for index in range(numvfs):
        vf_devfn = devfn + offset + index * stride
        vf_bus = bus_n + (vf_devfn >> 8)
        vf_devfn &= 0xff
        node = {
            'address': '%s:%02x:%02x.%x' % (dom, vf_bus, vf_devfn >> 3, vf_devfn & 7),
            'vendor': pf.vendor,
            'device': sriov.get('vf_device', pf.device),
            'subsystem_vendor': pf.subsystem_vendor,
            'subsystem_device': pf.subsystem_device,
            'class': pf.class_code,
            'driver': sriov.get('vf_driver'),
            'numa_node': pf.numa_node,
            'reset_method': ['flr'],
            'drm': [],
        }
        vf = _Function(node, pf.parent, root_dir)
        vf.physfn = pf
        pf.vfs.append(vf)
        functions.append(vf)


def _assign_groups(functions: List[_Function], iommu_type: str) -> None:
    if iommu_type == 'none':
        return
    used = set(int(f.group_spec) for f in functions if f.group_spec not in ('auto', None))
    counter = [0]
    by_key: Dict[Tuple[str, str], int] = {}

    def next_group() -> int:
        while counter[0] in used:
            counter[0] += 1
        used.add(counter[0])
        return counter[0]

    def non_acs_ancestor(fn: _Function) -> Optional[_Function]:
        found = None
        cur = fn.parent
        while cur is not None:
            if not cur.acs:
                found = cur
            cur = cur.parent
        return found

    for fn in functions:
        if fn.group_spec is None:
            continue
        if fn.group_spec != 'auto':
            fn.group = int(fn.group_spec)
            continue
        anc = non_acs_ancestor(fn)
        if fn.is_bridge and not fn.acs and anc is None:
            key = ('bridge', fn.address)
        elif anc is not None:
            key = ('bridge', anc.address)
        elif fn.node.get('isolated') or fn.physfn is not None:
            key = ('fn', fn.address)
        else:
            key = ('slot', fn.slot_key)
        if key not in by_key:
            by_key[key] = next_group()
        fn.group = by_key[key]


def _modalias(fn: _Function) -> str:
    return 'pci:v0000%sd0000%ssv0000%ssd0000%sbc%02Xsc%02Xi%02X' % (
        fn.vendor.upper(), fn.device.upper(), fn.subsystem_vendor.upper(), fn.subsystem_device.upper(),
        fn.class_code >> 16, (fn.class_code >> 8) & 0xff, fn.class_code & 0xff)


def _write_function(w: _Writer, fn: _Function, drm_nodes: List[str], local_cpus: str = '0-3',
                    alloc: Optional[Dict[str, int]] = None) -> None:
    d = w.mkdir(fn.dir)
    attrs = {
        'vendor': '0x%s' % fn.vendor,
        'device': '0x%s' % fn.device,
        'subsystem_vendor': '0x%s' % fn.subsystem_vendor,
        'subsystem_device': '0x%s' % fn.subsystem_device,
        'class': '0x%06x' % fn.class_code,
        'revision': '0x%02x' % fn.revision,
        'numa_node': str(fn.numa_node),
        'enable': '1' if fn.driver else '0',
        'irq': '0',
        'local_cpulist': local_cpus,
        'msi_bus': '1',
        'd3cold_allowed': '1',
        'broken_parity_status': '0',
        'modalias': _modalias(fn),
    }
    uevent = ['PCI_CLASS=%X' % fn.class_code, 'PCI_ID=%s:%s' % (fn.vendor.upper(), fn.device.upper()),
              'PCI_SUBSYS_ID=%s:%s' % (fn.subsystem_vendor.upper(), fn.subsystem_device.upper()),
              'PCI_SLOT_NAME=%s' % fn.address, 'MODALIAS=%s' % _modalias(fn)]
    if fn.driver:
        uevent.insert(0, 'DRIVER=%s' % fn.driver)
    attrs['uevent'] = '\n'.join(uevent)
    if (fn.class_code >> 8) == 0x0300:
        attrs['boot_vga'] = '1' if fn.boot_vga else '0'
    if fn.reset_method:
        attrs['reset_method'] = ' '.join(fn.reset_method)
    for name, value in attrs.items():
        w.write(os.path.join(d, name), value + '\n')
    for name in ('remove', 'rescan', 'reset') if fn.reset_method else ('remove', 'rescan'):
        w.write(os.path.join(d, name), '')
    w.write_bytes(os.path.join(d, 'config'), _config_space(fn))
    w.write(os.path.join(d, 'resource'), _resource_lines(fn, alloc if alloc is not None else
                                                         {'io': 0x1000, 'mem32': 0xe0000000, 'mem64': 0x38000000000}))
    if fn.stuck:
        w.fifo(os.path.join(d, 'driver_override'))
    else:
        w.write(os.path.join(d, 'driver_override'), '(null)\n')
    w.link(os.path.join(d, 'subsystem'), os.path.join(w.sys, 'bus', 'pci'))
    if fn.driver:
        w.link(os.path.join(d, 'driver'), os.path.join(w.sys, 'bus', 'pci', 'drivers', fn.driver))
    if fn.group is not None:
        w.link(os.path.join(d, 'iommu_group'), os.path.join(w.sys, 'kernel', 'iommu_groups', str(fn.group)))
    sriov = fn.sriov
    if sriov is not None:
        vals = {
            'sriov_totalvfs': str(int(sriov.get('totalvfs') or 0)),
            'sriov_offset': str(int(sriov.get('offset', 1))),
            'sriov_stride': str(int(sriov.get('stride', 1))),
            'sriov_vf_device': _hex_id(sriov.get('vf_device', fn.device)),
            'sriov_drivers_autoprobe': '1',
        }
        for name, value in vals.items():
            w.write(os.path.join(d, name), value + '\n')
        if fn.stuck:
            w.fifo(os.path.join(d, 'sriov_numvfs'))
        else:
            w.write(os.path.join(d, 'sriov_numvfs'), '%d\n' % len(fn.vfs))
        for index, vf in enumerate(fn.vfs):
            w.link(os.path.join(d, 'virtfn%d' % index), vf.dir)
    if fn.physfn is not None:
        w.link(os.path.join(d, 'physfn'), fn.physfn.dir)
    _write_mdev_types(w, d, fn.mdev_types)
    if fn.mdev_types:
        w.link(os.path.join(w.sys, 'class', 'mdev_bus', fn.address), d)
    for node in drm_nodes:
        ndir = w.mkdir(os.path.join(d, 'drm', node))
        minor = int(node[len('renderD'):]) if node.startswith('renderD') else int(node[len('card'):])
        w.write(os.path.join(ndir, 'dev'), '226:%d\n' % minor)
        w.write(os.path.join(ndir, 'uevent'), 'MAJOR=226\nMINOR=%d\nDEVNAME=dri/%s\n' % (minor, node))
        w.link(os.path.join(ndir, 'device'), d)
        w.link(os.path.join(w.sys, 'class', 'drm', node), ndir)
        w.write(w.path('dev', 'dri', node), '')
    if fn.is_bridge:
        secondary = sorted(int(c.address[5:7], 16) for c in fn.children) or [0]
        w.write(os.path.join(d, 'secondary_bus_number'), '%d\n' % secondary[0])
        w.write(os.path.join(d, 'subordinate_bus_number'), '%d\n' % secondary[-1])


def _write_mdev_types(w: _Writer, d: str, types: List[Any]) -> None:
    """A parent's ``mdev_supported_types/<id>/`` (``name`` is the human name: ``type_name``, else the description)."""
    for mdev in types:
        if isinstance(mdev, str):
            mdev = {'name': mdev}
        tdir = os.path.join(d, 'mdev_supported_types', mdev['name'])
        w.write(os.path.join(tdir, 'name'), '%s\n' % mdev.get('type_name', mdev.get('description', mdev['name'])))
        w.write(os.path.join(tdir, 'description'), '%s\n' % mdev.get('description', ''))
        w.write(os.path.join(tdir, 'available_instances'), '%d\n' % int(mdev.get('available_instances', 1)))
        w.write(os.path.join(tdir, 'device_api'), '%s\n' % mdev.get('device_api', 'vfio-pci'))
        w.write(os.path.join(tdir, 'create'), '')
        w.mkdir(os.path.join(tdir, 'devices'))


def _config_space(fn: _Function) -> bytes:
    data = bytearray(256)
    data[0:2] = int(fn.vendor, 16).to_bytes(2, 'little')
    data[2:4] = int(fn.device, 16).to_bytes(2, 'little')
    data[8] = fn.revision
    data[9:12] = fn.class_code.to_bytes(3, 'little')
    data[0x0e] = 0x01 if fn.is_bridge else (0x80 if fn.address.endswith('.0') and fn.node.get('multifunction') else 0x00)
    data[0x2c:0x2e] = int(fn.subsystem_vendor, 16).to_bytes(2, 'little')
    data[0x2e:0x30] = int(fn.subsystem_device, 16).to_bytes(2, 'little')
    return bytes(data)


def _drm_assignment(functions: List[_Function]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    card = 0
    render = 128
    auto = [f for f in sorted(functions, key=lambda f: f.address) if f.drm == 'auto']
    explicit = [f for f in functions if isinstance(f.drm, list)]
    taken = set(n for f in explicit for n in f.drm)
    for fn in explicit:
        out[fn.address] = list(fn.drm)
    for fn in auto:
        if (fn.class_code >> 16) != 0x03 or fn.driver not in DRM_DRIVERS:
            continue
        while 'card%d' % card in taken:
            card += 1
        while 'renderD%d' % render in taken:
            render += 1
        out[fn.address] = ['card%d' % card, 'renderD%d' % render]
        taken.update(out[fn.address])
    return out


def _cpuinfo(cpu: Dict[str, Any]) -> str:
    vendor = cpu.get('vendor', 'GenuineIntel')
    default_flags = ['fpu', 'vme', 'de', 'pse', 'tsc', 'msr', 'pae', 'mce', 'cx8', 'apic', 'sep', 'pge',
                     'cmov', 'pat', 'clflush', 'mmx', 'fxsr', 'sse', 'sse2', 'ht', 'syscall', 'nx', 'lm',
                     'constant_tsc', 'pni', 'ssse3', 'cx16', 'sse4_1', 'sse4_2', 'popcnt', 'aes', 'avx', 'hypervisor']
    if cpu.get('virtualization', True):
        default_flags.append('vmx' if vendor == 'GenuineIntel' else 'svm')
    flags = cpu.get('flags', default_flags)
    model = cpu.get('model_name', 'Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz' if vendor == 'GenuineIntel'
                    else 'AMD EPYC 7543 32-Core Processor')
    blocks = []
    for index in range(int(cpu.get('count', 4))):
        blocks.append('\n'.join([
            'processor\t: %d' % index,
            'vendor_id\t: %s' % vendor,
            'cpu family\t: %d' % (6 if vendor == 'GenuineIntel' else 25),
            'model\t\t: 158',
            'model name\t: %s' % model,
            'stepping\t: 13',
            'cpu MHz\t\t: 3600.000',
            'physical id\t: 0',
            'core id\t\t: %d' % index,
            'flags\t\t: %s' % ' '.join(flags),
            '',
        ]))
    return '\n'.join(blocks) + '\n'


def materialize(topology: Any, dest: str) -> str:
    """Write the kernel-shaped tree of ``topology`` under ``dest``; return ``dest/sys``."""
    topo = load_topology(topology)
    w = _Writer(dest)
    sys_root = w.sys
    cpu = topo.get('cpu') or {}
    kernel = topo.get('kernel') or {}
    iommu = topo.get('iommu') or {}
    iommu_type = str(iommu.get('type', 'intel')).lower()
    if iommu_type not in ('intel', 'amd', 'none'):
        raise TopologyError('iommu.type must be intel, amd or none, not %r' % iommu_type)
    release = str(kernel.get('release', '6.1.0-27-amd64'))
    cmdline = str(kernel.get('cmdline', 'BOOT_IMAGE=/boot/vmlinuz-%s root=/dev/sda1 ro quiet' % release))

    functions = _build_functions(topo, sys_root)
    _assign_groups(functions, iommu_type)
    drm = _drm_assignment(functions)

    # /sys skeleton
    for sub in (('bus', 'pci', 'devices'), ('bus', 'pci', 'drivers'), ('kernel', 'iommu_groups'),
                ('class', 'iommu'), ('class', 'drm'), ('module',), ('devices', 'virtual', 'iommu'),
                ('firmware',), ('class', 'mdev_bus'), ('bus', 'mdev', 'devices'), ('bus', 'mdev', 'drivers', 'vfio_mdev')):
        w.mkdir(os.path.join(sys_root, *sub))
    for name in ('drivers_probe', 'rescan', 'drivers_autoprobe'):
        w.write(os.path.join(sys_root, 'bus', 'pci', name), '1\n' if name == 'drivers_autoprobe' else '')

    # Root bus directories
    for fn in functions:
        if fn.parent is None and fn.physfn is None:
            root_dir = os.path.dirname(fn.dir)
            w.mkdir(root_dir)
            w.write(os.path.join(root_dir, 'uevent'), '')

    # Drivers
    drivers = set()
    for fn in functions:
        for name in (fn.driver, fn.default_driver):
            if name:
                drivers.add(name)
    loaded = kernel.get('loaded')
    builtin = [str(x) for x in (kernel.get('builtin') or [])]
    builtin_names = set(os.path.basename(x).split('.ko')[0].replace('-', '_') for x in builtin)
    if loaded is None:
        loaded = sorted(set(d.replace('-', '_') for d in drivers if d not in CORE_DRIVERS) - builtin_names)
    loaded = [str(x).replace('-', '_') for x in loaded]
    if 'vfio_pci' in loaded or 'vfio_pci' in builtin_names:
        drivers.add('vfio-pci')
    for name in sorted(drivers):
        ddir = w.mkdir(os.path.join(sys_root, 'bus', 'pci', 'drivers', name))
        for attr in ('bind', 'unbind', 'new_id', 'remove_id', 'uevent'):
            w.write(os.path.join(ddir, attr), '')
        modname = name.replace('-', '_')
        if modname in loaded or modname in builtin_names:
            w.link(os.path.join(ddir, 'module'), os.path.join(sys_root, 'module', modname))

    # NUMA nodes (a kernel always has node0)
    all_cpus = '0-%d' % (int(cpu.get('count', 4)) - 1)
    node_cpus: Dict[int, str] = {}
    numa = topo.get('numa') or [{'cpus': all_cpus, 'memory_mib': 16384}]
    nbase = w.path('sys', 'devices', 'system', 'node')
    for index, node in enumerate(numa):
        ndir = w.mkdir(os.path.join(nbase, 'node%d' % index))
        node_cpus[index] = str(node.get('cpus', all_cpus))
        w.write(os.path.join(ndir, 'cpulist'), node_cpus[index] + '\n')
        total = int(node.get('memory_mib', 16384)) * 1024
        free = int(node.get('memory_free_mib', int(node.get('memory_mib', 16384)) * 3 // 4)) * 1024
        w.write(os.path.join(ndir, 'meminfo'), 'Node %d MemTotal:       %d kB\nNode %d MemFree:        %d kB\n'
                'Node %d MemUsed:        %d kB\n' % (index, total, index, free, index, total - free))
        pages = {2048: {}, 1048576: {}}
        pages.update({int(k): v for k, v in (node.get('hugepages') or {}).items()})
        for size, counts in pages.items():
            hdir = w.mkdir(os.path.join(ndir, 'hugepages', 'hugepages-%dkB' % size))
            w.write(os.path.join(hdir, 'nr_hugepages'), '%d\n' % int(counts.get('total', 0)))
            w.write(os.path.join(hdir, 'free_hugepages'), '%d\n' % int(counts.get('free', counts.get('total', 0))))
            w.write(os.path.join(hdir, 'surplus_hugepages'), '0\n')
    w.write(os.path.join(nbase, 'online'), ('0-%d' % (len(numa) - 1) if len(numa) > 1 else '0') + '\n')

    # Functions
    alloc = {'io': 0x1000, 'mem32': 0xe0000000, 'mem64': 0x38000000000}
    for fn in functions:
        _write_function(w, fn, drm.get(fn.address, []), node_cpus.get(fn.numa_node, all_cpus), alloc)
        w.link(os.path.join(sys_root, 'bus', 'pci', 'devices', fn.address), fn.dir)
        if fn.driver:
            w.link(os.path.join(sys_root, 'bus', 'pci', 'drivers', fn.driver, fn.address), fn.dir)

    # Virtual mdev parents (the kernel's sample mbochs, mdpy, mtty): /sys/devices/virtual/<name>/<name>
    for vparent in topo.get('mdev_parents') or []:
        name = str(vparent['name'])
        pdir = w.mkdir(os.path.join(sys_root, 'devices', 'virtual', name, name))
        w.write(os.path.join(pdir, 'uevent'), 'MDEV_STATE=registered\n')
        _write_mdev_types(w, pdir, vparent.get('types') or [])
        w.link(os.path.join(sys_root, 'class', 'mdev_bus', name), pdir)

    # IOMMU groups and units
    units: List[str] = []
    if iommu_type != 'none':
        count = int(iommu.get('units', 1))
        prefix = 'dmar' if iommu_type == 'intel' else 'ivhd'
        units = ['%s%d' % (prefix, i) for i in range(count)]
        ir = bool(iommu.get('interrupt_remapping', True))
        for unit in units:
            udir = w.mkdir(os.path.join(sys_root, 'devices', 'virtual', 'iommu', unit))
            if iommu_type == 'intel':
                w.write(os.path.join(udir, 'intel-iommu', 'cap'), INTEL_CAP + '\n')
                w.write(os.path.join(udir, 'intel-iommu', 'ecap'), (INTEL_ECAP_IR if ir else INTEL_ECAP_NO_IR) + '\n')
                w.write(os.path.join(udir, 'intel-iommu', 'version'), '1:0\n')
                w.write(os.path.join(udir, 'intel-iommu', 'address'), 'fed90000\n')
            else:
                w.write(os.path.join(udir, 'amd-iommu', 'cap'), '0x00190040\n')
                w.write(os.path.join(udir, 'amd-iommu', 'features'), '25bf732fa2295afe\n')
            w.mkdir(os.path.join(udir, 'devices'))
            w.link(os.path.join(sys_root, 'class', 'iommu', unit), udir)
        for fn in functions:
            if fn.group is None:
                continue
            gdir = os.path.join(sys_root, 'kernel', 'iommu_groups', str(fn.group))
            w.link(os.path.join(gdir, 'devices', fn.address), fn.dir)
            w.write(os.path.join(gdir, 'reserved_regions'), '0x00000000fee00000 0x00000000feefffff msi\n')
            w.write(os.path.join(gdir, 'type'), 'DMA\n')
            w.link(os.path.join(sys_root, 'devices', 'virtual', 'iommu', units[0], 'devices', fn.address), fn.dir)
            w.link(os.path.join(fn.dir, 'iommu'), os.path.join(sys_root, 'devices', 'virtual', 'iommu', units[0]))

    # Modules
    for name in loaded:
        mdir = w.mkdir(os.path.join(sys_root, 'module', name))
        w.write(os.path.join(mdir, 'initstate'), 'live\n')
        w.write(os.path.join(mdir, 'refcnt'), '0\n')
    for name in builtin_names:
        w.mkdir(os.path.join(sys_root, 'module', name))
    modules_lines = ['%s 65536 0 - Live 0x0000000000000000' % name for name in loaded]
    w.write(w.path('proc', 'modules'), '\n'.join(modules_lines) + ('\n' if modules_lines else ''))
    moddir = w.mkdir(w.path('lib', 'modules', release))
    w.write(os.path.join(moddir, 'modules.builtin'), ''.join('%s\n' % line for line in builtin))
    available = kernel.get('available')
    if available is None:
        available = ['kernel/drivers/vfio/vfio.ko', 'kernel/drivers/vfio/vfio_iommu_type1.ko',
                     'kernel/drivers/vfio/pci/vfio-pci.ko', 'kernel/drivers/vfio/pci/vfio-pci-core.ko']
        available = [a for a in available if a not in builtin]
    for rel in available:
        w.write(os.path.join(moddir, rel), '')
    w.write(os.path.join(moddir, 'modules.dep'), ''.join('%s:\n' % rel for rel in available))

    # /proc
    w.write(w.path('proc', 'cpuinfo'), _cpuinfo(cpu))
    w.write(w.path('proc', 'cmdline'), cmdline + '\n')
    w.write(w.path('proc', 'sys', 'kernel', 'osrelease'), release + '\n')
    nvidia = [f for f in sorted(functions, key=lambda f: f.address) if f.driver == 'nvidia']
    for minor, fn in enumerate(nvidia):
        w.write(w.path('proc', 'driver', 'nvidia', 'gpus', fn.address, 'information'),
                'Model: \t\t NVIDIA GPU\nIRQ:   \t\t 0\nGPU UUID: \t GPU-%08d\nDevice Minor: \t %d\n'
                'Bus Location: \t %s\n' % (minor, minor, fn.address))
        w.write(w.path('dev', 'nvidia%d' % minor), '')
    if nvidia:
        w.write(w.path('dev', 'nvidiactl'), '')
    for proc in topo.get('processes') or []:
        pid = str(int(proc['pid']))
        w.write(w.path('proc', pid, 'comm'), '%s\n' % proc.get('comm', 'proc%s' % pid))
        argv = [str(a) for a in proc.get('cmdline') or [proc.get('comm', 'proc%s' % pid)]]
        w.write(w.path('proc', pid, 'cmdline'), ''.join('%s\x00' % a for a in argv))
        w.mkdir(w.path('proc', pid, 'fd'))
        for fd, target in (proc.get('fds') or {}).items():
            w.abs_link(w.path('proc', pid, 'fd', str(int(fd))), str(target))

    # /dev
    w.mkdir(w.path('dev', 'dri'))
    vfio_dir = w.mkdir(w.path('dev', 'vfio'))
    if 'vfio' in loaded or 'vfio' in builtin_names or 'vfio_pci' in loaded or 'vfio_pci' in builtin_names:
        w.write(os.path.join(vfio_dir, 'vfio'), '')
    for group in sorted(set(f.group for f in functions if f.driver == 'vfio-pci' and f.group is not None)):
        w.write(os.path.join(vfio_dir, str(group)), '')

    # Secure Boot
    secure_boot = topo.get('secure_boot', False)
    if secure_boot is not None:
        w.write_bytes(os.path.join(sys_root, 'firmware', 'efi', 'efivars', 'SecureBoot-%s' % EFI_GLOBAL_GUID),
                      b'\x06\x00\x00\x00' + (b'\x01' if secure_boot else b'\x00'))

    # Record for a behaving layer
    record = {}
    for fn in functions:
        record[fn.address] = {
            'default_driver': fn.default_driver,
            'driver': fn.driver,
            'vendor': fn.vendor,
            'device': fn.device,
            'subsystem_vendor': fn.subsystem_vendor,
            'subsystem_device': fn.subsystem_device,
            'class': '0x%06x' % fn.class_code,
            'iommu_group': fn.group,
            'path': os.path.relpath(fn.dir, sys_root),
            'boot_vga': fn.boot_vga,
            'stuck': fn.stuck,
            'physfn': fn.physfn.address if fn.physfn else None,
            'drm': drm.get(fn.address, []),
            'sriov': ({'totalvfs': int(fn.sriov.get('totalvfs') or 0), 'offset': int(fn.sriov.get('offset', 1)),
                       'stride': int(fn.sriov.get('stride', 1)), 'vf_device': _hex_id(fn.sriov.get('vf_device', fn.device)),
                       'vf_driver': fn.sriov.get('vf_driver')} if fn.sriov is not None else None),
            'numa_node': fn.numa_node,
        }
    w.write(w.path('.sim', 'devices.json'), json.dumps(record, indent=1, sort_keys=True) + '\n')
    w.write(w.path('.sim', 'topology.json'),
            json.dumps({'name': topo.get('name'), 'iommu': iommu_type, 'release': release}, indent=1) + '\n')
    return sys_root


# ----------------------------------------------------------------------------- generators
def _fn(address: str, vendor: str, device: str, cls: int, driver: Optional[str], **extra: Any) -> Node:
    node: Node = {'address': address, 'vendor': vendor, 'device': device, 'class': cls, 'driver': driver}
    node.update(extra)
    return node


def generated(gpus: int = 16, total: int = 300) -> Topology:
    """A big two-socket host: ``gpus`` GPUs behind PCIe switches, NICs, NVMe, chipset devices,
    padded with extra NVMe drives and NIC functions to about ``total`` functions."""
    pci: List[Node] = []
    count = 0
    # chipset on 0000:00
    chipset = [
        _fn('0000:00:00.0', '8086', '09a2', 0x060000, None),
        _fn('0000:00:04.0', '8086', '0998', 0x088000, None),
        _fn('0000:00:05.0', '8086', '09a3', 0x088000, None),
        _fn('0000:00:14.0', '8086', 'a1af', 0x0c0330, 'xhci_hcd'),
        _fn('0000:00:16.0', '8086', 'a1ba', 0x078000, 'mei_me'),
        _fn('0000:00:17.0', '8086', 'a182', 0x010601, 'ahci'),
        _fn('0000:00:1f.0', '8086', 'a1cb', 0x060100, None),
        _fn('0000:00:1f.4', '8086', 'a1a3', 0x0c0500, 'i801_smbus'),
        _fn('0000:00:1f.5', '8086', 'a1a4', 0x0c8000, None),
    ]
    pci.extend(chipset)
    count += len(chipset)
    # BMC VGA behind a bridge: the boot VGA
    pci.append(_fn('0000:00:1c.0', '8086', 'a190', 0x060400, 'pcieport', children=[
        _fn('0000:02:00.0', '1a03', '1150', 0x060400, None, acs=False, children=[
            _fn('0000:03:00.0', '1a03', '2000', 0x030000, 'ast', boot_vga=True)])]))
    count += 3
    roots = ['0000:16', '0000:30', '0000:4a', '0000:64', '0000:97', '0000:b0', '0000:ca', '0000:e3']
    per_root = max(1, (gpus + len(roots) - 1) // len(roots))
    gpu_index = 0
    for r_index, root in enumerate(roots):
        numa = 0 if r_index < len(roots) // 2 else 1
        bus = int(root[5:7], 16)
        rp = _fn('%s:00.0' % root, '8086', '347a', 0x060400, 'pcieport', numa_node=numa, children=[])
        up = _fn('0000:%02x:00.0' % (bus + 1), '1000', 'c010', 0x060400, 'pcieport', numa_node=numa, children=[])
        rp['children'].append(up)
        count += 2
        down_bus = bus + 3
        ports = []
        for slot in range(per_root + 2):
            ports.append(_fn('0000:%02x:%02x.0' % (bus + 2, slot), '1000', 'c010', 0x060400, 'pcieport',
                             numa_node=numa, children=[]))
        up['children'].extend(ports)
        count += len(ports)
        for p_index, port in enumerate(ports):
            b = down_bus + p_index
            if p_index < per_root and gpu_index < gpus:
                port['children'].append(_fn('0000:%02x:00.0' % b, '10de', '2330', 0x030200, 'nvidia',
                                            subsystem_vendor='10de', subsystem_device='16c1', numa_node=numa,
                                            reset_method=['flr', 'bus']))
                gpu_index += 1
                count += 1
            elif p_index == per_root:
                port['children'].append(_fn('0000:%02x:00.0' % b, '15b3', '101d', 0x020700, 'mlx5_core',
                                            numa_node=numa, multifunction=True, isolated=True))
                port['children'].append(_fn('0000:%02x:00.1' % b, '15b3', '101d', 0x020700, 'mlx5_core',
                                            numa_node=numa, isolated=True))
                count += 2
            else:
                port['children'].append(_fn('0000:%02x:00.0' % b, '144d', 'a80a', 0x010802, 'nvme', numa_node=numa))
                count += 1
        pci.append(rp)
        # per-root-complex integrated devices (like Intel VMD / CBDMA / uncore functions)
        for slot in range(4):
            for func in range(8):
                if count >= total:
                    break
                pci.append(_fn('%s:%02x.%x' % (root, 0x05 + slot, func), '8086', '0b00', 0x088000,
                               'ioatdma' if func == 0 else None, numa_node=numa))
                count += 1
    # Pad with uncore devices on bus ff/fe until the total
    bus = 0xfe
    slot = 0
    func = 0
    while count < total:
        pci.append(_fn('0000:%02x:%02x.%x' % (bus, slot, func), '8086', '344c', 0x088000, None, numa_node=1))
        count += 1
        func += 1
        if func == 8:
            func = 0
            slot += 1
            if slot == 32:
                slot = 0
                bus += 1
    return {
        'name': 'generated%d' % gpus,
        'description': '%d NVIDIA GPUs behind PCIe switches on a two-socket host, about %d PCI functions' % (gpus, total),
        'cpu': {'vendor': 'GenuineIntel', 'count': 8},
        'kernel': {'release': '6.1.0-27-amd64',
                   'cmdline': 'BOOT_IMAGE=/boot/vmlinuz-6.1.0-27-amd64 root=/dev/sda1 ro intel_iommu=on iommu=pt'},
        'iommu': {'type': 'intel', 'interrupt_remapping': True, 'units': 4},
        'pci': pci,
    }


GENERATORS = {
    'generated16': lambda: generated(16, 300),
}


# ----------------------------------------------------------------------------- CLI
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    sub = parser.add_subparsers(dest='cmd', required=True)
    mat = sub.add_parser('materialize', help='write a simulated kernel tree; prints the sysfs root')
    mat.add_argument('topology')
    mat.add_argument('dest')
    sub.add_parser('list', help='list the known topologies')
    args = parser.parse_args(argv)
    if args.cmd == 'list':
        print('\n'.join(topology_names()))
        return 0
    try:
        print(materialize(args.topology, args.dest))
    except TopologyError as exc:
        print('simkernel: %s' % exc, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
