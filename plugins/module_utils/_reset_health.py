# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Reset health of PCI devices and the quarantine record.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

A device handed to a VM and given back has been reset, by the kernel or by the
guest's driver.  A device that did not come back from that (it no longer
answers config cycles, its driver failed to bind again) must not be handed to
the next VM.  :func:`check` reads, for one device, without changing anything:

* ``reset_method``: the reset methods the kernel can use (kernel 5.15 and
  later).  No method (the attribute absent or empty) is a *warning*, not a
  failure: many GPUs lack FLR and rely on a bus reset, and the kernel hides
  the attribute of a device without any method.
* ``config``: the device's config space must be readable and its vendor id
  must not be ``ffff`` (what a device that fell off the bus answers). An SR-IOV
  virtual function is the exception: the PCIe specification has its vendor and
  device id registers read ``ffff`` (the kernel takes them from the physical
  function), so for a VF only the read itself is checked.
* with ``expect_driver``: a driver must be bound (after a give-back).

The check never triggers a reset itself: it reads ``reset_method``, it does not
write ``reset``.  A failed check is recorded in
``ROOT/var/lib/fleetgpu-passthrough/quarantine.json`` (ROOT is the parent of
``sysfs_root``: ``/`` for ``/sys``), one entry per address with the reason and
the time.  gpu_facts reports the record, fleet placement skips the device,
libvirt_hostdev refuses to attach it, and gpu_quarantine ``state: cleared`` is
the one action that removes an entry.
"""

from __future__ import annotations

import errno
import json
import os
import time
from typing import Any, Collection

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._files import write_atomic
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (
    PciAddress,
    PciAddressError,
    PciDevice,
    read_locked_attributes,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs

RECORD = '/var/lib/fleetgpu-passthrough/quarantine.json'
RECORD_VERSION = 1
# The bytes of config space read: vendor id and device id.
CONFIG_BYTES = 4


class QuarantineError(FleetGpuError):
    """The quarantine record cannot be read or written; the message names the file."""


def record_path(sysfs: Sysfs) -> str:
    """``ROOT/var/lib/fleetgpu-passthrough/quarantine.json``, ROOT being the parent of ``sysfs_root``."""
    return sysfs.host(RECORD.lstrip('/'))


def now() -> str:
    """The time of a new entry: UTC, ISO 8601, seconds."""
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


class Health:
    """The result of one check of one device: ``problems`` quarantine it, ``warnings`` do not."""

    def __init__(self, address: PciAddress) -> None:
        self.address = address
        self.vendor_device: str | None = None
        self.reset_method: list[str] | None = None
        self.config_readable = False
        self.config_vendor_id: str | None = None
        self.driver: str | None = None
        self.problems: list[str] = []
        self.warnings: list[str] = []

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        return '; '.join(self.problems)

    def as_result(self) -> dict[str, Any]:
        return {
            'address': str(self.address),
            'vendor_device': self.vendor_device,
            'healthy': self.healthy,
            'reset_method': self.reset_method,
            'config_readable': self.config_readable,
            'config_vendor_id': self.config_vendor_id,
            'driver': self.driver,
            'problems': list(self.problems),
            'warnings': list(self.warnings),
        }


def check(sysfs: Sysfs, devices: list[PciDevice], expect_driver: Collection[PciAddress] = (),
          timeout: float | None = None) -> list[Health]:
    """Check ``devices`` (read only, each read bounded by ``timeout``); one :class:`Health` each, in order.

    ``expect_driver``: the addresses that must have a driver bound (devices just given back to a driver).
    """
    out = [Health(dev.address) for dev in devices]
    if not devices:
        return out
    locked, stuck = read_locked_attributes(sysfs, devices, names=('reset_method',), timeout=timeout)
    configs = [dev.attr('config') for dev in devices]
    values, errors, stuck_config = sysfs.read_bytes_bounded(configs, CONFIG_BYTES, timeout)
    limit = sysfs.timeout if timeout is None else timeout
    for dev, health, path in zip(devices, out, configs):
        health.vendor_device = dev.vendor_device
        # (a) reset_method: what the kernel can do to reset the device between users
        if dev.address in stuck:
            health.problems.append('reading reset_method did not return within %gs: the device lock is held '
                                   '(a driver stuck in its probe or remove)' % limit)
        elif not os.path.lexists(dev.attr('reset_method')):
            health.warnings.append('%s has no reset_method attribute: the kernel is older than 5.15 or knows no '
                                   'way to reset the device (no FLR, no bus reset); a VM that gets it cannot have '
                                   'it reset between users' % dev.address)
        else:
            methods = (locked.get((dev.address, 'reset_method')) or '').split()
            health.reset_method = methods
            if not methods:
                health.warnings.append('%s has an empty reset_method: every reset method is switched off; the '
                                       'kernel will not reset it between users' % dev.address)
        # (b) config space: readable, and not the all-ones of a device that no longer answers
        data = values.get(path)
        if path in stuck_config:
            health.problems.append('reading its config space did not return within %gs' % limit)
        elif path in errors:
            health.problems.append('its config space cannot be read (%s)' % os.strerror(errors[path] or errno.EIO))
        elif data is None or len(data) < 2:
            health.problems.append('its config space is missing or empty (no %s)' % path)
        else:
            health.config_readable = True
            vendor = int.from_bytes(data[0:2], 'little')
            health.config_vendor_id = '%04x' % vendor
            if vendor == 0xffff and dev.physfn is None:
                health.problems.append('its config space reads vendor id ffff: the device does not answer '
                                       '(it did not come back from a reset, or fell off the bus)')
        # (c) after a give-back: a driver came back
        health.driver = sysfs.link_name(dev.attr('driver'))
        if dev.address in expect_driver and health.driver is None:
            health.problems.append('no driver is bound after it was given back (the driver\'s probe failed)')
    return out


class Quarantine:
    """The quarantine record: address -> entry (``address``, ``reason``, ``time``, ``source``, ``vendor_device``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.text: str | None = None  # the file's content when loaded (None: no file)

    @classmethod
    def load(cls, path: str) -> 'Quarantine':
        rec = cls(path)
        try:
            with open(path, 'r', encoding='utf-8') as handle:
                rec.text = handle.read()
        except FileNotFoundError:
            return rec
        except OSError as exc:
            raise QuarantineError('cannot read the quarantine record %s: %s' % (path, exc.strerror)) from None
        try:
            data = json.loads(rec.text)
        except ValueError as exc:
            raise QuarantineError('the quarantine record %s is not valid JSON (%s); it was left as it is: repair it '
                                  'or move it away (every device in it would be released)' % (path, exc)) from None
        devices = data.get('devices') if isinstance(data, dict) else None
        if not isinstance(devices, dict) or data.get('version', RECORD_VERSION) != RECORD_VERSION:
            raise QuarantineError('the quarantine record %s is not a version %d quarantine record (a "devices" '
                                  'mapping); it was left as it is' % (path, RECORD_VERSION))
        for addr, entry in devices.items():
            try:
                address = str(PciAddress.parse(addr))
            except PciAddressError as exc:
                raise QuarantineError('the quarantine record %s has an entry with an invalid address: %s'
                                      % (path, exc)) from None
            if not isinstance(entry, dict) or not isinstance(entry.get('reason'), str):
                raise QuarantineError('the quarantine record %s has a malformed entry for %s (it needs a reason)'
                                      % (path, addr))
            rec.entries[address] = dict(entry, address=address)
        return rec

    def get(self, address: PciAddress | str) -> dict[str, Any] | None:
        entry = self.entries.get(str(address))
        return dict(entry) if entry is not None else None

    def add(self, health: Health, source: str, when: str | None = None) -> bool:
        """Quarantine a device that failed its check; an entry already there is kept as it is. True: added."""
        key = str(health.address)
        if health.healthy or key in self.entries:
            return False
        self.entries[key] = {'address': key, 'reason': health.reason, 'time': when or now(), 'source': source,
                             'vendor_device': health.vendor_device}
        return True

    def clear(self, address: PciAddress | str) -> bool:
        return self.entries.pop(str(address), None) is not None

    def render(self) -> str | None:
        """The file's content for the current entries; None when there are none (the file is removed)."""
        if not self.entries:
            return None
        return json.dumps({'version': RECORD_VERSION, 'devices': self.entries}, indent=1, sort_keys=True) + '\n'

    @property
    def changed(self) -> bool:
        after = self.render()
        if after is None or self.text is None:
            return (after is None) != (self.text is None)
        return json.loads(after) != json.loads(self.text)

    def diff(self) -> dict[str, str]:
        after = self.render()
        return {'before_header': self.path if self.text is not None else '%s (absent)' % self.path,
                'after_header': self.path if after is not None else '%s (absent)' % self.path,
                'before': self.text or '', 'after': after or ''}

    def save(self) -> None:
        """Write the record atomically (removed when empty)."""
        after = self.render()
        try:
            if after is None:
                if os.path.lexists(self.path):
                    os.unlink(self.path)
            else:
                os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
                write_atomic(self.path, after, 0o644)
        except OSError as exc:
            raise QuarantineError('cannot write the quarantine record %s: %s' % (self.path, exc.strerror)) from None
        self.text = after


def quarantine_failed(sysfs: Sysfs, checks: list[Health], source: str, write: bool = True) -> list[dict[str, Any]]:
    """Record the failed checks (kept entries stay as they are); the entries of the failed devices.

    ``write`` false (check mode) predicts the entries without writing the record.
    """
    failed = [h for h in checks if not h.healthy]
    if not failed:
        return []
    rec = Quarantine.load(record_path(sysfs))
    for health in failed:
        rec.add(health, source)
    if write and rec.changed:
        rec.save()
    return [rec.get(h.address) or {} for h in failed]
