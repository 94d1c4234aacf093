# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Partitioned devices: SR-IOV virtual functions and mediated devices (mdev, vGPU).

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

What the kernel says about a device that can be split, read through :class:`Sysfs`:

* SR-IOV: a physical function (PF) has ``sriov_totalvfs`` and ``sriov_numvfs`` (the latter
  takes the device lock: read bounded), and one ``virtfnN`` link per enabled VF;
* mdev: every parent is linked in ``/sys/class/mdev_bus/<name>`` (a PCI address for a GPU, the
  device name for a virtual parent such as the kernel's sample ``mbochs``); its types are
  ``mdev_supported_types/<type id>/`` with ``name`` (the human name, "GRID T4-4Q"),
  ``description``, ``device_api``, ``available_instances`` and ``create``; a mediated device is
  ``/sys/bus/mdev/devices/<uuid>``, linked to its type by ``mdev_type``.

Also here: the stable UUID of a mediated device (:func:`stable_mdev_uuid`, also used by the
fleet), the udev rule that applies a VF count when the PF's driver binds, mdevctl's stored
definitions, and the record of what the collection created.
"""

from __future__ import annotations

import json
import os
import re
import uuid

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._files import HEADER
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (
    PciAddress,
    PciAddressError,
    PciDevice,
    PciDeviceNotFound,
    read_locked_attributes,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs

# The project's namespace for mediated-device UUIDs derived from names (uuid5).
MDEV_NAMESPACE = uuid.UUID('1176e8fa-4413-461a-932b-74c7c9aa3f65')

# The udev rules the collection writes, one file per physical function.
UDEV_RULES_DIR = '/etc/udev/rules.d'
UDEV_RULE_PREFIX = '70-fleetgpu-passthrough-sriov-'
# Where mdevctl keeps its definitions: /etc/mdevctl.d/<parent>/<uuid>.
MDEVCTL_DIR = '/etc/mdevctl.d'
# The record of the mediated devices the collection created (relative to the host's root).
RECORD_PATH = '/var/lib/fleetgpu-passthrough/partition.json'
RECORD_VERSION = 1

_UUID_RE = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z')
_RULE_RE = re.compile(r'^ACTION=="(?:add\|)?bind", SUBSYSTEM=="pci", KERNEL=="([0-9a-f:.]+)", (?:DRIVER=="\?\*", )?'
                      r'ATTR\{sriov_numvfs\}="(\d+)"$', re.MULTILINE)
# The collection's udev rule that starts the persisted mediated devices of a parent when it appears.
# mdevctl ships such a rule, but Debian 12's (mdevctl 1.2.0) runs /usr/sbin/mdevctl, which the package
# installs as /usr/bin/mdevctl: the devices it defines with --auto are then never started at boot.
MDEV_RULE = '/etc/udev/rules.d/70-fleetgpu-passthrough-mdev.rules'
_MDEV_RULE_RE = re.compile(r'^ACTION=="change", ENV\{MDEV_STATE\}=="registered", KERNEL=="([^"]+)"', re.MULTILINE)


class PartitionError(FleetGpuError):
    """A request to split a device that cannot be met (bad input, capacity, in use)."""


def stable_mdev_uuid(parent: str, type_id: str, label: str) -> str:
    """The UUID of the mediated device ``label`` of type ``type_id`` on ``parent``: the same on every run and host."""
    return str(uuid.uuid5(MDEV_NAMESPACE, '%s/%s/%s' % (parent, type_id, label)))


def check_uuid(value: object, what: str = 'uuid') -> str:
    """A UUID in the kernel's form (lower case, with dashes), or :class:`PartitionError` naming the input."""
    text = str(value).strip().lower()
    if not _UUID_RE.match(text):
        raise PartitionError('%s %r is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)' % (what, value))
    return text


# ----------------------------------------------------------------------------- mdev
class MdevType:
    """One type a parent offers."""

    def __init__(self, sysfs: Sysfs, path: str) -> None:
        self.path = path
        self.id = os.path.basename(path)
        read = sysfs.read
        self.name = read(os.path.join(path, 'name'), default='') or self.id
        self.description = read(os.path.join(path, 'description'), default='')
        self.device_api = read(os.path.join(path, 'device_api'), default='') or None
        self.available_instances = sysfs.read_int(os.path.join(path, 'available_instances'), 10, default=0)

    def label(self) -> str:
        return '%s (%s)' % (self.id, self.name) if self.name != self.id else self.id

    def as_dict(self) -> dict:
        return {'type': self.id, 'type_name': self.name, 'description': self.description,
                'device_api': self.device_api, 'available_instances': self.available_instances}


class MdevParent:
    """A device that offers mediated-device types (``/sys/class/mdev_bus/<name>``)."""

    def __init__(self, sysfs: Sysfs, name: str) -> None:
        self.name = name
        self.path = os.path.realpath(sysfs.sys('class', 'mdev_bus', name))
        tdir = os.path.join(self.path, 'mdev_supported_types')
        self.types = {t: MdevType(sysfs, os.path.join(tdir, t)) for t in sysfs.listdir(tdir)}

    def offered(self) -> str:
        return ', '.join(t.label() for t in self.types.values()) or 'none'

    def find_type(self, text: object) -> MdevType:
        """The type named by its id (``nvidia-63``) or its human name (``GRID T4-4Q``, case-insensitive)."""
        want = str(text).strip()
        if want in self.types:
            return self.types[want]
        by_name = [t for t in self.types.values() if t.name.lower() == want.lower()]
        if len(by_name) == 1:
            return by_name[0]
        if len(by_name) > 1:
            raise PartitionError('type %r is ambiguous on %s: it is the name of %s; give the type id'
                                 % (want, self.name, ', '.join(t.id for t in by_name)))
        raise PartitionError('type %r is not offered by %s; it offers: %s' % (want, self.name, self.offered()))


class Mdev:
    """A mediated device that exists now (``/sys/bus/mdev/devices/<uuid>``)."""

    def __init__(self, sysfs: Sysfs, uuid_text: str) -> None:
        self.uuid = uuid_text
        link = sysfs.sys('bus', 'mdev', 'devices', uuid_text)
        self.path = os.path.realpath(link)
        type_dir = os.path.realpath(os.path.join(self.path, 'mdev_type'))
        self.type_id = os.path.basename(type_dir)
        self.type_name = sysfs.read(os.path.join(type_dir, 'name'), default='') or self.type_id
        # the parent is the directory that holds the device; its mdev_bus name is its own name
        self.parent = os.path.basename(os.path.dirname(self.path))
        group = sysfs.link_name(os.path.join(self.path, 'iommu_group'))
        self.iommu_group = int(group) if group and group.isdigit() else None


def mdev_parent_names(sysfs: Sysfs) -> list[str]:
    return sysfs.listdir(sysfs.sys('class', 'mdev_bus'))


def list_mdevs(sysfs: Sysfs) -> list[Mdev]:
    return [Mdev(sysfs, u) for u in sysfs.listdir(sysfs.sys('bus', 'mdev', 'devices'))]


def parent_name(sysfs: Sysfs, text: object) -> str:
    """The mdev_bus / PCI name of a ``parent`` option: a PCI address (short form accepted) or an mdev_bus name."""
    raw = str(text).strip()
    if not raw:
        raise PartitionError('parent is empty: give a PCI address (0000:03:00.0) or the name of an mdev parent')
    if raw in mdev_parent_names(sysfs):
        return raw
    try:
        address = str(PciAddress.parse(raw))
    except PciAddressError:
        address = ''
    if address:
        if not sysfs.isdir(sysfs.sys('bus', 'pci', 'devices', address)):
            raise PartitionError('parent %s: no PCI device at that address on this host' % address)
        return address
    raise PartitionError('parent %r is neither a PCI address nor an mdev parent of this host (mdev parents: %s)'
                         % (raw, ', '.join(mdev_parent_names(sysfs)) or 'none'))


def mdevctl_definitions(root_dir: str) -> dict[str, str]:
    """UUID -> parent of every mediated device mdevctl has a definition of, under ``root_dir``."""
    out: dict[str, str] = {}
    base = os.path.join(root_dir, MDEVCTL_DIR.lstrip('/'))
    try:
        parents = sorted(os.listdir(base))
    except OSError:
        return out
    for parent in parents:
        try:
            names = sorted(os.listdir(os.path.join(base, parent)))
        except OSError:
            continue
        for name in names:
            if _UUID_RE.match(name):
                out[name] = parent
    return out


# ----------------------------------------------------------------------------- who holds a device
def qemu_domain(sysfs: Sysfs, pid: int) -> str | None:
    """The libvirt domain a QEMU process runs (``-name guest=NAME,...``), from its command line."""
    raw = sysfs.read(sysfs.proc(str(pid), 'cmdline'), default='')
    args = raw.split('\x00')
    for index, arg in enumerate(args[:-1]):
        if arg == '-name':
            value = args[index + 1]
            for part in value.split(','):
                if part.startswith('guest='):
                    return part[len('guest='):]
            return value.split(',', 1)[0] or None
    return None


def group_holders(sysfs: Sysfs, group: int | None, open_devices: dict[str, list[tuple[int, str]]]) -> list[str]:
    """Who has ``/dev/vfio/<group>`` open: the domain name of a QEMU process, else ``"PID (comm)"``."""
    if group is None:
        return []
    out: list[str] = []
    for pid, name in open_devices.get('/dev/vfio/%d' % group, []):
        domain = qemu_domain(sysfs, pid)
        entry = domain if domain else '%d (%s)' % (pid, name)
        if entry not in out:
            out.append(entry)
    return out


# ----------------------------------------------------------------------------- SR-IOV
class SriovState:
    """A physical function's SR-IOV state."""

    def __init__(self, dev: PciDevice, numvfs: int | None, offset: int | None, stride: int | None) -> None:
        self.dev = dev
        self.address = dev.address
        self.totalvfs = dev.sriov_totalvfs or 0
        self.numvfs = numvfs
        self.offset = offset
        self.stride = stride
        self.driver = dev.driver
        self.vfs = list(dev.virtfns)

    def vf_addresses(self, count: int) -> list[str]:
        """The addresses ``count`` VFs get (first VF routing ID = PF + offset, then + stride each)."""
        if self.offset is None or self.stride is None:
            return []
        a = self.address
        base = (a.bus << 8) | (a.slot << 3) | a.function
        out = []
        for index in range(count):
            rid = base + self.offset + index * self.stride
            out.append('%04x:%02x:%02x.%x' % (a.domain, (rid >> 8) & 0xff, (rid >> 3) & 0x1f, rid & 7))
        return out


def read_sriov(sysfs: Sysfs, address: PciAddress, timeout: float | None = None, strict: bool = True) -> SriovState | None:
    """The SR-IOV state of a PCI function, None when it has no SR-IOV capability (or sriov_totalvfs is 0).

    Raises :class:`PartitionError` when the function does not exist or ``sriov_numvfs`` does not answer.
    """
    try:
        dev = PciDevice.read(sysfs, address)
    except PciDeviceNotFound:
        raise PartitionError('parent %s: no PCI device at that address on this host' % address) from None
    if not dev.sriov_totalvfs:
        return None
    values, stuck = read_locked_attributes(sysfs, [dev], ('sriov_numvfs',), timeout=timeout)
    if stuck and strict:
        raise PartitionError('%s: reading sriov_numvfs did not return within the time bound (the device lock is held, '
                             'probably by a driver stuck in its probe); nothing was changed' % address)
    text = values.get((address, 'sriov_numvfs'))
    numvfs = int(text) if text and text.isdigit() else None
    offset = sysfs.read_int(dev.attr('sriov_offset'), 10, default=None)
    stride = sysfs.read_int(dev.attr('sriov_stride'), 10, default=None)
    return SriovState(dev, numvfs, offset, stride)


def sriov_addresses(sysfs: Sysfs) -> list[PciAddress]:
    """Every PCI function with ``sriov_totalvfs`` greater than 0."""
    out = []
    for name in sysfs.listdir(sysfs.sys('bus', 'pci', 'devices')):
        total = sysfs.read(sysfs.sys('bus', 'pci', 'devices', name, 'sriov_totalvfs'), default='')
        if total.isdigit() and int(total) > 0:
            try:
                out.append(PciAddress.parse(name))
            except PciAddressError:
                continue
    return sorted(out)


def udev_rule_path(address: PciAddress | str) -> str:
    """The collection's udev rule for one PF (an absolute path on the target host)."""
    return '%s/%s%s.rules' % (UDEV_RULES_DIR, UDEV_RULE_PREFIX, address)


def udev_rule_text(address: PciAddress | str, numvfs: int) -> str:
    """The rule that sets ``sriov_numvfs`` when the PF's driver binds (no race: the PF driver is there)."""
    return ('# %s\n'
            '# Enables %d SR-IOV virtual function(s) on %s each time its driver binds (gpu_partition).\n'
            '# On "bind", and on the "add" that udev replays at boot for a PF its driver bound before udev ran.\n'
            'ACTION=="add|bind", SUBSYSTEM=="pci", KERNEL=="%s", DRIVER=="?*", ATTR{sriov_numvfs}="%d"\n'
            % (HEADER, numvfs, address, address, numvfs))


def mdev_rule_text(parents: list[str], mdevctl: str) -> str | None:
    """The rule that starts the persisted mdevs of ``parents`` when each appears: on the kernel's
    ``MDEV_STATE=registered`` change event, and on the ``add`` event that udev replays at boot for a parent that
    registered before udev listened (its ``mdev_supported_types`` is there then). None for no parent."""
    if not parents:
        return None
    lines = ['# %s' % HEADER,
             '# Starts the mediated devices that mdevctl keeps (--auto) when their parent appears (gpu_partition).']
    for parent in parents:
        lines.append('ACTION=="change", ENV{MDEV_STATE}=="registered", KERNEL=="%s", RUN+="%s start-parent-mdevs $kernel"'
                     % (parent, mdevctl))
        lines.append('ACTION=="add", KERNEL=="%s", TEST=="mdev_supported_types", RUN+="%s start-parent-mdevs $kernel"'
                     % (parent, mdevctl))
    return '\n'.join(lines) + '\n'


def mdev_rule_parents(text: str | None) -> list[str]:
    """The parents a rule written by :func:`mdev_rule_text` starts devices of."""
    return sorted(set(_MDEV_RULE_RE.findall(text or '')))


def udev_rule_count(text: str | None) -> int | None:
    """The VF count a rule written by :func:`udev_rule_text` applies, None for no (or another) file."""
    if not text:
        return None
    match = _RULE_RE.search(text)
    return int(match.group(2)) if match else None


# ----------------------------------------------------------------------------- the record
def record_path(root_dir: str) -> str:
    return os.path.join(root_dir, RECORD_PATH.lstrip('/'))


def load_record(path: str) -> dict[str, dict]:
    """UUID -> {parent, type, name} of the mediated devices the collection created (empty when no record)."""
    try:
        with open(path, 'r', encoding='utf-8') as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise PartitionError('the record %s cannot be read (%s); it is left as it is' % (path, exc)) from None
    if not isinstance(data, dict) or data.get('version') != RECORD_VERSION or not isinstance(data.get('mdevs'), dict):
        raise PartitionError('the record %s is not a gpu_partition record of version %d; it is left as it is'
                             % (path, RECORD_VERSION))
    return {str(k): dict(v) for k, v in data['mdevs'].items() if isinstance(v, dict)}


def record_text(mdevs: dict[str, dict]) -> str:
    return json.dumps({'version': RECORD_VERSION, 'mdevs': mdevs}, indent=1, sort_keys=True) + '\n'


# ----------------------------------------------------------------------------- facts
def _holder(sysfs: Sysfs, group: int | None, open_devices: dict[str, list[tuple[int, str]]]) -> str | None:
    users = group_holders(sysfs, group, open_devices)
    return ', '.join(users) if users else None


def mdev_parents_facts(sysfs: Sysfs, open_devices: dict[str, list[tuple[int, str]]]) -> list[dict]:
    """gpu_facts' ``mdev_parents``: every parent in /sys/class/mdev_bus, its types and its mediated devices.

    ``persistent`` is true when mdevctl has a definition of the device, ``collection`` when the collection's
    record lists it (both read below the host root, the parent of ``sysfs_root``); ``held_by`` names who has the
    device's ``/dev/vfio/<group>`` open (the libvirt domain of a QEMU process, from its ``-name guest=``).
    """
    defined = mdevctl_definitions(sysfs.host())
    try:
        record = load_record(record_path(sysfs.host()))
    except PartitionError:
        record = {}
    by_parent: dict[str, list[Mdev]] = {}
    for mdev in list_mdevs(sysfs):
        by_parent.setdefault(mdev.parent, []).append(mdev)
    out = []
    for name in mdev_parent_names(sysfs):
        parent = MdevParent(sysfs, name)
        out.append({
            'parent': name,
            'types': [t.as_dict() for t in parent.types.values()],
            'mdevs': [{'uuid': m.uuid, 'type': m.type_id, 'type_name': m.type_name, 'parent': name,
                       'iommu_group': m.iommu_group, 'held_by': _holder(sysfs, m.iommu_group, open_devices),
                       'persistent': m.uuid in defined, 'collection': m.uuid in record}
                      for m in sorted(by_parent.get(name, []), key=lambda m: m.uuid)],
        })
    return out


def sriov_parents_facts(sysfs: Sysfs, open_devices: dict[str, list[tuple[int, str]]],
                        timeout: float | None = None) -> list[dict]:
    """gpu_facts' ``sriov_parents``: every PCI function with sriov_totalvfs > 0 (GPU or not), its VFs and who
    holds them, and the VF count the collection's udev rule applies at boot (``persisted``, null without one)."""
    out = []
    for address in sriov_addresses(sysfs):
        try:
            state = read_sriov(sysfs, address, timeout, strict=False)   # numvfs None when it does not answer
        except PartitionError:
            state = None
        if state is None:
            continue
        vfs = []
        for vf in state.vfs:
            dev_path = sysfs.sys('bus', 'pci', 'devices', str(vf))
            group_name = sysfs.link_name(os.path.join(dev_path, 'iommu_group'))
            group = int(group_name) if group_name and group_name.isdigit() else None
            vfs.append({'address': str(vf), 'driver': sysfs.link_name(os.path.join(dev_path, 'driver')),
                        'iommu_group': group, 'held_by': _holder(sysfs, group, open_devices)})
        rule = sysfs.read(sysfs.host(udev_rule_path(address).lstrip('/')), default='')
        out.append({'address': str(address), 'totalvfs': state.totalvfs, 'numvfs': state.numvfs,
                    'driver': state.driver, 'vfs': vfs, 'persisted': udev_rule_count(rule)})
    return out
