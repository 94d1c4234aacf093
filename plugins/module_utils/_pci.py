# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""PCI addresses, the PCI device read model, class and pci.ids names.

PRIVATE to the fleetgpu.passthrough collection: not a public API.
"""

from __future__ import annotations

import os
import re

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs

_ADDRESS_RE = re.compile(r'^(?:([0-9a-fA-F]{4,5}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$')
_ID_RE = re.compile(r'^(?:0x)?([0-9a-fA-F]{4})$')
# What YAML 1.1 makes of an unquoted address: 0000:41:00.0 and 41:00.0 are base-60 numbers
# (2460.0), which Ansible then hands over as the string '2460.0'.
_NUMBER_RE = re.compile(r'^-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?$')
_QUOTE_IT = ('YAML reads an unquoted address such as 0000:41:00.0 as a base-60 number; '
             'quote it ("0000:41:00.0")')
# Start of the next vendor (or class) line in pci.ids: a line that does not begin with a tab.
_NEXT_VENDOR_RE = re.compile(r'\n(?=[0-9a-fA-FC])')
# Start of the next device line within a vendor's block: one tab, then a hex digit.
_NEXT_DEVICE_RE = re.compile(r'\n(?=\t[0-9a-fA-F])')

PCI_IDS_PATHS = (
    '/usr/share/misc/pci.ids',
    '/usr/share/hwdata/pci.ids',
    '/usr/share/pci.ids',
    '/usr/local/share/pci.ids',
)

# Base class / subclass names (PCI Code and ID Assignment Specification).
CLASS_NAMES = {
    0x0000: 'Non-VGA unclassified device',
    0x0100: 'SCSI storage controller',
    0x0101: 'IDE interface',
    0x0104: 'RAID bus controller',
    0x0106: 'SATA controller',
    0x0107: 'Serial Attached SCSI controller',
    0x0108: 'Non-Volatile memory controller',
    0x0180: 'Mass storage controller',
    0x0200: 'Ethernet controller',
    0x0207: 'Infiniband controller',
    0x0280: 'Network controller',
    0x0300: 'VGA compatible controller',
    0x0301: 'XGA compatible controller',
    0x0302: '3D controller',
    0x0380: 'Display controller',
    0x0400: 'Multimedia video controller',
    0x0401: 'Multimedia audio controller',
    0x0403: 'Audio device',
    0x0480: 'Multimedia controller',
    0x0500: 'RAM memory',
    0x0580: 'Memory controller',
    0x0600: 'Host bridge',
    0x0601: 'ISA bridge',
    0x0604: 'PCI bridge',
    0x0609: 'Semi-transparent PCI-to-PCI bridge',
    0x0680: 'Bridge',
    0x0700: 'Serial controller',
    0x0780: 'Communication controller',
    0x0800: 'PIC',
    0x0806: 'IOMMU',
    0x0880: 'System peripheral',
    0x0c03: 'USB controller',
    0x0c05: 'SMBus',
    0x0c80: 'Serial bus controller',
    0x1080: 'Encryption controller',
    0x1200: 'Processing accelerators',
    0x1280: 'Processing accelerators',
    0x1300: 'Non-Essential Instrumentation',
    0xff00: 'Unassigned class',
}

BASE_CLASS_NAMES = {
    0x01: 'Mass storage controller',
    0x02: 'Network controller',
    0x03: 'Display controller',
    0x04: 'Multimedia controller',
    0x06: 'Bridge',
    0x0c: 'Serial bus controller',
    0x12: 'Processing accelerators',
}

CLASS_DISPLAY = 0x03
CLASS_ACCELERATOR = 0x12


class PciAddressError(FleetGpuError, ValueError):
    """A PCI address that is not valid."""


_PARSED: dict = {}


class PciIdError(FleetGpuError, ValueError):
    """A vendor / device id that is not four hex digits."""


class PciAddress:
    """A validated PCI address, ``DDDD:BB:SS.F`` (5-digit VMD domains allowed)."""

    __slots__ = ('domain', 'bus', 'slot', 'function')

    def __init__(self, domain: int, bus: int, slot: int, function: int) -> None:
        if not (0 <= domain <= 0xfffff and 0 <= bus <= 0xff and 0 <= slot <= 0x1f and 0 <= function <= 7):
            raise PciAddressError('PCI address out of range: %x:%x:%x.%x' % (domain, bus, slot, function))
        self.domain = domain
        self.bus = bus
        self.slot = slot
        self.function = function

    @classmethod
    def parse(cls, text: object) -> 'PciAddress':
        if isinstance(text, PciAddress):
            return text
        if isinstance(text, str):
            cached = _PARSED.get(text)
            if cached is not None:
                return cached
            addr = cls._parse(text)
            if len(_PARSED) < 65536:
                _PARSED[text] = addr
            return addr
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: object) -> 'PciAddress':
        if not isinstance(text, str):
            if isinstance(text, (int, float)) and not isinstance(text, bool):
                raise PciAddressError('PCI address %r is a number, not a string: %s' % (text, _QUOTE_IT))
            raise PciAddressError('PCI address %r is not a string (expected e.g. 0000:41:00.0)' % (text,))
        match = _ADDRESS_RE.match(text.strip())
        if not match and _NUMBER_RE.match(text.strip()):
            raise PciAddressError('invalid PCI address %r, a number: %s' % (text, _QUOTE_IT))
        if not match:
            raise PciAddressError(
                "invalid PCI address %r: expected [DDDD:]BB:SS.F with hex digits, "
                "slot 00-1f and function 0-7 (e.g. 0000:41:00.0)" % (text,))
        domain, bus, slot, function = match.groups()
        slot_n = int(slot, 16)
        if slot_n > 0x1f:
            raise PciAddressError('invalid PCI address %r: slot %s is above 1f' % (text, slot))
        return cls(int(domain or '0', 16), int(bus, 16), slot_n, int(function, 16))

    @property
    def slot_key(self) -> tuple[int, int, int]:
        """Functions of one physical device share this key."""
        return (self.domain, self.bus, self.slot)

    def __str__(self) -> str:
        return '%04x:%02x:%02x.%x' % (self.domain, self.bus, self.slot, self.function)

    def __repr__(self) -> str:
        return 'PciAddress(%r)' % str(self)

    def _key(self) -> tuple[int, int, int, int]:
        return (self.domain, self.bus, self.slot, self.function)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PciAddress) and self._key() == other._key()

    def __lt__(self, other: 'PciAddress') -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def parse_id(text: object, what: str = 'id') -> str:
    """Normalise a 16-bit PCI id (``10DE``, ``0x10de``) to ``10de``."""
    if isinstance(text, int):
        text = '%04x' % text
    match = _ID_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise PciIdError('invalid PCI %s %r: expected four hex digits such as 10de' % (what, text))
    return match.group(1).lower()


def class_name(class_code: int) -> str:
    """Name of a 24-bit class code (``0x030000`` -> ``VGA compatible controller``)."""
    sub = (class_code >> 8) & 0xffff
    if sub in CLASS_NAMES:
        return CLASS_NAMES[sub]
    return BASE_CLASS_NAMES.get(sub >> 8, 'Class %04x' % sub)


def is_bridge_class(class_code: int) -> bool:
    """PCI-to-PCI bridges and PCIe ports (0x0604 / 0x0609) and host bridges.

    NVSwitch-like "other bridge" devices (0x0680) are endpoints for the
    purpose of IOMMU grouping and are NOT treated as bridges here.
    """
    sub = (class_code >> 8) & 0xffff
    return sub in (0x0600, 0x0604, 0x0609)


def is_gpu_class(class_code: int, accelerators: bool = False) -> bool:
    base = class_code >> 16
    return base == CLASS_DISPLAY or (accelerators and base == CLASS_ACCELERATOR)


def is_companion(dev: 'PciDevice') -> bool:
    """Whether a function rides along with the GPU of its slot (and is passed through with it).

    The one definition of a companion: another function of the GPU's slot that is neither an
    SR-IOV virtual function nor a bridge.  Its kind (audio, usb, ucsi or other) is only a label.
    """
    return dev.physfn is None and not dev.is_bridge


def companion_kind(class_code: int) -> str:
    """The label of a companion function by its class: HDMI/DP audio, USB-C, UCSI, or other."""
    sub = (class_code >> 8) & 0xffff
    if sub in (0x0403, 0x0401):
        return 'audio'
    if sub == 0x0c03:
        return 'usb'
    if sub == 0x0c80:
        return 'ucsi'
    return 'other'


# Stands for "some NVIDIA node" when the driver is nvidia but its minor number cannot be read.
NVIDIA_ANY = '/dev/nvidia*'
_NVIDIA_NODE_RE = re.compile(r'^/dev/nvidia\d+\Z')


def nvidia_minor(sysfs: Sysfs, address: 'PciAddress') -> int | None:
    """The minor number of the nvidia driver's node for this GPU, from /proc/driver/nvidia."""
    info = sysfs.read(sysfs.proc('driver', 'nvidia', 'gpus', str(address), 'information'), default='')
    match = re.search(r'^Device Minor:\s*(\d+)\s*$', info, re.MULTILINE)
    return int(match.group(1)) if match else None


def device_nodes(sysfs: Sysfs, dev: 'PciDevice') -> list[str]:
    """The /dev paths through which a process uses this function: DRM, ALSA and NVIDIA nodes.

    The VFIO group node is not included (it belongs to the group, not the function).  Who holds a
    device is :meth:`Sysfs.open_devices` looked up with these paths and :func:`node_matches`.
    """
    nodes = ['/dev/dri/%s' % name for name in sysfs.listdir(dev.attr('drm'))
             if name.startswith('card') or name.startswith('renderD')]
    for card in sysfs.listdir(dev.attr('sound')):  # ALSA nodes of an HDMI/DP audio function
        if card.startswith('card'):
            nodes.extend('/dev/snd/%s' % name for name in sysfs.listdir(os.path.join(dev.attr('sound'), card))
                         if name.startswith(('controlC', 'pcmC', 'hwC')))
    if dev.driver == 'nvidia':
        minor = nvidia_minor(sysfs, dev.address)
        nodes.append(NVIDIA_ANY if minor is None else '/dev/nvidia%d' % minor)
    return nodes


def node_matches(node: str, target: str) -> bool:
    """Whether an open file (``target``) is the device node ``node`` (or any NVIDIA node for NVIDIA_ANY)."""
    return target == node or (node == NVIDIA_ANY and bool(_NVIDIA_NODE_RE.match(target)))


def processes_holding(sysfs: Sysfs, dev: 'PciDevice', open_devices: dict[str, list[tuple[int, str]]]) -> list[str]:
    """Processes that have a node of this function, or of its IOMMU group, open: ``"1234 (qemu) /dev/vfio/12"``.

    ``open_devices`` is :meth:`Sysfs.open_devices` (read once per run by the caller).
    """
    nodes = device_nodes(sysfs, dev)
    if dev.iommu_group is not None:
        nodes.append('/dev/vfio/%d' % dev.iommu_group)
    out: list[str] = []
    for target, procs in open_devices.items():
        if any(node_matches(node, target) for node in nodes):
            for pid, name in procs:
                entry = '%d (%s) %s' % (pid, name, target)
                if entry not in out:
                    out.append(entry)
    return out


class PciIds:
    """Vendor, device and subsystem names from the system's pci.ids.

    The file is read once and searched, not parsed whole: a vendor's block is
    found by a substring search, a device line within that block, and a
    subsystem line within the device's lines.  This keeps gpu_facts fast even
    for vendors with thousands of entries.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else next((p for p in PCI_IDS_PATHS if os.path.isfile(p)), None)
        self._text: str | None = None
        self._vendors: dict[str, tuple[str | None, int, int]] = {}
        self._devices: dict[tuple[str, str], tuple[str | None, int, int]] = {}

    def _load(self) -> str:
        if self._text is None:
            self._text = ''
            if self.path:
                try:
                    with open(self.path, 'r', encoding='utf-8', errors='replace') as handle:
                        self._text = '\n' + handle.read()
                except OSError:
                    self._text = ''
        return self._text

    def _vendor(self, vendor_id: str) -> tuple[str | None, int, int]:
        """(name, start, end) of a vendor's block; start/end bound its device lines."""
        found = self._vendors.get(vendor_id)
        if found is not None:
            return found
        text = self._load()
        result: tuple[str | None, int, int] = (None, 0, 0)
        pos = text.find('\n%s  ' % vendor_id)
        if pos >= 0:
            end = text.find('\n', pos + 1)
            end = len(text) if end < 0 else end
            nxt = _NEXT_VENDOR_RE.search(text, end)
            result = (text[pos + 7:end].strip(), end, nxt.start() if nxt else len(text))
        self._vendors[vendor_id] = result
        return result

    def _device_line(self, vendor_id: str, device_id: str) -> tuple[str | None, int, int]:
        """(name, end of the device line, end of its subsystem lines)."""
        key = (vendor_id, device_id)
        found = self._devices.get(key)
        if found is None:
            found = self._devices[key] = self._find_device_line(vendor_id, device_id)
        return found

    def _find_device_line(self, vendor_id: str, device_id: str) -> tuple[str | None, int, int]:
        _name, start, stop = self._vendor(vendor_id)
        if not stop:
            return None, 0, 0
        text = self._load()
        pos = text.find('\n\t%s  ' % device_id, start, stop)
        if pos < 0:
            return None, 0, 0
        end = text.find('\n', pos + 1)
        end = stop if end < 0 or end > stop else end
        nxt = _NEXT_DEVICE_RE.search(text, end, stop)
        return text[pos + 8:end].strip(), end, nxt.start() if nxt else stop

    def vendor_name(self, vendor_id: str) -> str | None:
        return self._vendor(vendor_id)[0]

    def device_name(self, vendor_id: str, device_id: str) -> str | None:
        return self._device_line(vendor_id, device_id)[0]

    def subsystem_name(self, vendor_id: str, device_id: str, sub_vendor: str, sub_device: str) -> str | None:
        name, start, stop = self._device_line(vendor_id, device_id)
        if name is None:
            return None
        text = self._load()
        pos = text.find('\n\t\t%s %s  ' % (sub_vendor, sub_device), start, stop)
        if pos < 0:
            return None
        end = text.find('\n', pos + 1)
        end = stop if end < 0 or end > stop else end
        return text[pos + 14:end].strip()


class PciDevice:
    """What the kernel says about one PCI function (non-blocking reads only).

    Attributes that may block on the device lock (``driver_override``,
    ``sriov_numvfs``) are not read here: see :func:`read_locked_attributes`.
    """

    def __init__(self, sysfs: Sysfs, address: PciAddress) -> None:
        self.sysfs = sysfs
        self.address = address
        self.path = sysfs.sys('bus', 'pci', 'devices', str(address))

    @classmethod
    def read(cls, sysfs: Sysfs, address: PciAddress) -> 'PciDevice':
        dev = cls(sysfs, address)
        if not sysfs.isdir(dev.path):
            raise PciDeviceNotFound('PCI device %s does not exist (no %s)' % (address, dev.path))
        dev.refresh()
        return dev

    def attr(self, name: str) -> str:
        return os.path.join(self.path, name)

    def refresh(self) -> None:
        s = self.sysfs
        self.vendor_id = _hex4(s.read(self.attr('vendor'), default=''))
        self.device_id = _hex4(s.read(self.attr('device'), default=''))
        self.subsystem_vendor_id = _hex4(s.read(self.attr('subsystem_vendor'), default=''))
        self.subsystem_device_id = _hex4(s.read(self.attr('subsystem_device'), default=''))
        self.class_code = s.read_int(self.attr('class'), 16, default=0)
        self.driver = s.link_name(self.attr('driver'))
        group = s.link_name(self.attr('iommu_group'))
        self.iommu_group = int(group) if group and group.isdigit() else None
        numa = s.read_int(self.attr('numa_node'), 10, default=-1)
        self.numa_node = numa if numa >= 0 else None
        self.boot_vga = s.read(self.attr('boot_vga'), default='0') == '1'
        self.physfn = _address_or_none(s.link_name(self.attr('physfn')))
        totalvfs = s.read(self.attr('sriov_totalvfs'), default=None)
        self.sriov_totalvfs = int(totalvfs) if totalvfs and totalvfs.isdigit() else None
        # virtfnN links exist only on a physical function with the SR-IOV capability
        self.virtfns = sorted(
            a for a in (_address_or_none(s.link_name(self.attr(n))) for n in s.listdir(self.path) if n.startswith('virtfn'))
            if a is not None) if self.sriov_totalvfs is not None else []
        self.mdev_types = s.listdir(self.attr('mdev_supported_types'))

    @property
    def is_bridge(self) -> bool:
        return is_bridge_class(self.class_code)

    @property
    def vendor_device(self) -> str:
        return '%s:%s' % (self.vendor_id, self.device_id)


class PciDeviceNotFound(FleetGpuError, LookupError):
    """No such device in /sys/bus/pci/devices."""


def read_locked_attributes(sysfs: Sysfs, devices: list[PciDevice], names: tuple[str, ...] = ('driver_override', 'sriov_numvfs', 'reset_method'),
                           timeout: float | None = None) -> tuple[dict[tuple[PciAddress, str], str | None], dict[PciAddress, list[str]]]:
    """Read attributes that may block on a stuck device, in one bounded batch.

    Returns ``(values, stuck)``: ``values[(address, name)]`` and, per device
    whose read did not return in time, the attribute names that were stuck.
    When one attribute of a device does not answer, the device's lock is held
    and its other attributes are reported stuck without trying them: each
    stuck device costs one ``timeout``, not one per attribute.
    """
    groups: list[list[str]] = []
    index: dict[str, tuple[PciAddress, str]] = {}
    for dev in devices:
        group = []
        for name in names:
            p = dev.attr(name)
            if os.path.lexists(p):
                group.append(p)
                index[p] = (dev.address, name)
        if group:
            groups.append(group)
    out: dict[tuple[PciAddress, str], str | None] = {}
    stuck: dict[PciAddress, list[str]] = {}
    if not groups:
        return out, stuck
    values, stuck_paths = sysfs.read_bounded_groups(groups, timeout)
    for p, v in values.items():
        out[index[p]] = v
    for p in stuck_paths:
        addr, name = index[p]
        stuck.setdefault(addr, []).append(name)
        out[(addr, name)] = None
    return out, stuck


def list_addresses(sysfs: Sysfs) -> list[PciAddress]:
    """Every PCI function the kernel knows, sorted."""
    out = []
    for name in sysfs.listdir(sysfs.sys('bus', 'pci', 'devices')):
        try:
            out.append(PciAddress.parse(name))
        except PciAddressError:
            continue
    return sorted(out)


def _hex4(text: str) -> str:
    text = text.strip().lower()
    if text.startswith('0x'):
        text = text[2:]
    return text.zfill(4) if text else ''


def _address_or_none(name: str | None) -> PciAddress | None:
    if not name:
        return None
    try:
        return PciAddress.parse(name)
    except PciAddressError:
        return None
