# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The gpu_quarantine engine: check devices' reset health, record failures, clear entries.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

``state: checked`` runs :func:`_reset_health.check` on the given addresses (or
every GPU of the host) and quarantines the devices that fail; ``state:
cleared`` removes the given addresses from the record.  Both plan first: check
mode returns the same result and writes nothing.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (
    PciAddress,
    PciAddressError,
    PciDevice,
    PciDeviceNotFound,
    is_gpu_class,
    list_addresses,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._reset_health import Quarantine, check, record_path
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs

STATES = ('checked', 'cleared')


class QuarantineInputError(FleetGpuError):
    """An option value that cannot be used (malformed address, unknown device)."""


def parse_addresses(values: list | None) -> list[PciAddress]:
    out: list[PciAddress] = []
    for value in values or []:
        try:
            address = PciAddress.parse(value)
        except PciAddressError as exc:
            raise QuarantineInputError('addresses: %s' % exc, details={'address': str(value)}) from None
        if address not in out:
            out.append(address)
    return sorted(out)


def targets(sysfs: Sysfs, addresses: list[PciAddress], include_accelerators: bool = False) -> list[PciDevice]:
    """The devices to check: the given addresses (each must exist), or every GPU of the host."""
    if not sysfs.isdir(sysfs.sys('bus', 'pci', 'devices')):
        raise QuarantineInputError('%s is not a sysfs tree with PCI devices (no bus/pci/devices): check sysfs_root'
                                   % sysfs.sys_root)
    if addresses:
        out = []
        for address in addresses:
            try:
                out.append(PciDevice.read(sysfs, address))
            except PciDeviceNotFound:
                raise QuarantineInputError('addresses: no PCI device %s on this host (not in %s)'
                                           % (address, sysfs.sys('bus', 'pci', 'devices')),
                                           details={'address': str(address)}) from None
        return out
    out = []
    for address in list_addresses(sysfs):
        text = sysfs.read(sysfs.sys('bus', 'pci', 'devices', str(address), 'class'), default='')
        try:
            code = int(text, 16)
        except ValueError:
            continue
        if is_gpu_class(code, include_accelerators):
            out.append(PciDevice.read(sysfs, address))
    return out


def run(sysfs: Sysfs, state: str, addresses: list | None, include_accelerators: bool = False,
        check_mode: bool = False, diff: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Do what the module's parameters ask (or predict it in check mode); the module's result and its warnings."""
    if state not in STATES:
        raise QuarantineInputError('state must be checked or cleared, not %r' % (state,))
    wanted = parse_addresses(addresses)
    record = Quarantine.load(record_path(sysfs))
    result: dict[str, Any] = {'changed': False, 'quarantine_path': record.path, 'devices': [], 'added': [],
                              'cleared': []}
    warnings: list[str] = []
    if state == 'checked':
        devices = targets(sysfs, wanted, include_accelerators)
        for health in check(sysfs, devices, timeout=sysfs.timeout):
            if record.add(health, 'gpu_quarantine'):
                result['added'].append(str(health.address))
            entry = record.get(health.address)
            row = health.as_result()
            row['quarantined'] = entry if entry is not None else False
            result['devices'].append(row)
            warnings.extend(health.warnings)
    else:
        if not wanted:
            raise QuarantineInputError('state=cleared needs addresses: the quarantined devices to release')
        for address in wanted:
            if record.clear(address):
                result['cleared'].append(str(address))
    result['changed'] = record.changed
    if diff and record.changed:
        result['diff'] = record.diff()
    if record.changed and not check_mode:
        record.save()
    result['quarantined'] = {addr: dict(entry) for addr, entry in sorted(record.entries.items())}
    return result, warnings
