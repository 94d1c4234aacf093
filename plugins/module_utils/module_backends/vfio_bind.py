# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Plan and apply PCI driver transitions of whole IOMMU groups, with a journal.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

The kernel interface used, per device, is the one the kernel documents for
runtime rebinding without capturing other devices of the same vendor:device
(``new_id`` would, so it is never written):

* bind: write ``driver_override``, write the address to the current driver's
  ``unbind``, write it to ``/sys/bus/pci/drivers_probe``, verify the ``driver``
  link and, for vfio drivers, ``/dev/vfio/<group>``.
* restore: point ``driver_override`` at the journaled driver, unbind,
  ``drivers_probe``, then clear the override (without a journal entry: clear
  the override and probe, so the kernel picks its default driver).

Every write goes through :meth:`Sysfs.write`, bounded in time.  The journal
records each device's original driver before anything changes, so a failed
group is rolled back and a later ``state: absent`` restores what was there.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._files import write_atomic
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import ModuleRunner, Runner
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._iommu import group_members as iommu_group_members
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_gpu_info import running_hostdevs
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (
    PciAddress,
    PciAddressError,
    PciDevice,
    PciDeviceNotFound,
    PciIdError,
    class_name,
    list_addresses,
    parse_id,
    processes_holding,
    read_locked_attributes,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._reset_health import check as health_check
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._reset_health import quarantine_failed
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import (
    Sysfs,
    SysfsError,
    SysfsTimeout,
    from_params,
    is_live_root,
)

DEFAULT_JOURNAL = '/var/lib/fleetgpu-passthrough/vfio_bind.json'
JOURNAL_VERSION = 1
DRIVER_RE = re.compile(r'^[a-z0-9_-]+\Z')
SETTLE_SECONDS = 2.0
KERNEL_DEFAULT = None  # driver_after of a restore without journal: whatever the kernel probes


class BindingError(FleetGpuError):
    """Base of every error this backend raises; ``details`` go into the result."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.details = details


class BindingInputError(BindingError):
    """An option value that cannot be used (bad address, unknown device, bad driver name)."""


class BindingRefused(BindingError):
    """The work is unsafe by default; the message names the override."""


class BindingApplyError(BindingError):
    """A kernel write failed or did not return; what was rolled back is in ``details``."""


class JournalError(BindingError):
    """The journal cannot be read or written."""


def validate_driver(name: object, what: str = 'driver') -> str:
    if not isinstance(name, str) or not DRIVER_RE.match(name):
        raise BindingInputError(
            'invalid %s name %r: only lower-case letters, digits, "_" and "-" are allowed '
            '(for example vfio-pci or nvgrace_gpu_vfio_pci)' % (what, name))
    return name


def is_vfio_driver(name: Optional[str]) -> bool:
    return bool(name) and 'vfio' in str(name)


# --------------------------------------------------------------------------- journal
class Journal:
    """Original drivers, keyed by address, in a root-only JSON file written atomically."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: Dict[str, Dict[str, Any]] = {}
        self.loaded = False

    def load(self) -> 'Journal':
        try:
            with open(self.path, 'r', encoding='utf-8') as handle:
                data = json.load(handle)
        except FileNotFoundError:
            self.loaded = True
            return self
        except (OSError, ValueError) as exc:
            raise JournalError('cannot read the journal %s: %s (move it away to start afresh)' % (self.path, exc),
                               journal_path=self.path) from None
        # A journal that is not ours, or from a version this code does not know, is never rewritten: every
        # error below leaves the file as it is (it may be the only record of the original drivers).
        devices = data.get('devices') if isinstance(data, dict) else None
        if not isinstance(devices, dict):
            raise JournalError('the journal %s is not a vfio_bind journal (no "devices" mapping); it was left as it is '
                               '(move it away to start afresh)' % self.path, journal_path=self.path)
        if data.get('version', JOURNAL_VERSION) != JOURNAL_VERSION:
            raise JournalError('the journal %s has version %r, this module writes version %d; it was left as it is'
                               % (self.path, data.get('version'), JOURNAL_VERSION), journal_path=self.path)
        for addr, entry in devices.items():
            try:
                address = PciAddress.parse(addr)
            except PciAddressError as exc:
                raise JournalError('the journal %s has an entry with an invalid address: %s; it was left as it is'
                                   % (self.path, exc), journal_path=self.path) from None
            if not isinstance(entry, dict):
                raise JournalError('the journal %s has a malformed entry for %s' % (self.path, addr),
                                   journal_path=self.path)
            for key in ('driver_before', 'override_before'):
                value = entry.get(key)
                if value is not None and not (isinstance(value, str) and DRIVER_RE.match(value)):
                    raise JournalError('the journal %s names an invalid driver %r for %s' % (self.path, value, addr),
                                       journal_path=self.path)
            vendor_device = entry.get('vendor_device')
            if vendor_device is not None and not (isinstance(vendor_device, str)
                                                  and re.match(r'^[0-9a-f]{4}:[0-9a-f]{4}\Z', vendor_device)):
                raise JournalError('the journal %s has an invalid vendor_device %r for %s'
                                   % (self.path, vendor_device, addr), journal_path=self.path)
            self.entries[str(address)] = dict(entry)
        self.loaded = True
        return self

    def get(self, address: PciAddress) -> Optional[Dict[str, Any]]:
        return self.entries.get(str(address))

    def save(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            if not self.entries:
                if os.path.exists(self.path):
                    os.unlink(self.path)
                return
            os.makedirs(directory, mode=0o700, exist_ok=True)
            write_atomic(self.path, json.dumps({'version': JOURNAL_VERSION, 'devices': self.entries}, indent=1,
                                               sort_keys=True) + '\n', 0o600)
        except OSError as exc:
            raise JournalError('cannot write the journal %s: %s' % (self.path, os.strerror(exc.errno or errno.EIO)),
                               journal_path=self.path) from None


# --------------------------------------------------------------------------- plan model
class Step:
    """One device's transition."""

    def __init__(self, device: PciDevice, driver_before: Optional[str], driver_after: Optional[str],
                 override_before: Optional[str], override_after: Optional[str], action: str) -> None:
        self.device = device
        self.address = device.address
        self.group = device.iommu_group
        self.driver_before = driver_before
        self.driver_after = driver_after
        self.override_before = override_before
        self.override_after = override_after
        self.action = action  # 'bind', 'restore' or 'none'
        # Where a rollback puts the device: its state before this run, or the journaled
        # original when an earlier run stopped half way.
        self.restore_driver = driver_before
        self.restore_override = override_before
        self.touched = False  # a kernel write for this device succeeded

    @property
    def changes(self) -> bool:
        return self.action != 'none'

    def as_result(self) -> Dict[str, Any]:
        return {
            'address': str(self.address),
            'group': self.group,
            'vendor_device': self.device.vendor_device,
            'class_name': class_name(self.device.class_code),
            'driver_before': self.driver_before,
            'driver_after': self.driver_after,
            'changed': self.changes,
        }


class BindPlan:
    def __init__(self, state: str, driver: str) -> None:
        self.state = state
        self.driver = driver
        self.groups: Dict[int, List[Step]] = {}
        self.warnings: List[str] = []

    @property
    def steps(self) -> List[Step]:
        return [s for g in sorted(self.groups) for s in self.groups[g]]

    @property
    def changed(self) -> bool:
        return any(s.changes for s in self.steps)

    def diff(self) -> Dict[str, str]:
        before = []
        after = []
        for step in sorted(self.steps, key=lambda s: s.address):
            if not step.changes:
                continue
            before.append('%s group %s driver: %s\n' % (step.address, step.group, step.driver_before or '(none)'))
            after.append('%s group %s driver: %s\n' % (step.address, step.group, step.driver_after or '(kernel default)'))
        return {'before': ''.join(before), 'after': ''.join(after),
                'before_header': 'PCI drivers before', 'after_header': 'PCI drivers after'}


# --------------------------------------------------------------------------- the binder
class Binder:
    """Plans and applies ``state: present`` (bind to ``driver``) or ``absent`` (restore)."""

    def __init__(self, sysfs: Sysfs, driver: str = 'vfio-pci', state: str = 'present', include_group: bool = False,
                 allow_boot_vga: bool = False, allow_in_use: bool = False, journal_path: str = DEFAULT_JOURNAL,
                 runner: Optional[Runner] = None, modprobe: str = 'modprobe',
                 libvirt_check: Optional[bool] = None, libvirt_uri: str = 'qemu:///system',
                 release_ids: bool = False) -> None:
        self.sysfs = sysfs
        self.release_ids = release_ids
        self.released_ids: List[str] = []
        self.driver = validate_driver(driver)
        if state not in ('present', 'absent'):
            raise BindingInputError('state must be present or absent, not %r' % (state,))
        self.state = state
        self.include_group = include_group
        self.allow_boot_vga = allow_boot_vga
        self.allow_in_use = allow_in_use
        self.journal = Journal(journal_path)
        self.runner = runner
        self.modprobe = modprobe
        # Ask libvirt only about the real host's kernel, never about a simulated root.
        self.libvirt_check = is_live_root(sysfs.sys_root, '/sys') if libvirt_check is None else libvirt_check
        self.libvirt_uri = libvirt_uri
        self.rolled_back: List[str] = []
        self.stuck: List[str] = []
        # quarantine entries of devices that failed their health check after a give-back
        self.quarantined: List[Dict[str, Any]] = []
        self.last_plan: Optional[BindPlan] = None
        self._open: Optional[Dict[str, List[Tuple[int, str]]]] = None
        self._domains: Optional[Dict[PciAddress, List[str]]] = None
        self._devices: Dict[PciAddress, PciDevice] = {}
        self.applying = False

    # ---------------------------------------------------------------- targets
    def device(self, address: PciAddress) -> PciDevice:
        """The read model of one function, read once per run."""
        if address not in self._devices:
            self._devices[address] = PciDevice.read(self.sysfs, address)
        return self._devices[address]

    def resolve(self, devices: Optional[List[Any]] = None, match: Optional[Dict[str, Any]] = None) -> List[PciDevice]:
        """The requested endpoints, validated."""
        found: List[PciDevice] = []
        if devices:
            for text in devices:
                try:
                    addr = PciAddress.parse(text)
                except PciAddressError as exc:
                    raise BindingInputError(str(exc), device=text) from None
                try:
                    dev = self.device(addr)
                except PciDeviceNotFound:
                    raise BindingInputError('unknown device %s: the kernel has no PCI function at that address' % addr,
                                            device=str(addr)) from None
                if dev.is_bridge:
                    raise BindingInputError(
                        '%s is a %s: bridges and PCIe ports stay on their driver; name the endpoints behind it'
                        % (addr, class_name(dev.class_code)), device=str(addr))
                found.append(dev)
        elif match:
            want = {}
            try:
                for key in ('vendor_id', 'device_id', 'subsystem_vendor_id', 'subsystem_device_id'):
                    if match.get(key) is not None:
                        want[key] = parse_id(match[key], key.replace('_id', ' id').replace('_', ' '))
            except PciIdError as exc:
                raise BindingInputError(str(exc)) from None
            if 'vendor_id' not in want or 'device_id' not in want:
                raise BindingInputError('match needs vendor_id and device_id')
            for addr in list_addresses(self.sysfs):
                dev = self.device(addr)
                if dev.is_bridge:
                    continue
                if (dev.vendor_id == want['vendor_id'] and dev.device_id == want['device_id']
                        and want.get('subsystem_vendor_id', dev.subsystem_vendor_id) == dev.subsystem_vendor_id
                        and want.get('subsystem_device_id', dev.subsystem_device_id) == dev.subsystem_device_id):
                    found.append(dev)
            if not found:
                raise BindingInputError('no PCI device matches %s' % ', '.join('%s=%s' % kv for kv in sorted(want.items())))
        else:
            raise BindingInputError('give devices (addresses) or match (vendor_id, device_id)')
        unique: Dict[PciAddress, PciDevice] = {d.address: d for d in found}
        return [unique[a] for a in sorted(unique)]

    def group_members(self, group: int) -> List[PciDevice]:
        members = []
        for address in iommu_group_members(self.sysfs, group):
            try:
                members.append(self.device(address))
            except PciDeviceNotFound:
                continue
        return members

    # ---------------------------------------------------------------- reading state
    def _overrides(self, devices: List[PciDevice]) -> Dict[PciAddress, Optional[str]]:
        values, stuck = read_locked_attributes(self.sysfs, devices, ('driver_override',))
        if stuck:
            dev = next(d for d in devices if d.address in stuck)
            raise BindingApplyError(
                '%s does not answer: reading its driver_override did not return within %gs. The device lock is '
                'likely held by its driver (%s) stuck in probe or remove%s. Nothing was changed; unload or blacklist '
                'that driver (or reboot) and run again.'
                % (dev.address, self.sysfs.timeout, dev.driver or 'no driver', self._holders_text(dev)),
                stuck=[str(d.address) for d in devices if d.address in stuck])
        out: Dict[PciAddress, Optional[str]] = {}
        for dev in devices:
            if (dev.address, 'driver_override') not in values:
                continue  # no driver_override attribute (an old kernel): nothing to keep
            value = values[(dev.address, 'driver_override')]
            if value is None:
                # Unreadable is not empty: taking it as empty would lose the override the device has.
                raise BindingApplyError(
                    '%s: cannot read %s; nothing was changed (its current value could not be kept for the restore)'
                    % (dev.address, dev.attr('driver_override')), device=str(dev.address))
            out[dev.address] = None if value in ('', '(null)') else value
        return out

    def holders(self, dev: PciDevice) -> List[str]:
        """Processes (and libvirt domains) that hold the device: ``"1234 (qemu) /dev/vfio/12"``."""
        if self._open is None:
            self._open = self.sysfs.open_devices()
        return processes_holding(self.sysfs, dev, self._open) + self._libvirt_users(dev)

    def _libvirt_users(self, dev: PciDevice) -> List[str]:
        if self._domains is None:
            self._domains = running_hostdevs(self.libvirt_uri) if self.libvirt_check else {}
        return ['libvirt domain %s' % name for name in self._domains.get(dev.address, [])]

    def _holders_text(self, dev: PciDevice) -> str:
        held = self.holders(dev)
        return '; held open by: %s' % ', '.join(held) if held else ''

    # ---------------------------------------------------------------- plan
    def plan(self, devices: Optional[List[Any]] = None, match: Optional[Dict[str, Any]] = None) -> BindPlan:
        self.journal.load()
        targets = self.resolve(devices, match)
        requested = set(d.address for d in targets)
        plan = BindPlan(self.state, self.driver)
        self.last_plan = plan
        groups: Dict[int, List[PciDevice]] = {}
        for dev in targets:
            if dev.iommu_group is None:
                raise BindingRefused(
                    '%s has no IOMMU group: the IOMMU is off or the device is not behind one. Turn the IOMMU on '
                    '(intel_iommu=on / amd_iommu, see the kernel_cmdline module) and reboot first.' % dev.address,
                    device=str(dev.address))
            if dev.iommu_group in groups:
                continue
            members = [m for m in self.group_members(dev.iommu_group) if not m.is_bridge]
            if self.state == 'absent':
                # the members an earlier bind moved with this device come back with it
                requested.update(m.address for m in members if self.journal.get(m.address) is not None)
            extra = [m for m in members if m.address not in requested]
            if extra and not self.include_group:
                raise BindingRefused(
                    'IOMMU group %d of %s also holds %s, which %s not requested: a group moves as a whole. '
                    'List %s in devices too, or set include_group: true to take the whole group.'
                    % (dev.iommu_group, dev.address,
                       ', '.join('%s (%s, driver %s)' % (m.address, class_name(m.class_code), m.driver or 'none')
                                 for m in extra),
                       'was' if len(extra) == 1 else 'were', ', '.join(str(m.address) for m in extra)),
                    device=str(dev.address), group=dev.iommu_group)
            groups[dev.iommu_group] = members or [dev]
        overrides = self._overrides([m for g in sorted(groups) for m in groups[g]])  # one bounded batch
        for group, members in sorted(groups.items()):
            steps = [self._step(m, overrides.get(m.address)) for m in members]
            if any(s.changes for s in steps):
                self._check_safety(group, [s for s in steps if s.changes], plan)
            order = sorted(steps, key=lambda s: s.address, reverse=self.state == 'present')
            plan.groups[group] = order
        return plan

    def _step(self, dev: PciDevice, override: Optional[str]) -> Step:
        current = dev.driver
        entry = self.journal.get(dev.address)
        journaled = entry.get('vendor_device') if entry else None
        if journaled and journaled != dev.vendor_device:
            raise BindingRefused(
                'the journal %s records %s as %s (original driver %s), but the card at that address now is %s: the '
                'card was changed since; refusing to use that entry. Check the card, then remove the entry for %s '
                'from the journal' % (self.journal.path, dev.address, journaled, (entry or {}).get('driver_before') or 'none',
                                      dev.vendor_device, dev.address),
                device=str(dev.address), journal_path=self.journal.path)
        if self.state == 'present':
            if current == self.driver:
                return Step(dev, current, current, override, override, 'none')
            # An override that already names the target is a leftover of an interrupted bind, not
            # something to restore later.
            step = Step(dev, current, self.driver, None if override == self.driver else override, self.driver, 'bind')
            if entry and current is None:
                step.restore_driver = entry.get('driver_before')
                step.restore_override = entry.get('override_before')
            return step
        # absent
        on_target = current == self.driver or override == self.driver
        if not on_target and not (current is None and entry):
            return Step(dev, current, current, override, override, 'none')
        before = entry.get('driver_before') if entry else KERNEL_DEFAULT
        override_after = entry.get('override_before') if entry else None
        if before is not None and before == current and override == override_after:
            return Step(dev, current, current, override, override, 'none')
        return Step(dev, current, before, override, override_after, 'restore')

    def _check_safety(self, group: int, steps: List[Step], plan: BindPlan) -> None:
        for step in steps:
            dev = step.device
            if self.state == 'present' and dev.boot_vga:
                msg = ('%s is the boot VGA device (the console the firmware and the host display use)' % dev.address)
                if not self.allow_boot_vga:
                    raise BindingRefused(msg + ': refusing to take it from the host. Set allow_boot_vga: true if the '
                                         'host has another console (serial, BMC) and you accept losing this one.',
                                         device=str(dev.address))
                plan.warnings.append(msg + ': taking it anyway because allow_boot_vga is true.')
            if self.state == 'present' and dev.virtfns:
                raise BindingRefused(
                    '%s is an SR-IOV physical function with %d virtual functions enabled (%s): unbinding it would '
                    'destroy them. Set its sriov_numvfs to 0 first, or pass the virtual functions instead.'
                    % (dev.address, len(dev.virtfns), ', '.join(str(v) for v in dev.virtfns)), device=str(dev.address))
            if self.state == 'present':
                live = []
                for mtype in dev.mdev_types:
                    live.extend(self.sysfs.listdir(os.path.join(dev.attr('mdev_supported_types'), mtype, 'devices')))
                if live:
                    raise BindingRefused(
                        '%s is the parent of %d live mediated devices (%s): remove them first.'
                        % (dev.address, len(live), ', '.join(sorted(live))), device=str(dev.address))
            held = self.holders(dev)
            if held:
                msg = '%s is in use: %s' % (dev.address, ', '.join(held))
                if not self.allow_in_use:
                    raise BindingRefused(msg + '. Stop those users first, or set allow_in_use: true to move the driver '
                                         'anyway (the unbind may block until they let go).', device=str(dev.address),
                                         holders=held)
                plan.warnings.append(msg + ': moving it anyway because allow_in_use is true.')

    def results(self) -> List[Dict[str, Any]]:
        """Per device of the last plan, sorted by address; once apply started, ``driver_after`` is what the
        kernel shows now (after a failure: where the device really is)."""
        out = []
        for step in sorted(self.last_plan.steps if self.last_plan else [], key=lambda s: s.address):
            res = step.as_result()
            if self.applying:
                res['driver_after'] = self._current(step.device) if self.sysfs.isdir(step.device.path) else None
                res['changed'] = res['driver_after'] != res['driver_before']
            out.append(res)
        return out

    # ---------------------------------------------------------------- apply
    def apply(self, plan: BindPlan) -> BindPlan:
        changing = [s for s in plan.steps if s.changes]
        if not changing:
            return plan
        self.applying = True
        if plan.state == 'present':
            self._ensure_driver(self.driver)
            for step in changing:
                # A device found unbound with a journal entry is mid-flight from an earlier run:
                # the journal keeps its original driver.
                if self.journal.get(step.address) is None or step.driver_before is not None:
                    self.journal.entries[str(step.address)] = {
                        'driver_before': step.driver_before,
                        'override_before': step.override_before,
                        'group': step.group,
                        'vendor_device': step.device.vendor_device,
                        'driver': self.driver,
                    }
            self.journal.save()
        for group in sorted(plan.groups):
            steps = [s for s in plan.groups[group] if s.changes]
            done: List[Step] = []
            for step in steps:
                try:
                    done.append(step)
                    if plan.state == 'present':
                        self._bind(step)
                    else:
                        self._restore(step)
                except BindingApplyError as exc:
                    no_driver = exc.details.pop('driver_now', '') is None
                    if plan.state == 'absent' and no_driver:
                        self._quarantine_after_giveback([step], exc)
                    self._rollback(done, exc, plan.steps)
                    raise
            if plan.state == 'present' and is_vfio_driver(self.driver) and steps:
                node = self.sysfs.dev('vfio', str(group))
                if not self.sysfs.exists(node):
                    missing = BindingApplyError('group %d is bound to %s but %s did not appear' % (group, self.driver, node))
                    self._rollback(done, missing, plan.steps)
                    raise missing
            if plan.state == 'absent':
                for step in steps:
                    self.journal.entries.pop(str(step.address), None)
                self.journal.save()
                self._quarantine_after_giveback(steps)
        return plan

    def _quarantine_after_giveback(self, steps: List[Step], failure: Optional[BindingApplyError] = None) -> None:
        """Check devices just given back (config space answers; the driver they went back to is bound) and
        quarantine those that fail; a failure of the give-back itself says so in its message."""
        expect = {s.address for s in steps if s.driver_after is not None}
        checks = health_check(self.sysfs, [s.device for s in steps if self.sysfs.isdir(s.device.path)], expect)
        try:
            entries = quarantine_failed(self.sysfs, checks, 'vfio_bind')
        except FleetGpuError as exc:
            entries = [{'address': str(h.address), 'reason': h.reason, 'not_recorded': str(exc)}
                       for h in checks if not h.healthy]
        self.quarantined.extend(entries)
        if failure is not None and entries:
            failure.details['quarantined'] = list(self.quarantined)
            failure.args = ('%s. It is quarantined: %s (clear it with gpu_quarantine state=cleared once repaired)'
                            % (failure.args[0], '; '.join('%s: %s' % (e['address'], e['reason']) for e in entries)),)

    def _ensure_driver(self, name: str) -> None:
        if self.sysfs.isdir(self.sysfs.sys('bus', 'pci', 'drivers', name)):
            return
        if self.runner is None or not self.runner.have(self.modprobe):
            raise BindingApplyError('driver %s is not loaded and modprobe is not available (modprobe is never run '
                                    'for a sysfs_root other than /sys: it would load the module into the running '
                                    'host\'s kernel)' % name)
        rc, out, err = self.runner.run([self.modprobe, name], check=False)
        if rc != 0:
            raise BindingApplyError('modprobe %s failed (rc=%d): %s' % (name, rc, (err or out).strip()), rc=rc)
        if not self.sysfs.isdir(self.sysfs.sys('bus', 'pci', 'drivers', name)):
            raise BindingApplyError('modprobe %s succeeded but %s did not appear: is %s a PCI driver?'
                                    % (name, self.sysfs.sys('bus', 'pci', 'drivers', name), name))

    def _write(self, step: Step, path: str, value: str, what: str) -> None:
        try:
            self.sysfs.write(path, value)
            step.touched = True
        except SysfsTimeout:
            dev = step.device
            self.stuck.append(str(step.address))
            raise BindingApplyError(
                '%s: %s (writing %r to %s) did not return within %gs. The device lock is likely held by driver %s '
                '(stuck in probe or remove)%s. Free the device (stop its users, or unload/blacklist the driver) or '
                'reboot, then run again.'
                % (step.address, what, value.strip(), path, self.sysfs.timeout, self._current(dev) or step.driver_before
                   or 'none', self._holders_text(dev)), device=str(step.address)) from None
        except SysfsError as exc:
            raise BindingApplyError('%s: %s failed: %s' % (step.address, what, exc), device=str(step.address),
                                    errno=exc.errno) from None

    def _current(self, dev: PciDevice) -> Optional[str]:
        return self.sysfs.link_name(dev.attr('driver'))

    def _settle(self, done: Callable[[], bool]) -> bool:
        """Wait briefly for the kernel to finish an asynchronous probe or create a device node."""
        deadline = time.monotonic() + min(self.sysfs.timeout, SETTLE_SECONDS)
        while not done():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _drv(self, name: str, attr: str) -> str:
        return self.sysfs.sys('bus', 'pci', 'drivers', name, attr)

    def _bind(self, step: Step) -> None:
        dev = step.device
        addr = str(step.address)
        self._write(step, dev.attr('driver_override'), self.driver, 'setting driver_override to %s' % self.driver)
        current = self._current(dev)
        if current and current != self.driver:
            self._write(step, self._drv(current, 'unbind'), addr, 'unbinding from %s' % current)
        if self._current(dev) != self.driver:
            self._write(step, self.sysfs.sys('bus', 'pci', 'drivers_probe'), addr, 'drivers_probe')
        self._settle(lambda: self._current(dev) is not None)
        now = self._current(dev)
        if now != self.driver:
            raise BindingApplyError('%s: after drivers_probe the device is on %s, not %s'
                                    % (addr, now or 'no driver', self.driver), device=addr)
        if is_vfio_driver(self.driver) and step.group is not None and not self._settle(
                lambda: self.sysfs.exists(self.sysfs.dev('vfio', str(step.group)))):
            raise BindingApplyError('%s: bound to %s but /dev/vfio/%d did not appear' % (addr, self.driver, step.group),
                                    device=addr)

    def _restore(self, step: Step) -> None:
        target = step.driver_after
        self._move_back(step, target, step.override_after)
        if target is None and step.driver_after == self.driver and self.release_ids:
            # vfio-pci holds the vendor:device in its dynamic id table (its ids= option or a new_id):
            # take the id out of the table, then let the kernel probe again.
            dev = step.device
            pair = '%s %s' % (dev.vendor_id, dev.device_id)
            try:
                self._write(step, self._drv(self.driver, 'remove_id'), pair,
                            'removing %s from the dynamic ids of %s' % (dev.vendor_device, self.driver))
            except BindingApplyError as exc:
                if exc.details.get('errno') != errno.ENODEV:
                    raise
            else:
                if dev.vendor_device not in self.released_ids:
                    self.released_ids.append(dev.vendor_device)
            self._move_back(step, None, step.override_after)
        if step.driver_after == self.driver:
            raise BindingApplyError(
                '%s: the kernel probed %s again: that driver claims the device by its ids (a "%s ids=" module '
                'option or a new_id). Remove those ids (modprobe.d, the kernel command line) and reload %s, or set '
                'release_ids: true to take them out of its dynamic id table, then run again.'
                % (step.address, self.driver, self.driver, self.driver), device=str(step.address))

    def _move_back(self, step: Step, target: Optional[str], override: Optional[str]) -> None:
        """Put a device on ``target`` (None: whatever the kernel probes), then restore ``override``.

        A known target is reached through ``driver_override`` as well: with the override naming it, the
        probe can pick no other driver, whatever the load order of the drivers that claim the device.
        """
        dev = step.device
        addr = str(step.address)
        if target is not None and not self.sysfs.isdir(self.sysfs.sys('bus', 'pci', 'drivers', target)):
            self._ensure_driver(target)
        self._write(step, dev.attr('driver_override'), target or '\n',
                    'setting driver_override to %s' % (target or '(null)'))
        current = self._current(dev)
        if current and current != target:
            self._write(step, self._drv(current, 'unbind'), addr, 'unbinding from %s' % current)
        if self._current(dev) is None:
            self._write(step, self.sysfs.sys('bus', 'pci', 'drivers_probe'), addr, 'drivers_probe')
            if target is not None:
                self._settle(lambda: self._current(dev) is not None)
        now = self._current(dev)
        if target is not None and now != target:
            raise BindingApplyError('%s: could not put the device back on %s (after drivers_probe it is on %s)'
                                    % (addr, target, now or 'no driver'), device=addr, driver_now=now)
        if target is not None or override:
            self._write(step, dev.attr('driver_override'), override or '\n',
                        'setting driver_override to %s' % (override or '(null)'))
        step.driver_after = now

    def _rollback(self, done: List[Step], cause: BindingApplyError, every: List[Step]) -> None:
        """Put back the devices of a group that already moved; stuck devices are not touched again."""
        failures = []
        for step in reversed(done):
            if str(step.address) in self.stuck or not step.touched:
                continue
            if not self.sysfs.isdir(step.device.path):
                failures.append('%s: the device is gone' % step.address)
                continue
            try:
                self._move_back(step, step.restore_driver, step.restore_override)
                self.rolled_back.append(str(step.address))
            except BindingApplyError as exc:
                failures.append(str(exc))
        if self.state == 'present':
            # Devices on their original driver again need no journal entry.
            for step in every:
                if step.changes and str(step.address) not in self.stuck and self.sysfs.isdir(step.device.path) \
                        and self._current(step.device) == step.restore_driver:
                    self.journal.entries.pop(str(step.address), None)
            try:
                self.journal.save()
            except JournalError as exc:
                failures.append(str(exc))
        cause.details['rolled_back'] = list(self.rolled_back)
        cause.details['stuck'] = list(self.stuck)
        if failures:
            cause.details['rollback_failed'] = failures
            cause.args = ('%s. Rolling back also failed: %s' % (cause.args[0], '; '.join(failures)),)
        elif self.rolled_back:
            cause.args = ('%s. Rolled back: %s are on their original drivers again.'
                          % (cause.args[0], ', '.join(self.rolled_back)),)


def run(module: AnsibleModule) -> dict:
    """Do what the vfio_bind module's parameters ask (or predict it in check mode); the module's result.

    A failure raises the error with the result so far (devices, rolled_back, stuck...) in its ``details``.
    """
    params = module.params
    result: Dict[str, Any] = dict(changed=False, devices=[], rolled_back=[], stuck=[], released_ids=[],
                                  quarantined=[], journal_path=params['journal_path'])

    binder = None
    try:
        sysfs = from_params(params)
        # modprobe acts on the running host's kernel: never run it for a simulated sysfs_root.
        live = is_live_root(sysfs.sys_root, '/sys')
        binder = Binder(
            sysfs,
            driver=params['driver'], state=params['state'], include_group=params['include_group'],
            allow_boot_vga=params['allow_boot_vga'], allow_in_use=params['allow_in_use'],
            journal_path=params['journal_path'], runner=ModuleRunner(module) if live else None,
            release_ids=params['release_ids'])
        plan = binder.plan(params['devices'], params['match'])
        for warning in plan.warnings:
            module.warn(warning)
        if plan.changed and not module.check_mode:
            binder.apply(plan)
    except FleetGpuError as exc:
        result.update(exc.details)
        if binder is not None:
            result['devices'] = binder.results()
            result['released_ids'] = binder.released_ids
        exc.details = result
        raise
    result['changed'] = plan.changed
    result['quarantined'] = binder.quarantined
    for entry in binder.quarantined:
        module.warn('%s was given back but failed its health check and is quarantined: %s (gpu_quarantine '
                    'state=cleared releases it)' % (entry['address'], entry['reason']))
    result['devices'] = binder.results()
    result['released_ids'] = binder.released_ids
    if module._diff and plan.changed:
        result['diff'] = plan.diff()
    return result
