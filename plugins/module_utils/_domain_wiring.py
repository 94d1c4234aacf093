# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Writing a VM's wiring (plugins/module_utils/_vm_wiring.py) into its libvirt definition.

PRIVATE to the fleetgpu.passthrough collection: not a public API.

Only these elements are owned, and only they change; everything else the user wrote stays:

- ``cputune/vcpupin`` (one per vCPU) and ``cputune/emulatorpin``;
- ``numatune/memory``;
- ``memoryBacking/hugepages``;
- the ``pcihole64`` of the root PCI controller (SeaBIOS guests);
- the ``-fw_cfg name=opt/ovmf/X-PciMmio64Mb`` pair of ``qemu:commandline`` (UEFI guests; libvirt
  reserves that name in ``sysinfo type='fwcfg'``).

:func:`shape` reads what the wiring is computed from (vCPUs, memory, firmware, machine);
:func:`apply` edits the definition in place and returns one record per owned element.
"""
from __future__ import annotations

import re
from typing import Any

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import FactsError, gather
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import (
    DomainDefinition,
    DomainXmlError,
    HostdevError,
    _int,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import is_gpu_class
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vm_wiring import WiringError, plan

try:
    from lxml import etree
except ImportError:  # pragma: no cover - DomainDefinition refuses to edit without lxml
    etree = None

FW_CFG_NAME = 'opt/ovmf/X-PciMmio64Mb'
NUMA_CHOICES = ('strict', 'preferred', 'none')
#: The wiring option's keys and their defaults (libvirt_hostdev ``wiring``, libvirt_gpu ``wiring``).
DEFAULTS = {'pin_cpus': True, 'numa_mode': 'strict', 'hugepages': None, 'mmio64': True, 'allow_spread': False,
            'guest_numa': False}
_PAGE_SIZE = re.compile(r'^([0-9]+)\s*([kmg]?)(?:i?b)?$', re.IGNORECASE)
_PAGE_UNIT_KIB = {'': 1, 'k': 1, 'm': 1024, 'g': 1024 * 1024}
QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0'
#: libvirt's memory units, in bytes
_UNIT_BYTES = {'b': 1, 'bytes': 1, 'kb': 10 ** 3, 'k': 1 << 10, 'kib': 1 << 10, 'mb': 10 ** 6, 'm': 1 << 20,
               'mib': 1 << 20, 'gb': 10 ** 9, 'g': 1 << 30, 'gib': 1 << 30, 'tb': 10 ** 12, 't': 1 << 40,
               'tib': 1 << 40}


def shape(defn: DomainDefinition) -> dict:
    """``vcpus``, ``memory_mib``, ``firmware`` (``efi`` or ``bios``) and ``pcie`` of a definition."""
    root = defn.root
    vcpu_text = (root.findtext('vcpu') or '').strip()
    if not vcpu_text.isdigit():
        raise DomainXmlError('domain %r has no vCPU count (<vcpu>)' % defn.name)
    mem = root.find('memory')
    if mem is None or not (mem.text or '').strip().isdigit():
        raise DomainXmlError('domain %r has no memory size (<memory>)' % defn.name)
    unit = (mem.get('unit') or 'KiB').lower()
    if unit not in _UNIT_BYTES:
        raise DomainXmlError('domain %r: unknown memory unit %r' % (defn.name, mem.get('unit')))
    kib = int(mem.text.strip()) * _UNIT_BYTES[unit] // 1024
    os_elem = root.find('os')
    efi = False
    if os_elem is not None:
        loader = (os_elem.findtext('loader') or '').lower()
        efi = os_elem.get('firmware') == 'efi' or 'ovmf' in loader or 'edk2' in loader
    return {'vcpus': int(vcpu_text), 'memory_mib': kib // 1024, 'firmware': 'efi' if efi else 'bios',
            'pcie': defn.is_pcie()}


def _child(parent: Any, tag: str, first: bool = False) -> Any:
    elem = parent.find(tag)
    if elem is None:
        elem = etree.Element(tag)
        if first:
            parent.insert(0, elem)
        else:
            parent.append(elem)
    return elem


def _record(records: list[dict], element: str, before: str | None, after: str | None) -> None:
    if before == after:
        action = 'unchanged'
    elif before is None:
        action = 'added'
    elif after is None:
        action = 'removed'
    else:
        action = 'updated'
    records.append({'element': element, 'action': action, 'before': before, 'after': after})


def _text(elem: Any) -> str | None:
    if elem is None:
        return None
    return etree.tostring(elem, encoding='unicode', with_tail=False).strip()


def _after_domain_child(root: Any, tag: str, after: tuple[str, ...]) -> Any:
    """The top-level element ``tag``, made where libvirt itself would print it when missing."""
    elem = root.find(tag)
    if elem is not None:
        return elem
    elem = etree.Element(tag)
    anchor = None
    for name in after:
        found = root.find(name)
        if found is not None:
            anchor = found
    if anchor is not None:
        anchor.addnext(elem)
    else:
        root.insert(0, elem)
    return elem


def apply(defn: DomainDefinition, wiring: dict) -> list[dict]:
    """Write ``wiring`` (from ``_vm_wiring.plan``) into ``defn``; one record per owned element
    (``element``, ``action`` added / updated / unchanged, ``before``, ``after``)."""
    root = defn.root
    records: list[dict] = []
    info = shape(defn)
    order = ('name', 'uuid', 'title', 'description', 'metadata', 'maxMemory', 'memory', 'currentMemory',
             'blkiotune', 'memtune', 'memoryBacking', 'vcpu', 'vcpus', 'iothreads', 'iothreadids', 'cputune',
             'numatune', 'resource', 'sysinfo', 'os')

    if wiring.get('vcpu_pins') is not None:
        cputune = _after_domain_child(root, 'cputune', order[:order.index('cputune')])
        for vcpu, cpu in sorted(wiring['vcpu_pins'].items(), key=lambda kv: int(kv[0])):
            existing = [p for p in cputune.findall('vcpupin') if p.get('vcpu') == str(vcpu)]
            before = _text(existing[0]) if existing else None
            pin = existing[0] if existing else etree.SubElement(cputune, 'vcpupin')
            pin.set('vcpu', str(vcpu))
            pin.set('cpuset', str(cpu))
            _record(records, 'cputune/vcpupin[@vcpu=%s]' % vcpu, before, _text(pin))
        for pin in cputune.findall('vcpupin'):
            if int(pin.get('vcpu', '-1')) >= info['vcpus']:
                before = _text(pin)
                cputune.remove(pin)
                _record(records, 'cputune/vcpupin[@vcpu=%s]' % pin.get('vcpu'), before, None)
        emu = cputune.find('emulatorpin')
        before = _text(emu)
        emu = _child(cputune, 'emulatorpin')
        emu.set('cpuset', str(wiring['emulator_cpus']))
        _record(records, 'cputune/emulatorpin', before, _text(emu))

    if wiring.get('numatune') is not None:
        numatune = _after_domain_child(root, 'numatune', order[:order.index('numatune')])
        mem = numatune.find('memory')
        before = _text(mem)
        mem = _child(numatune, 'memory', first=True)
        mem.set('mode', wiring['numatune']['mode'])
        mem.set('nodeset', wiring['numatune']['nodeset'])
        _record(records, 'numatune/memory', before, _text(mem))

    if wiring.get('hugepages') is not None:
        backing = _after_domain_child(root, 'memoryBacking', order[:order.index('memoryBacking')])
        pages = backing.find('hugepages')
        before = _text(pages)
        if pages is not None:
            for child in list(pages):
                pages.remove(child)
        pages = _child(backing, 'hugepages', first=True)
        # the page's own nodeset would name guest NUMA cells: the host node comes from numatune
        etree.SubElement(pages, 'page', size=str(wiring['hugepages']['size_kib']), unit='KiB')
        _record(records, 'memoryBacking/hugepages', before, _text(pages))

    if wiring.get('mmio64_mib') is None:
        pass
    elif info['firmware'] == 'efi':
        # libvirt refuses fw_cfg names under opt/ovmf/ in <sysinfo type='fwcfg'> ("That firmware
        # name is reserved", libvirt 9.0), so OVMF's setting goes on QEMU's command line.
        cmdline = root.find('{%s}commandline' % QEMU_NS)
        if cmdline is None:
            cmdline = etree.SubElement(root, '{%s}commandline' % QEMU_NS, nsmap={'qemu': QEMU_NS})
        args = cmdline.findall('{%s}arg' % QEMU_NS)
        value = 'name=%s,string=%d' % (FW_CFG_NAME, wiring['mmio64_mib'])
        before = None
        target = None
        for flag, arg in zip(args, args[1:]):
            if flag.get('value') == '-fw_cfg' and (arg.get('value') or '').startswith('name=%s,' % FW_CFG_NAME):
                target, before = arg, arg.get('value')
        if target is None:
            etree.SubElement(cmdline, '{%s}arg' % QEMU_NS, value='-fw_cfg')
            target = etree.SubElement(cmdline, '{%s}arg' % QEMU_NS)
        target.set('value', value)
        _record(records, 'qemu:commandline -fw_cfg %s' % FW_CFG_NAME, before, value)
    else:
        model = 'pcie-root' if info['pcie'] else 'pci-root'
        ctl = None
        for elem in defn.devices.findall('controller'):
            if elem.get('type') == 'pci' and elem.get('model') == model:
                ctl = elem
        if ctl is None:
            ctl = etree.Element('controller', type='pci', index='0', model=model)
            defn.devices.insert(0, ctl)
        hole = ctl.find('pcihole64')
        before = _text(hole)
        hole = _child(ctl, 'pcihole64')
        hole.set('unit', 'KiB')
        hole.text = str(wiring['pcihole64_kib'])
        _record(records, "devices/controller[@model='%s']/pcihole64" % model, before, _text(hole))
    return records


class DomainWiringError(HostdevError):
    """The wiring asked for cannot be written for this domain on this host."""


def page_size_kib(text: object) -> int:
    """A hugepage size as written by users (``2M``, ``1G``, ``2048`` KiB, ``1GiB``) in KiB."""
    found = _PAGE_SIZE.match(str(text).strip())
    if not found or int(found.group(1)) <= 0:
        raise DomainWiringError('wiring.hugepages: %r is not a page size (write 2M, 1G or a number of KiB)' % (text,))
    return int(found.group(1)) * _PAGE_UNIT_KIB[found.group(2).lower()]


def options(given: dict | None) -> dict:
    """The wiring options with their defaults, checked (raises DomainWiringError naming the key)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise DomainWiringError('wiring: unknown key(s) %s (known: %s)' % (', '.join(unknown), ', '.join(sorted(DEFAULTS))))
    out = dict(DEFAULTS)
    out.update({k: v for k, v in given.items() if v is not None})
    if out['numa_mode'] not in NUMA_CHOICES:
        raise DomainWiringError('wiring.numa_mode must be one of %s, not %r' % (', '.join(NUMA_CHOICES), out['numa_mode']))
    if out['hugepages'] is not None:
        out['hugepages'] = page_size_kib(out['hugepages'])
    return out


def _current_page_kib(defn: DomainDefinition) -> int | None:
    page = defn.root.find('memoryBacking/hugepages/page')
    if page is None or not (page.get('size') or '').isdigit():
        return None
    unit = (page.get('unit') or 'KiB').lower()
    return int(page.get('size')) * _UNIT_BYTES.get(unit, 1024) // 1024


def wire(defn: DomainDefinition, sysfs: Sysfs, given: dict | None, active: bool) -> tuple[dict, list[dict]]:
    """Compute the wiring of ``defn``'s GPUs (its PCI hostdevs found under ``sysfs``) and write it.

    ``active``: the domain runs now, so the memory and hugepages its definition already binds to
    the node are its own, not missing. Returns the plan (with ``gpus``, the addresses it was
    computed from) and one record per owned element."""
    opts = options(given)
    sources = [a for a in defn.sources() if sysfs.isdir(sysfs.sys('bus', 'pci', 'devices', str(a)))]
    if not sources:
        raise DomainWiringError('wiring of domain %r: it has no PCI hostdev present on this host to wire for'
                                % defn.name)
    try:
        facts = gather(sysfs, addresses=[str(a) for a in sources], include_accelerators=True)
    except FactsError as exc:
        raise DomainWiringError('wiring of domain %r: %s' % (defn.name, exc)) from None
    gpus = [g for g in facts['gpus'] if is_gpu_class(int(g['class'], 16), True)] or facts['gpus']
    info = shape(defn)
    held_pages = held_mib = 0
    if active and opts['hugepages'] is not None and _current_page_kib(defn) == opts['hugepages']:
        held_pages = info['memory_mib'] * 1024 // opts['hugepages']
    if active and defn.root.find('numatune/memory') is not None:
        held_mib = info['memory_mib']
    try:
        wiring = plan(facts['host'], gpus, info['vcpus'], info['memory_mib'],
                      numa_mode=None if opts['numa_mode'] == 'none' else opts['numa_mode'],
                      hugepage_kib=opts['hugepages'], allow_spread=opts['allow_spread'],
                      held_pages=held_pages, held_mib=held_mib)
    except WiringError as exc:
        raise DomainWiringError('wiring of domain %r: %s' % (defn.name, exc)) from None
    if not opts['pin_cpus']:
        wiring['vcpu_pins'] = wiring['emulator_cpus'] = None
    if not opts['mmio64']:
        wiring['mmio64_mib'] = wiring['pcihole64_kib'] = wiring['ovmf_fw_cfg'] = None
    wiring['gpus'] = [g['address'] for g in gpus]
    wiring['firmware'] = info['firmware']
    records = apply(defn, wiring)
    wiring['guest_numa'] = None
    if opts['guest_numa']:
        spread = sorted({g['numa_node'] for g in gpus if g.get('numa_node') is not None})
        if len(spread) > 1:
            raise DomainWiringError('wiring of domain %r: guest_numa mirrors one host NUMA node, and its GPUs sit on '
                                    'nodes %s' % (defn.name, ', '.join(map(str, spread))))
        wiring['guest_numa'] = guest_topology(defn, [PciAddress.parse(a) for a in wiring['gpus']], records)
    return wiring, records


def _pci_index(ctl: Any) -> int:
    return _int(ctl.get('index'))


def _parent_bus(ctl: Any) -> int | None:
    addr = ctl.find('address')
    if addr is None or addr.get('type') != 'pci':
        return None
    return _int(addr.get('bus'))


def guest_topology(defn: DomainDefinition, gpus: list[PciAddress], records: list[dict]) -> dict:
    """Mirror the GPUs' host NUMA locality in the guest: one guest NUMA cell with every vCPU and
    all memory, one ``pcie-expander-bus`` bound to that cell, and each GPU slot (with its
    companion functions) behind a ``pcie-root-port`` of its own on that bus, so the guest reads
    the GPUs' ``numa_node`` as the cell of its vCPUs. Appends the element records; returns
    ``{cell, expander_index, root_ports}``."""
    root = defn.root
    if not defn.is_pcie():
        raise DomainWiringError('wiring of domain %r: guest_numa needs a q35 (PCI Express) machine, for its '
                                'pcie-expander-bus' % defn.name)
    info = shape(defn)
    # the guest cell: every vCPU, all memory
    cpu = root.find('cpu')
    if cpu is None:
        cpu = _after_domain_child(root, 'cpu', ('features',))
    numa = cpu.find('numa')
    before = _text(numa)
    if numa is not None:
        for child in list(numa):
            numa.remove(child)
    numa = _child(cpu, 'numa')
    kib = info['memory_mib'] * 1024
    etree.SubElement(numa, 'cell', id='0', cpus='0-%d' % (info['vcpus'] - 1) if info['vcpus'] > 1 else '0',
                     memory=str(kib), unit='KiB')
    _record(records, 'cpu/numa', before, _text(numa))

    controllers = [c for c in defn.devices.findall('controller') if c.get('type') == 'pci']
    expander = None
    for ctl in controllers:
        if ctl.get('model') == 'pcie-expander-bus' and (ctl.findtext('target/node') or '').strip() == '0':
            expander = ctl
    next_index = max([_pci_index(c) for c in controllers] or [0]) + 1
    if expander is None:
        expander = etree.Element('controller', type='pci', index=str(next_index), model='pcie-expander-bus')
        etree.SubElement(etree.SubElement(expander, 'target'), 'node').text = '0'
        if controllers:
            controllers[-1].addnext(expander)
        else:
            defn.devices.insert(0, expander)
        controllers.append(expander)
        next_index += 1
        _record(records, "devices/controller[@model='pcie-expander-bus']", None, _text(expander))
    else:
        _record(records, "devices/controller[@model='pcie-expander-bus']", _text(expander), _text(expander))
    exp_index = _pci_index(expander)
    by_index = {_pci_index(c): c for c in controllers}

    # each GPU host slot (GPU + companions) behind a root port of the expander bus
    wanted_slots = {g.slot_key for g in gpus}
    groups: dict[tuple, list] = {}
    for dev in defn.hostdevs():
        if dev.source is not None and dev.source.slot_key in wanted_slots:
            groups.setdefault(dev.source.slot_key, []).append(dev)
    ports: list[int] = []
    for key in sorted(groups):
        devs = groups[key]
        guest = devs[0].guest
        port = by_index.get(guest.bus) if guest is not None else None
        if port is not None and port.get('model') == 'pcie-root-port' and _parent_bus(port) == exp_index:
            ports.append(guest.bus)
            for dev in devs:
                _record(records, 'hostdev %s guest address' % dev.source, str(dev.guest), str(dev.guest))
            continue
        used = {_slot_of(c) for c in controllers if _parent_bus(c) == exp_index}
        free = [s for s in range(0, 0x20) if s not in used]
        if not free:
            raise DomainWiringError('wiring of domain %r: no free slot left on its pcie-expander-bus' % defn.name)
        new_port = etree.Element('controller', type='pci', index=str(next_index), model='pcie-root-port')
        etree.SubElement(new_port, 'address', type='pci', domain='0x0000', bus='0x%02x' % exp_index,
                         slot='0x%02x' % free[0], function='0x0')
        controllers[-1].addnext(new_port)
        controllers.append(new_port)
        by_index[next_index] = new_port
        _record(records, "devices/controller[@model='pcie-root-port'][@index=%d]" % next_index, None, _text(new_port))
        for dev in sorted(devs, key=lambda d: d.source.function):
            old = dev.guest
            moved = PciAddress(0, next_index, 0, dev.source.function)
            DomainDefinition._set_guest(dev, moved, multifunction=len(devs) > 1 and dev.source.function == 0)
            _record(records, 'hostdev %s guest address' % dev.source, str(old) if old else None, str(moved))
        # The root port the slot left stays, a free hotplug port: libvirt would add one back anyway,
        # as it fills every gap in the PCI controller indexes.
        ports.append(next_index)
        next_index += 1
    return {'cell': 0, 'expander_index': exp_index, 'root_ports': ports}


def _slot_of(ctl: Any) -> int | None:
    addr = ctl.find('address')
    if addr is None:
        return None
    return _int(addr.get('slot'))
