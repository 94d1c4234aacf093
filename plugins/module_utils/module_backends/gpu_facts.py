# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The gpu_facts engine: GPUs, their IOMMU groups, companions and states.

PRIVATE to the fleetgpu.passthrough collection: not a public API.

:func:`gather` returns the ``gpu_passthrough`` fact (``host``, ``gpus``, ``mdev_parents``, ``sriov_parents``)
described in the collection's facts contract.  It reads only the class of
every PCI function; the full read model is built for the selected GPUs, the
members of their groups and the functions of their slots.  Attributes that
take the device lock are read in one bounded batch, so a device stuck in its
driver's probe is reported in ``stuck`` instead of hanging.
"""

from __future__ import annotations

import os

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._iommu import (
    VFIO_DRIVERS,
    HostIommu,
    describe,
    member_view,
    offending_members,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._partition import mdev_parents_facts, sriov_parents_facts
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (
    PciAddress,
    PciAddressError,
    PciDevice,
    PciIdError,
    PciIds,
    class_name,
    companion_kind,
    device_nodes,
    is_companion,
    is_gpu_class,
    list_addresses,
    parse_id,
    read_locked_attributes,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._reset_health import Quarantine, record_path
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._topology import numa_nodes, pci_path, read_bars


class FactsError(FleetGpuError):
    """Bad input to gpu_facts (unknown device, malformed address or id)."""


def parse_addresses(values: list | None, option: str = 'addresses') -> list[PciAddress]:
    out: list[PciAddress] = []
    for value in values or []:
        try:
            out.append(PciAddress.parse(value))
        except PciAddressError as exc:
            raise FactsError('%s: %s' % (option, exc)) from None
    return out


def parse_vendors(values: list | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        try:
            out.append(parse_id(value, 'vendor id'))
        except PciIdError as exc:
            raise FactsError('vendors: %s' % exc) from None
    return out


def cpu_vendor_kind(vendor_id: str | None) -> str:
    if vendor_id == 'GenuineIntel':
        return 'intel'
    if vendor_id in ('AuthenticAMD', 'HygonGenuine'):
        return 'amd'
    return 'other'


def modules_builtin(sysfs: Sysfs, release: str | None) -> list[str]:
    if not release:
        return []
    text = sysfs.read(sysfs.host('lib', 'modules', release, 'modules.builtin'), default='')
    return [line.strip() for line in text.splitlines() if line.strip()]


def module_is_builtin(builtin: list[str], name: str) -> bool:
    """``vfio_pci`` against ``kernel/drivers/vfio/pci/vfio-pci.ko`` lines."""
    want = name.replace('-', '_')
    for line in builtin:
        base = os.path.basename(line)
        base = base.split('.ko', 1)[0]
        if base.replace('-', '_') == want:
            return True
    return False


def host_facts(sysfs: Sysfs, iommu: HostIommu) -> dict:
    vendor = sysfs.cpu_vendor()
    flags = sysfs.cpu_flags()
    release = sysfs.kernel_release()
    virt = 'vmx' if 'vmx' in flags else ('svm' if 'svm' in flags else None)
    return {
        'cpu_vendor': cpu_vendor_kind(vendor),
        'cpu_vendor_id': vendor,
        'virtualization': virt,
        'iommu_enabled': iommu.enabled,
        'iommu_type': iommu.type,
        'interrupt_remapping': iommu.interrupt_remapping,
        'cmdline': iommu.cmdline,
        'kernel_release': release,
        'vfio_pci_builtin': module_is_builtin(modules_builtin(sysfs, release), 'vfio_pci'),
        'numa_nodes': numa_nodes(sysfs),
    }


def _split_words(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return text.split()


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


class GpuFacts:
    """One gathering of the gpu_passthrough fact."""

    def __init__(self, sysfs: Sysfs, vendors: list | None = None, addresses: list | None = None,
                 include_accelerators: bool = False, pci_ids: PciIds | None = None) -> None:
        self.sysfs = sysfs
        self.vendors = parse_vendors(vendors)
        self.addresses = parse_addresses(addresses)
        self.accelerators = include_accelerators
        self.pci_ids = pci_ids if pci_ids is not None else PciIds()
        self._cache: dict[PciAddress, PciDevice] = {}

    def device(self, addr: PciAddress) -> PciDevice:
        dev = self._cache.get(addr)
        if dev is None:
            dev = PciDevice.read(self.sysfs, addr)
            self._cache[addr] = dev
        return dev

    def select(self) -> list[PciAddress]:
        s = self.sysfs
        if not s.isdir(s.sys('bus', 'pci', 'devices')):
            raise FactsError('%s is not a sysfs tree with PCI devices (no bus/pci/devices): check sysfs_root'
                             % s.sys_root)
        if self.addresses:
            missing = [str(a) for a in self.addresses if not s.isdir(s.sys('bus', 'pci', 'devices', str(a)))]
            if missing:
                raise FactsError('addresses: no PCI device %s on this host (not in %s)'
                                 % (', '.join(missing), s.sys('bus', 'pci', 'devices')))
            chosen = sorted(set(self.addresses))
        else:
            chosen = []
            for addr in list_addresses(s):
                text = s.read(s.sys('bus', 'pci', 'devices', str(addr), 'class'), default='')
                try:
                    code = int(text, 16)
                except ValueError:
                    continue
                if is_gpu_class(code, self.accelerators):
                    chosen.append(addr)
        if self.vendors:
            chosen = [a for a in chosen if self.device(a).vendor_id in self.vendors]
        return chosen

    def gather(self, timeout: float | None = None) -> dict:
        s = self.sysfs
        iommu = HostIommu(s)
        host = host_facts(s, iommu)
        chosen = self.select()
        gpus = [self.device(a) for a in chosen]
        locked, stuck = read_locked_attributes(s, gpus, timeout=timeout)
        holders = s.open_devices()
        slot_index: dict[tuple[int, int, int], list[PciAddress]] = {}
        if gpus:
            wanted = set(g.address.slot_key for g in gpus)
            for addr in list_addresses(s):
                if addr.slot_key in wanted:
                    slot_index.setdefault(addr.slot_key, []).append(addr)
        out = [self._one(g, iommu, host, locked, stuck.get(g.address, []), holders, slot_index) for g in gpus]
        if gpus:
            # the reset-health quarantine (gpu_quarantine, vfio_bind's give-back, libvirt_hostdev's attach)
            record = Quarantine.load(record_path(s))
            for row in out:
                row['quarantined'] = record.get(row['address']) or False
        return {'host': host, 'gpus': out, 'mdev_parents': mdev_parents_facts(s, holders),
                'sriov_parents': sriov_parents_facts(s, holders, timeout)}

    def _one(self, dev: PciDevice, iommu: HostIommu, host: dict, locked: dict, stuck: list[str],
             holders: dict[str, list[tuple[int, str]]], slot_index: dict) -> dict:
        ids = self.pci_ids
        addr = dev.address
        group = dev.iommu_group if dev.iommu_group is not None else iommu.group_of.get(addr)
        members: list[PciDevice] = []
        if group is not None:
            members = [self.device(a) for a in iommu.groups.get(group, [])]
        companions = []
        for other in slot_index.get(addr.slot_key, []):
            if other == addr:
                continue
            odev = self.device(other)
            # a GPU function of the same slot is reported as a GPU of its own
            if not is_companion(odev) or is_gpu_class(odev.class_code, self.accelerators):
                continue
            companions.append({
                'address': str(other), 'vendor_id': odev.vendor_id, 'device_id': odev.device_id,
                'class': '0x%06x' % odev.class_code, 'class_name': class_name(odev.class_code),
                'driver': odev.driver, 'kind': companion_kind(odev.class_code),
            })
        numvfs = _int_or_none(locked.get((addr, 'sriov_numvfs')))
        sriov = {
            'totalvfs': dev.sriov_totalvfs,
            'numvfs': numvfs,
            'is_vf': dev.physfn is not None,
            'physfn': str(dev.physfn) if dev.physfn is not None else None,
            'vfs': [str(v) for v in dev.virtfns],
        }
        state, reasons = self._state(dev, group, members, iommu, stuck, holders)
        bars = read_bars(self.sysfs, dev)
        path = pci_path(self.sysfs, dev)
        return {
            'address': str(addr),
            'vendor_id': dev.vendor_id,
            'device_id': dev.device_id,
            'vendor_device': dev.vendor_device,
            'subsystem_vendor_id': dev.subsystem_vendor_id,
            'subsystem_device_id': dev.subsystem_device_id,
            'class': '0x%06x' % dev.class_code,
            'class_name': class_name(dev.class_code),
            'vendor_name': ids.vendor_name(dev.vendor_id),
            'device_name': ids.device_name(dev.vendor_id, dev.device_id),
            'subsystem_name': ids.subsystem_name(dev.vendor_id, dev.device_id,
                                                 dev.subsystem_vendor_id, dev.subsystem_device_id),
            'driver': dev.driver,
            'driver_override': _override(locked.get((addr, 'driver_override'))),
            'iommu_group': group,
            'iommu_group_members': [member_view(m) for m in members],
            'companions': companions,
            'boot_vga': dev.boot_vga,
            'numa_node': dev.numa_node,
            'bars': bars,
            'bar_bytes': sum(b['bytes'] for b in bars),
            'root_complex': path['root_complex'],
            'root_port': path['root_port'],
            'upstream_bridges': path['upstream'],
            'reset_method': _split_words(locked.get((addr, 'reset_method'))),
            'sriov': sriov,
            'mdev_types': dev.mdev_types,
            'state': state,
            'state_reasons': reasons,
            'stuck': stuck,
        }

    def _state(self, dev: PciDevice, group: int | None, members: list[PciDevice], iommu: HostIommu,
               stuck: list[str], holders: dict[str, list[tuple[int, str]]]) -> tuple[str, list[str]]:
        unusable: list[str] = []
        if not iommu.enabled:
            unusable.append('the IOMMU is off on this host (no IOMMU groups): enable it on the kernel command line '
                            '(intel_iommu=on for Intel; AMD-Vi is on by default) and reboot')
        elif group is None:
            unusable.append('%s has no IOMMU group' % dev.address)
        else:
            for bad in offending_members(members, {dev.address}, gpu_functions_ok=True, accelerators=self.accelerators):
                unusable.append('group %d holds %s which is not a GPU function' % (group, describe(bad)))
        if stuck:
            unusable.append('%s did not answer within the time bound (%s): the device lock is held, '
                            'probably by a driver stuck in its probe' % (dev.address, ', '.join(stuck)))
        in_use: list[str] = []
        for node in device_nodes(self.sysfs, dev):
            for pid, name in holders.get(node, []):
                in_use.append('%s is open by process %d (%s)' % (node, pid, name))
        if group is not None and dev.driver in VFIO_DRIVERS:
            node = '/dev/vfio/%d' % group
            for pid, name in holders.get(node, []):
                in_use.append('%s (group %d) is open by process %d (%s)' % (node, group, pid, name))
        boot = '%s is the boot VGA device (the host console runs on it)' % dev.address
        if unusable:
            # every other reason too, so one look tells all that stands in the way
            return 'unusable', unusable + ([boot] if dev.boot_vga else []) + in_use
        if dev.boot_vga:
            return 'boot-vga', [boot] + in_use
        if in_use:
            return 'in-use', in_use
        if dev.driver in VFIO_DRIVERS:
            return 'vfio-ready', ['%s is bound to %s' % (dev.address, dev.driver)]
        return 'available', ['%s is %s and its group can be handed to a VM'
                             % (dev.address, 'on %s' % dev.driver if dev.driver else 'without a driver')]


def _override(text: str | None) -> str | None:
    if text is None or text == '(null)' or text == '':
        return None
    return text


def gather(sysfs: Sysfs, vendors: list | None = None, addresses: list | None = None,
           include_accelerators: bool = False, timeout: float | None = None,
           pci_ids: PciIds | None = None) -> dict:
    """The ``gpu_passthrough`` fact.  Raises :class:`FactsError` for bad input."""
    return GpuFacts(sysfs, vendors, addresses, include_accelerators, pci_ids).gather(timeout)
