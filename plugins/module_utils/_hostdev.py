# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The libvirt domain XML ``<hostdev>`` model: match, merge, remove, place, diff.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Pure lxml, no libvirt connection: the module reads a domain's XML, this model
plans the change on the parsed tree (adding, updating or removing PCI
``<hostdev>`` entries matched by their *source* address, and mediated-device
``<hostdev type='mdev'>`` entries matched by their UUID), and the caller
defines the result.  Guest placement mirrors real hardware: the functions of
one host slot (a GPU and its HDMI audio) land on one guest slot, function 0
carrying ``multifunction='on'``.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree import ElementTree

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress, PciAddressError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._topology import parse_cpulist

try:
    from lxml import etree
    HAS_LXML = True
    LXML_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the managed host
    HAS_LXML = False
    LXML_IMPORT_ERROR = _exc

# An element of either parser (lxml, or ElementTree for read-only use): lxml ships no type
# information and the code uses both through the same few calls, so elements are Any.
Element = Any


class HostdevError(FleetGpuError):
    """Base of the errors of the hostdev model."""


class DomainXmlError(HostdevError):
    """The domain XML cannot be parsed or has an unexpected shape."""


class PlacementError(HostdevError):
    """No guest PCI address can be found or the requested one is taken."""


class MdevSpecError(HostdevError):
    """A mediated-device entry of ``devices`` is malformed, or asks for what the domain cannot give."""


UUID_RE = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')


def parse_mdev_uuid(text: object, what: str = 'mdev') -> str:
    """The canonical (lower-case) form of an mdev UUID, or MdevSpecError naming the input."""
    if not isinstance(text, str) or not UUID_RE.match(text.strip().lower()):
        raise MdevSpecError('%s %r is not a UUID (8-4-4-4-12 hexadecimal digits, as in '
                            '/sys/bus/mdev/devices/<uuid>)' % (what, text))
    return text.strip().lower()


class MdevSpec:
    """One mediated device the module is asked about: its UUID and, when asked, its display.

    ``display``: True adds ``display='on'``, False ``display='off'``, None leaves an existing
    entry's display as it is (a new entry then gets none: libvirt's default, off).
    """

    def __init__(self, uuid: str, display: bool | None = None) -> None:
        self.uuid = parse_mdev_uuid(uuid)
        self.display = display

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MdevSpec) and (self.uuid, self.display) == (other.uuid, other.display)

    def __hash__(self) -> int:
        return hash((self.uuid, self.display))

    def __repr__(self) -> str:
        return 'MdevSpec(%r, display=%r)' % (self.uuid, self.display)


def _int(text: str | None) -> int:
    """libvirt writes ``0x1f``; accept decimal too."""
    if text is None or text == '':
        return 0
    text = text.strip()
    return int(text, 16) if text.lower().startswith('0x') else int(text, 10)


def _addr_from(elem: Element) -> PciAddress | None:
    """A PciAddress from an ``<address domain= bus= slot= function=>`` element."""
    if elem is None:
        return None
    try:
        return PciAddress(_int(elem.get('domain')), _int(elem.get('bus')),
                          _int(elem.get('slot')), _int(elem.get('function')))
    except (ValueError, PciAddressError):
        return None


def _set_addr(elem: Element, addr: PciAddress, guest: bool) -> None:
    attrs = elem.attrib
    if guest:
        attrs['type'] = 'pci'
    attrs['domain'] = '0x%04x' % addr.domain
    attrs['bus'] = '0x%02x' % addr.bus
    attrs['slot'] = '0x%02x' % addr.slot
    attrs['function'] = '0x%x' % addr.function


class RomSpec:
    """``<rom bar='on|off' file='...'/>`` of a hostdev; None fields are left as they are."""

    def __init__(self, file: str | None = None, bar_on: bool | None = None) -> None:
        self.file = file
        self.bar_on = bar_on

    @property
    def empty(self) -> bool:
        return self.file is None and self.bar_on is None


class Hostdev:
    """One PCI ``<hostdev>`` element of a domain."""

    def __init__(self, elem: Element) -> None:
        self.elem = elem

    @property
    def source(self) -> PciAddress | None:
        return _addr_from(self.elem.find('source/address'))

    @property
    def guest(self) -> PciAddress | None:
        addr = self.elem.find('address')
        if addr is None or addr.get('type') != 'pci':
            return None
        return _addr_from(addr)

    @property
    def managed(self) -> bool:
        return self.elem.get('managed') == 'yes'

    @property
    def multifunction(self) -> bool:
        addr = self.elem.find('address')
        return addr is not None and addr.get('multifunction') == 'on'

    @property
    def rom(self) -> dict[str, str] | None:
        rom = self.elem.find('rom')
        return dict(rom.attrib) if rom is not None else None

    def to_dict(self) -> dict[str, object]:
        guest = self.guest
        return {
            'address': str(self.source) if self.source else None,
            'guest_address': str(guest) if guest else None,
            'managed': self.managed,
            'multifunction': self.multifunction,
            'rom': self.rom,
        }

    def xml(self) -> str:
        return etree.tostring(self.elem, encoding='unicode').strip()


class MdevHostdev:
    """One mediated-device ``<hostdev mode='subsystem' type='mdev'>`` element of a domain."""

    def __init__(self, elem: Element) -> None:
        self.elem = elem

    @property
    def uuid(self) -> str | None:
        addr = self.elem.find('source/address')
        text = addr.get('uuid') if addr is not None else None
        return text.strip().lower() if text else None

    @property
    def display(self) -> bool:
        return self.elem.get('display') == 'on'

    @property
    def model(self) -> str | None:
        return self.elem.get('model')

    @property
    def guest(self) -> PciAddress | None:
        addr = self.elem.find('address')
        if addr is None or addr.get('type') != 'pci':
            return None
        return _addr_from(addr)

    def to_dict(self) -> dict[str, object]:
        guest = self.guest
        return {
            'uuid': self.uuid,
            'model': self.model,
            'display': self.display,
            'guest_address': str(guest) if guest else None,
        }

    def xml(self) -> str:
        return etree.tostring(self.elem, encoding='unicode').strip()


class MdevChange:
    """One planned change of a mediated-device hostdev."""

    def __init__(self, uuid: str, action: str, guest: PciAddress | None = None, display: bool | None = None,
                 detail: str = '') -> None:
        self.uuid = uuid
        self.action = action  # added | updated | removed | unchanged
        self.guest = guest
        self.display = display
        self.detail = detail

    def to_dict(self) -> dict[str, object]:
        return {
            'address': None,
            'mdev': self.uuid,
            'action': self.action,
            'guest_address': str(self.guest) if self.guest else None,
            'companion_of': None,
            'display': self.display,
            'detail': self.detail,
        }


def mdev_hostdev_xml(spec: MdevSpec) -> str:
    """A standalone mediated-device ``<hostdev>`` (for a live attach, and the model of a new entry)."""
    return etree.tostring(_mdev_element(spec), encoding='unicode')


def _mdev_element(spec: MdevSpec) -> Element:
    elem = etree.Element('hostdev', mode='subsystem', type='mdev', model='vfio-pci')
    if spec.display is not None:
        elem.set('display', 'on' if spec.display else 'off')
    src = etree.SubElement(elem, 'source')
    etree.SubElement(src, 'address', uuid=spec.uuid)
    return elem


class HostdevChange:
    """One planned change of the domain definition."""

    def __init__(self, address: PciAddress, action: str, guest: PciAddress | None = None,
                 companion_of: PciAddress | None = None, detail: str = '') -> None:
        self.address = address
        self.action = action  # added | updated | removed | unchanged
        self.guest = guest
        self.companion_of = companion_of
        self.detail = detail

    def to_dict(self) -> dict[str, object]:
        return {
            'address': str(self.address),
            'action': self.action,
            'guest_address': str(self.guest) if self.guest else None,
            'companion_of': str(self.companion_of) if self.companion_of else None,
            'detail': self.detail,
        }


class SlotRequest:
    """The host functions of one slot that must be in the domain.

    ``functions``: every host function to attach (the listed devices and
    their companions); ``listed``: the ones the user named (ROM options apply
    to those only).
    """

    def __init__(self, functions: list[PciAddress], listed: list[PciAddress]) -> None:
        self.functions = sorted(set(functions))
        self.listed = sorted(set(listed))
        slots = {a.slot_key for a in self.functions}
        if len(slots) != 1:
            raise HostdevError('a slot request holds functions of several slots: %s'
                               % ', '.join(str(a) for a in self.functions))

    def guest_function(self, host: PciAddress) -> int:
        """Guest functions mirror host functions when host function 0 is attached;
        otherwise they are numbered from 0 in host order (a guest slot needs function 0)."""
        if any(a.function == 0 for a in self.functions):
            return host.function
        return self.functions.index(host)

    def companion_of(self, host: PciAddress) -> PciAddress | None:
        if host in self.listed:
            return None
        return self.listed[0] if self.listed else None


class DomainDefinition:
    """A parsed domain XML with the operations the module plans with."""

    def __init__(self, xml: str, read_only: bool = False) -> None:
        if not HAS_LXML:
            if not read_only:
                raise DomainXmlError('lxml is not installed')
            self._read_with_stdlib(xml)
            return
        try:
            parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
            self.root = etree.fromstring(xml.encode('utf-8'), parser)
        except etree.XMLSyntaxError as exc:
            raise DomainXmlError('domain XML cannot be parsed: %s' % exc) from None
        if self.root.tag != 'domain':
            raise DomainXmlError('expected a <domain> document, got <%s>' % self.root.tag)
        devices = self.root.find('devices')
        if devices is None:
            devices = etree.SubElement(self.root, 'devices')
        self.devices = devices

    def _read_with_stdlib(self, xml: str) -> None:
        """Reads only (no lxml): the XML libvirt itself printed, parsed by the standard library."""
        if '<!DOCTYPE' in xml or '<!ENTITY' in xml:
            raise DomainXmlError('domain XML with a DTD or entities is not read')
        try:
            self.root = ElementTree.fromstring(xml)
        except ElementTree.ParseError as exc:
            raise DomainXmlError('domain XML cannot be parsed: %s' % exc) from None
        if self.root.tag != 'domain':
            raise DomainXmlError('expected a <domain> document, got <%s>' % self.root.tag)
        devices = self.root.find('devices')
        self.devices = devices if devices is not None else ElementTree.Element('devices')

    # ---------------------------------------------------------------- reads
    @property
    def name(self) -> str:
        return self.root.findtext('name') or ''

    def _subsystem(self, kind: str) -> list[Element]:
        """The ``<hostdev mode='subsystem' type=KIND>`` elements, in document order."""
        return [elem for elem in self.devices.findall('hostdev')
                if elem.get('mode', 'subsystem') == 'subsystem' and elem.get('type') == kind]

    def hostdevs(self) -> list[Hostdev]:
        return [dev for dev in map(Hostdev, self._subsystem('pci')) if dev.source is not None]

    def numa_nodes(self) -> list[int]:
        """Host NUMA nodes the domain's memory is pinned to (``<numatune><memory nodeset=...>``)."""
        mem = self.root.find('numatune/memory')
        if mem is None or not mem.get('nodeset'):
            return []
        return parse_cpulist(mem.get('nodeset'), strict=False)

    def sources(self) -> list[PciAddress]:
        return sorted(h.source for h in self.hostdevs() if h.source is not None)

    def find(self, source: PciAddress) -> Hostdev | None:
        for dev in self.hostdevs():
            if dev.source == source:
                return dev
        return None

    def mdev_hostdevs(self) -> list[MdevHostdev]:
        """The mediated-device hostdevs (``type='mdev'``) that carry a UUID."""
        return [dev for dev in map(MdevHostdev, self._subsystem('mdev')) if dev.uuid is not None]

    def mdev_uuids(self) -> list[str]:
        return sorted(str(h.uuid) for h in self.mdev_hostdevs())

    def find_mdev(self, uuid: str) -> MdevHostdev | None:
        for dev in self.mdev_hostdevs():
            if dev.uuid == uuid:
                return dev
        return None

    def has_graphics(self) -> bool:
        return self.devices.find('graphics') is not None

    def is_pcie(self) -> bool:
        for ctl in self.devices.findall('controller'):
            if ctl.get('type') == 'pci' and ctl.get('model') == 'pcie-root':
                return True
        return False

    def _guest_addresses(self) -> list[PciAddress]:
        out = []
        for elem in self.devices.iter('address'):
            if elem.get('type') != 'pci':
                continue
            addr = _addr_from(elem)
            if addr is not None:
                out.append(addr)
        return out

    def _pci_controllers(self) -> list[Any]:
        return [c for c in self.devices.findall('controller') if c.get('type') == 'pci']

    def to_xml(self) -> str:
        return canonical(self.root)

    # ------------------------------------------------------------- changes
    def _new_hostdev(self, source: PciAddress, managed: bool) -> Hostdev:
        elem = etree.Element('hostdev', mode='subsystem', type='pci', managed='yes' if managed else 'no')
        src = etree.SubElement(elem, 'source')
        _set_addr(etree.SubElement(src, 'address'), source, guest=False)
        # After the last existing hostdev, else at the end of <devices>.
        existing = self.devices.findall('hostdev')
        if existing:
            existing[-1].addnext(elem)
        else:
            self.devices.append(elem)
        return Hostdev(elem)

    @staticmethod
    def _apply_settings(dev: Hostdev, managed: bool, rom: RomSpec | None) -> None:
        dev.elem.set('managed', 'yes' if managed else 'no')
        if rom is not None and not rom.empty:
            elem = dev.elem.find('rom')
            if elem is None:
                elem = etree.Element('rom')
                # <rom> goes after <source> (and after a boot element if any).
                src = dev.elem.find('source')
                src.addnext(elem)
            if rom.bar_on is not None:
                elem.set('bar', 'on' if rom.bar_on else 'off')
            if rom.file is not None:
                elem.set('file', rom.file)

    @staticmethod
    def _set_guest(dev: Hostdev, guest: PciAddress, multifunction: bool) -> None:
        addr = dev.elem.find('address')
        if addr is None:
            addr = etree.SubElement(dev.elem, 'address')
        for key in list(addr.attrib):
            del addr.attrib[key]
        _set_addr(addr, guest, guest=True)
        if multifunction:
            addr.set('multifunction', 'on')

    def _allocate_slot(self) -> tuple[int, int, int]:
        """A free guest (domain, bus, slot) for one multifunction device."""
        used = self._guest_addresses()
        if self.is_pcie():
            used_buses = {a.bus for a in used if a.domain == 0}
            ports = sorted(_int(c.get('index')) for c in self._pci_controllers() if c.get('model') == 'pcie-root-port')
            for index in ports:
                if index not in used_buses:
                    return (0, index, 0)
            indices = [_int(c.get('index')) for c in self._pci_controllers()]
            index = max(indices) + 1 if indices else 1
            if index > 0xff:
                raise PlacementError('no PCI bus index left for a new pcie-root-port in domain %r' % self.name)
            ctl = etree.Element('controller', type='pci', index=str(index), model='pcie-root-port')
            controllers = self.devices.findall('controller')
            if controllers:
                controllers[-1].addnext(ctl)
            else:
                self.devices.insert(0, ctl)
            return (0, index, 0)
        # Slot 0 is the host bridge and slot 1 the PIIX3 (ISA bridge, IDE, USB, power management),
        # there on an i440fx machine whether or not the definition shows them.
        used_slots = {a.slot for a in used if a.domain == 0 and a.bus == 0} | {0, 1}
        for slot in range(2, 0x20):
            if slot not in used_slots:
                return (0, 0, slot)
        raise PlacementError('no free guest PCI slot on bus 0 of domain %r: give guest_address' % self.name)

    def _guest_taken(self, guest: PciAddress, allowed: set[PciAddress]) -> bool:
        """True when another device (not one of ``allowed`` hostdev sources) sits at ``guest``."""
        for elem in self.devices.iter('address'):
            if elem.get('type') != 'pci' or _addr_from(elem) != guest:
                continue
            owner = elem.getparent()
            if owner.tag == 'hostdev':
                src = Hostdev(owner).source
                if src in allowed:
                    continue
            return True
        return False

    def plan_present(self, slot: SlotRequest, managed: bool, rom: RomSpec | None = None,
                     guest_address: PciAddress | None = None) -> list[HostdevChange]:
        """Make every function of ``slot`` a hostdev of this domain; returns the changes."""
        existing = {a: self.find(a) for a in slot.functions}
        before = {a: (h.xml() if h is not None else None) for a, h in existing.items()}
        missing = [a for a in slot.functions if existing[a] is None]
        allowed = set(slot.functions)

        # Where the guest slot is: asked for, else where a sibling already sits, else a free one.
        target: tuple[int, int, int] | None = None
        relocate = False
        if guest_address is not None:
            target = (guest_address.domain, guest_address.bus, guest_address.slot)
            relocate = True
        else:
            for addr in slot.functions:
                dev = existing[addr]
                if dev is not None and dev.guest is not None:
                    target = dev.guest.slot_key
                    break
            # A definition without any guest address yet (libvirt 9 gives a diskless i440fx domain
            # none) still gets one slot for functions that must share it; a lone function is left
            # to libvirt there.
            if target is None and missing and (self._guest_addresses() or len(slot.functions) > 1):
                target = self._allocate_slot()

        multi = len(slot.functions) > 1 or any(
            h.source is not None and h.source.slot_key == slot.functions[0].slot_key and h.source not in allowed
            for h in self.hostdevs())
        changes: list[HostdevChange] = []
        for addr in slot.functions:
            dev = existing[addr]
            if dev is None:
                dev = self._new_hostdev(addr, managed)
            self._apply_settings(dev, managed, rom if addr in slot.listed else None)
            if target is not None and (relocate or dev.guest is None):
                guest = PciAddress(target[0], target[1], target[2], slot.guest_function(addr))
                if not self._guest_taken(guest, allowed):
                    self._set_guest(dev, guest, multi and guest.function == 0)
                elif relocate:
                    raise PlacementError('guest address %s of domain %r is taken by another device' % (guest, self.name))
            elif multi and dev.guest is not None and dev.guest.function == 0 and not dev.multifunction:
                self._set_guest(dev, dev.guest, True)
            after = dev.xml()
            if before[addr] is None:
                action = 'added'
            elif before[addr] != after:
                action = 'updated'
            else:
                action = 'unchanged'
            changes.append(HostdevChange(addr, action, dev.guest, slot.companion_of(addr)))
        return changes

    def plan_mdev_present(self, spec: MdevSpec) -> MdevChange:
        """Make the mediated device ``spec`` a hostdev of this domain (matched by UUID).

        libvirt places a new one (no guest address is written: on q35 it adds a root port).
        ``display='on'`` needs a graphics device in the domain: libvirt refuses the definition
        without one, so the plan refuses it first, naming the domain and the UUID.
        """
        if spec.display and not self.has_graphics():
            raise MdevSpecError("mdev %s with display=true: domain %r has no <graphics> device, and libvirt accepts "
                                "display='on' only with one (add e.g. <graphics type='vnc'/> or leave display off)"
                                % (spec.uuid, self.name))
        dev = self.find_mdev(spec.uuid)
        if dev is None:
            elem = _mdev_element(spec)
            existing = self.devices.findall('hostdev')
            if existing:
                existing[-1].addnext(elem)
            else:
                self.devices.append(elem)
            return MdevChange(spec.uuid, 'added', None, bool(spec.display))
        before = dev.xml()
        if dev.model is None:
            dev.elem.set('model', 'vfio-pci')
        if spec.display is not None:
            dev.elem.set('display', 'on' if spec.display else 'off')
        action = 'updated' if dev.xml() != before else 'unchanged'
        return MdevChange(spec.uuid, action, dev.guest, dev.display)

    def plan_mdev_absent(self, uuids: list[str]) -> list[MdevChange]:
        changes = []
        for uuid in sorted(set(uuids)):
            dev = self.find_mdev(uuid)
            if dev is None:
                changes.append(MdevChange(uuid, 'unchanged', detail='not in the domain'))
                continue
            guest, display = dev.guest, dev.display
            dev.elem.getparent().remove(dev.elem)
            changes.append(MdevChange(uuid, 'removed', guest, display))
        return changes

    def plan_absent(self, addresses: list[PciAddress]) -> list[HostdevChange]:
        changes = []
        for addr in sorted(set(addresses)):
            dev = self.find(addr)
            if dev is None:
                changes.append(HostdevChange(addr, 'unchanged', detail='not in the domain'))
                continue
            guest = dev.guest
            dev.elem.getparent().remove(dev.elem)
            changes.append(HostdevChange(addr, 'removed', guest))
        return changes


def hostdev_xml(source: PciAddress, managed: bool, rom: RomSpec | None = None) -> str:
    """A standalone ``<hostdev>`` for live attach / detach (no guest address)."""
    elem = etree.Element('hostdev', mode='subsystem', type='pci', managed='yes' if managed else 'no')
    src = etree.SubElement(elem, 'source')
    _set_addr(etree.SubElement(src, 'address'), source, guest=False)
    if rom is not None and not rom.empty:
        rom_elem = etree.SubElement(elem, 'rom')
        if rom.bar_on is not None:
            rom_elem.set('bar', 'on' if rom.bar_on else 'off')
        if rom.file is not None:
            rom_elem.set('file', rom.file)
    return etree.tostring(elem, encoding='unicode')


def canonical(root: Element) -> str:
    """One formatting for every XML the module shows, so diffs show only real changes."""
    copy = etree.fromstring(etree.tostring(root), etree.XMLParser(remove_blank_text=True))
    etree.indent(copy, space='  ')
    return etree.tostring(copy, encoding='unicode') + '\n'


def canonical_xml(xml: str) -> str:
    return canonical(DomainDefinition(xml).root)
