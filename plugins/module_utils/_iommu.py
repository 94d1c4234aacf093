# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""IOMMU groups, group viability and the host's IOMMU state.

PRIVATE to the fleetgpu.passthrough collection: not a public API.

Everything is read through :class:`Sysfs`; nothing here blocks on a device
lock (group membership comes from symlinks, the driver from the ``driver``
link, the IOMMU units from ``/sys/class/iommu``).
"""

from __future__ import annotations

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import split as cmdline_split
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (
    PciAddress,
    PciAddressError,
    PciDevice,
    class_name,
    is_gpu_class,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs

# Drivers under which a device does not keep its group from being handed to a VM.
VFIO_DRIVERS = ('vfio-pci',)
# Drivers the kernel's vfio accepts in a group beside vfio-bound devices (bridges, stubs).
NEUTRAL_DRIVERS = ('pci-stub', 'pcieport')

# Intel VT-d extended capability register: bit 3 = interrupt remapping support.
ECAP_IR_BIT = 3

# Command-line tokens that switch interrupt remapping off.
_IR_OFF_TOKENS = ('intremap=off', 'nointremap', 'amd_iommu=nointremap', 'amd_iommu_intr=off')


def cmdline_values(cmdline: str, key: str) -> list[str]:
    """Every value given to ``key`` (``intel_iommu=on,sm_on`` -> ``['on', 'sm_on']``)."""
    out: list[str] = []
    for token in cmdline_split(cmdline):
        name, sep, value = token.partition('=')
        if name == key and sep:
            out.extend(v for v in value.split(',') if v)
    return out


def list_groups(sysfs: Sysfs) -> dict[int, list[PciAddress]]:
    """IOMMU group number -> member addresses (sorted), from /sys/kernel/iommu_groups."""
    groups: dict[int, list[PciAddress]] = {}
    base = sysfs.sys('kernel', 'iommu_groups')
    for name in sysfs.listdir(base):
        if name.isdigit():
            groups[int(name)] = group_members(sysfs, int(name))
    return groups


def group_members(sysfs: Sysfs, group: int) -> list[PciAddress]:
    """The member addresses (sorted) of one IOMMU group; the one reader of a group's ``devices``."""
    out: list[PciAddress] = []
    for addr in sysfs.listdir(sysfs.sys('kernel', 'iommu_groups', str(group), 'devices')):
        try:
            out.append(PciAddress.parse(addr))
        except PciAddressError:
            continue
    return sorted(out)


def iommu_units(sysfs: Sysfs) -> list[str]:
    """Names under /sys/class/iommu (``dmar0``, ``ivhd0``...)."""
    return sysfs.listdir(sysfs.sys('class', 'iommu'))


def iommu_type(units: list[str]) -> str | None:
    if not units:
        return None
    if any(u.startswith('dmar') for u in units):
        return 'intel'
    if any(u.startswith('ivhd') for u in units):
        return 'amd'
    return 'other'


def intel_ecap_ir(sysfs: Sysfs, units: list[str]) -> bool | None:
    """True when every DMAR unit's ecap advertises interrupt remapping, None when unreadable."""
    seen = False
    for unit in units:
        if not unit.startswith('dmar'):
            continue
        text = sysfs.read(sysfs.sys('class', 'iommu', unit, 'intel-iommu', 'ecap'), default=None)
        if text is None:
            continue
        try:
            value = int(text, 16)
        except ValueError:
            continue
        seen = True
        if not (value >> ECAP_IR_BIT) & 1:
            return False
    return True if seen else None


def interrupts_remapped(sysfs: Sysfs) -> bool:
    """True when /proc/interrupts lists an interrupt of the remapping domain (``IR-`` chips)."""
    text = sysfs.read(sysfs.proc('interrupts'), default='')
    return ' IR-' in text


def interrupt_remapping(sysfs: Sysfs, units: list[str], cmdline: str) -> bool | None:
    """Whether interrupt remapping is on, as far as sysfs and the command line tell.

    Off when the command line turns it off.  On when /proc/interrupts shows
    interrupt chips of the remapping domain (``IR-PCI-MSI``, ``IR-IO-APIC``).
    Otherwise, Intel: the DMAR units' ecap IR bit; AMD: an IVHD unit implies
    remapping.  None when there is no IOMMU unit to judge from.
    """
    kind = iommu_type(units)
    if kind is None:
        return None
    tokens = cmdline_split(cmdline)
    if any(t in tokens for t in _IR_OFF_TOKENS):
        return False
    if interrupts_remapped(sysfs):
        return True
    if kind == 'intel':
        return intel_ecap_ir(sysfs, units)
    if kind == 'amd':
        return True
    return None


class HostIommu:
    """The host's IOMMU state."""

    def __init__(self, sysfs: Sysfs) -> None:
        self.units = iommu_units(sysfs)
        self.groups = list_groups(sysfs)
        self.cmdline = sysfs.cmdline()
        self.enabled = bool(self.groups) or bool(self.units)
        self.type = iommu_type(self.units)
        self.interrupt_remapping = interrupt_remapping(sysfs, self.units, self.cmdline)
        self.group_of: dict[PciAddress, int] = {}
        for number, members in self.groups.items():
            for addr in members:
                self.group_of[addr] = number


def member_view(dev: PciDevice) -> dict:
    return {
        'address': str(dev.address),
        'vendor_id': dev.vendor_id,
        'device_id': dev.device_id,
        'class': '0x%06x' % dev.class_code,
        'class_name': class_name(dev.class_code),
        'driver': dev.driver,
        'is_bridge': dev.is_bridge,
    }


def offending_members(members: list[PciDevice], targets: set[PciAddress], gpu_functions_ok: bool = False,
                      accelerators: bool = False) -> list[PciDevice]:
    """Members that keep a group from being handed to a VM.

    A member is fine when it is a target, a function of the same slot as a
    target (it goes along with it), a bridge or PCIe port, or already on
    vfio-pci / pci-stub.  With ``gpu_functions_ok``, any GPU function is fine
    too (it can be passed along).
    """
    slots = set(t.slot_key for t in targets)
    bad: list[PciDevice] = []
    for dev in members:
        if dev.address in targets or dev.address.slot_key in slots:
            continue
        if dev.is_bridge or dev.driver in VFIO_DRIVERS or dev.driver in NEUTRAL_DRIVERS:
            continue
        if gpu_functions_ok and is_gpu_class(dev.class_code, accelerators):
            continue
        bad.append(dev)
    return bad


def describe(dev: PciDevice) -> str:
    return '%s (%s%s)' % (dev.address, class_name(dev.class_code),
                          ', driver %s' % dev.driver if dev.driver else ', no driver')
