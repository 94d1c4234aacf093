# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The gpu_partition engine: SR-IOV virtual functions and mediated devices of one parent.

PRIVATE to the fleetgpu.passthrough collection: not a public API.

:meth:`Partitioner.plan` reads the parent's state and decides every step (sysfs writes, mdevctl
commands, file changes) before anything is written; check mode returns that plan, and
:meth:`Partitioner.apply` carries out exactly it. Requests that cannot be met (unknown type, over
capacity, a parent that cannot be split, a VF or mdev in use) fail in the plan, so nothing is
changed.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # only for the annotation
    from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import ModuleRunner, Runner
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._partition import (
    MDEV_RULE,
    Mdev,
    MdevParent,
    PartitionError,
    SriovState,
    check_uuid,
    group_holders,
    list_mdevs,
    load_record,
    mdev_parent_names,
    mdevctl_definitions,
    parent_name,
    read_sriov,
    record_path,
    record_text,
    mdev_rule_parents,
    mdev_rule_text,
    stable_mdev_uuid,
    udev_rule_count,
    udev_rule_path,
    udev_rule_text,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress, PciDevice, processes_holding
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs, SysfsError, from_params, is_live_root
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_gpu_info import (
    running_hostdevs,
    running_mdevs,
)

MDEVCTL_PACKAGE = 'mdevctl'


class Step:
    """One change: a sysfs write (``path``, ``value``) or a command (``argv``)."""

    def __init__(self, what: str, path: str | None = None, value: str | None = None,
                 argv: list[str] | None = None) -> None:
        self.what = what
        self.path = path
        self.value = value
        self.argv = argv


class Plan:
    def __init__(self) -> None:
        self.sriov_steps: list[Step] = []
        self.mdev_steps: list[Step] = []
        self.files: list[_files.FileChange] = []
        self.numvfs_before: int | None = None
        self.numvfs_after: int | None = None
        self.mdevs: list[dict[str, Any]] = []
        self.before_mdevs: list[str] = []
        self.after_mdevs: list[str] = []
        self.record_before: dict[str, dict] = {}
        self.record_after: dict[str, dict] = {}
        self.record_path: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.sriov_steps or self.mdev_steps or any(f.changed for f in self.files))

    def commands(self) -> list[list[str]]:
        return [s.argv for s in self.sriov_steps + self.mdev_steps if s.argv]

    def diff(self) -> list[dict[str, str]]:
        def state(numvfs: int | None, mdevs: list[str]) -> str:
            lines = []
            if numvfs is not None:
                lines.append('sriov_numvfs: %d' % numvfs)
            lines.append('mdevs:%s' % ('' if mdevs else ' []'))
            lines.extend('  - %s' % m for m in mdevs)
            return '\n'.join(lines) + '\n'
        out = [{'before_header': 'partition state', 'after_header': 'partition state',
                'before': state(self.numvfs_before, self.before_mdevs),
                'after': state(self.numvfs_after, self.after_mdevs)}]
        out.extend(f.diff() for f in self.files if f.changed)
        return out


class Partitioner:
    """Plans and applies the VF count and the mediated devices of one parent."""

    def __init__(self, sysfs: Sysfs, root: str = '/', runner: Optional[Runner] = None,
                 libvirt_check: Optional[bool] = None, libvirt_uri: str = 'qemu:///system') -> None:
        self.sysfs = sysfs
        self.root = root
        self.runner = runner
        # Ask libvirt only about the real host's kernel, never about a simulated root.
        self.libvirt_check = is_live_root(sysfs.sys_root, '/sys') if libvirt_check is None else libvirt_check
        self.libvirt_uri = libvirt_uri
        self._open: dict[str, list[tuple[int, str]]] | None = None
        self.parent = ''
        self.sriov: SriovState | None = None

    # ------------------------------------------------------------------ reading
    def path(self, absolute: str) -> str:
        return _files.rooted(self.root, absolute)

    def open_devices(self) -> dict[str, list[tuple[int, str]]]:
        if self._open is None:
            self._open = self.sysfs.open_devices()
        return self._open

    def vf_users(self, address: PciAddress) -> list[str]:
        """Processes and running libvirt domains that hold a VF."""
        try:
            dev = PciDevice.read(self.sysfs, address)
        except FleetGpuError:
            return []
        users = processes_holding(self.sysfs, dev, self.open_devices())
        if self.libvirt_check:
            users.extend('libvirt domain %s' % name for name in running_hostdevs(self.libvirt_uri).get(address, []))
        return users

    def mdev_users(self, mdev: Mdev) -> list[str]:
        """Running domains (or processes) that use a mediated device."""
        users = group_holders(self.sysfs, mdev.iommu_group, self.open_devices())
        if self.libvirt_check:
            for name in running_mdevs(self.libvirt_uri).get(mdev.uuid, []):
                if name not in users:
                    users.append(name)
        return users

    def have_mdevctl(self) -> bool:
        return self.runner is not None and self.runner.have('mdevctl')

    def host_tools_refused(self) -> str | None:
        """Why mdevctl must not run: the running host's tools act on its own kernel, not on a simulated sysfs_root."""
        if _files.is_live(self.root) and not is_live_root(self.sysfs.sys_root, '/sys'):
            return ('mdevctl would act on the running host\'s kernel, not on sysfs_root %s: give root (the file '
                    'system of that host), or persist=false' % self.sysfs.sys_root)
        return None

    # ------------------------------------------------------------------ plan
    def plan(self, parent: object, sriov_numvfs: Optional[int] = None, mdevs: Optional[list] = None,
             state: str = 'present', persist: bool = True) -> Plan:
        if state not in ('present', 'absent'):
            raise PartitionError('state must be present or absent, not %r' % (state,))
        self.parent = parent_name(self.sysfs, parent)
        plan = Plan()
        if state == 'present':
            if sriov_numvfs is None and mdevs is None:
                raise PartitionError('nothing asked for %s: give sriov_numvfs, mdevs, or state=absent' % self.parent)
            if sriov_numvfs is not None:
                self._plan_sriov(plan, sriov_numvfs, state, persist, explicit=True)
            if mdevs:
                self._plan_mdevs(plan, mdevs, state, persist)
            return plan
        # absent: the listed mdevs; without a list, every VF and mdev the collection made on this parent
        if mdevs:
            self._plan_mdevs(plan, mdevs, state, persist)
            return plan
        if self._is_pci():
            self._plan_sriov(plan, None, state, persist, explicit=False)
        if self.parent in mdev_parent_names(self.sysfs):
            self._plan_mdevs(plan, [], state, persist)
        return plan

    def _is_pci(self) -> bool:
        try:
            PciAddress.parse(self.parent)
        except FleetGpuError:
            return False
        return self.sysfs.isdir(self.sysfs.sys('bus', 'pci', 'devices', self.parent))

    def _plan_sriov(self, plan: Plan, want: Optional[int], state: str, persist: bool, explicit: bool) -> None:
        if not self._is_pci():
            raise PartitionError('parent %s is not SR-IOV capable: it is not a PCI device of this host' % self.parent)
        address = PciAddress.parse(self.parent)
        sriov = read_sriov(self.sysfs, address)
        if sriov is None:
            if not explicit:
                return
            raise PartitionError('parent %s is not SR-IOV capable (no sriov_totalvfs, or it is 0)' % self.parent)
        self.sriov = sriov
        current = sriov.numvfs if sriov.numvfs is not None else len(sriov.vfs)
        rule = _files.plan(self.path(udev_rule_path(address)), None)
        rule.before = _files.read(rule.path)
        ours = udev_rule_count(rule.before)
        if state == 'absent':
            # back to 0 only when the collection set the count (its rule is there)
            if ours is None:
                rule.after = rule.before
                want = current
            else:
                want = 0
                rule.after = None
        else:
            if want is None:
                raise PartitionError('sriov_numvfs is needed with state=present')
            if want < 0:
                raise PartitionError('sriov_numvfs must be 0 or more, got %d' % want)
            if want > sriov.totalvfs:
                raise PartitionError('sriov_numvfs %d is over the capacity of %s: sriov_totalvfs is %d'
                                     % (want, address, sriov.totalvfs))
            if persist:
                rule.after = udev_rule_text(address, want) if want > 0 else None
            else:
                rule.after = rule.before
        plan.numvfs_before = current
        plan.numvfs_after = want
        attr = sriov.dev.attr('sriov_numvfs')
        if want != current:
            if sriov.driver is None:
                raise PartitionError('%s has no driver bound: the kernel sets sriov_numvfs only through the PF\'s '
                                     'driver; bind it first' % address)
            if current > 0:
                busy = []
                for vf in sriov.vfs:
                    users = self.vf_users(vf)
                    if users:
                        busy.append('%s (%s)' % (vf, ', '.join(users)))
                if busy:
                    raise PartitionError('%s: cannot change sriov_numvfs from %d to %d while a VF is in use: %s; '
                                         'nothing was changed' % (address, current, want, '; '.join(busy)))
                plan.sriov_steps.append(Step('disable the %d VFs of %s' % (current, address), attr, '0'))
            if want > 0:
                plan.sriov_steps.append(Step('enable %d VFs on %s' % (want, address), attr, str(want)))
        if rule.changed:
            plan.files.append(rule)

    def _plan_mdevs(self, plan: Plan, wanted: list, state: str, persist: bool) -> None:
        s = self.sysfs
        if self.parent not in mdev_parent_names(s):
            raise PartitionError('parent %s is not mdev capable: it is not in %s (mdev parents: %s)'
                                 % (self.parent, s.sys('class', 'mdev_bus'), ', '.join(mdev_parent_names(s)) or 'none'))
        parent = MdevParent(s, self.parent)
        existing = {m.uuid: m for m in list_mdevs(s)}
        defined = mdevctl_definitions(self.path('/'))
        rpath = record_path(self.path('/'))
        record = load_record(rpath)
        new_record = dict(record)
        plan.before_mdevs = sorted('%s %s' % (m.uuid, m.type_id) for m in existing.values() if m.parent == self.parent)
        targets: list[tuple[str, str, str | None]] = []   # uuid, type id, name
        for index, entry in enumerate(wanted):
            if isinstance(entry, str):
                entry = {'type': entry}
            if not isinstance(entry, dict) or not entry.get('type'):
                raise PartitionError('mdevs[%d] needs a type (a type id or its name), got %r' % (index, entry))
            mtype = parent.find_type(entry['type'])
            name = entry.get('name')
            label = str(name) if name not in (None, '') else str(index)
            uid = check_uuid(entry['uuid'], 'mdevs[%d].uuid' % index) if entry.get('uuid') else \
                stable_mdev_uuid(self.parent, mtype.id, label)
            if uid in [t[0] for t in targets]:
                raise PartitionError('mdevs[%d]: UUID %s is asked for twice' % (index, uid))
            targets.append((uid, mtype.id, str(name) if name not in (None, '') else None))
        if state == 'absent' and not wanted:
            targets = [(u, str(r.get('type')), r.get('name')) for u, r in sorted(record.items())
                       if r.get('parent') == self.parent]
        if state == 'present':
            self._plan_create(plan, parent, targets, existing, defined, new_record, persist)
        else:
            self._plan_remove(plan, targets, existing, defined, new_record)
        after = {m.uuid: m.type_id for m in existing.values() if m.parent == self.parent}
        for row in plan.mdevs:
            if row['state'] == 'removed':
                after.pop(row['uuid'], None)
            else:
                after[row['uuid']] = row['type']
        plan.after_mdevs = sorted('%s %s' % kv for kv in after.items())
        plan.record_before, plan.record_after, plan.record_path = record, new_record, rpath
        self._plan_mdev_rule(plan, new_record, defined)
        if new_record != record:
            plan.files.append(_files.FileChange(rpath, _files.read(rpath), record_text(new_record) if new_record else None))

    def _plan_mdev_rule(self, plan: Plan, record: dict[str, dict], defined: dict[str, str]) -> None:
        """Keep the collection's udev rule listing every parent with a persisted mdev of the collection's."""
        rows = {row['uuid']: row for row in plan.mdevs}
        mine = False
        for uid, entry in record.items():
            if entry.get('parent') != self.parent:
                continue
            row = rows.get(uid)
            if row is not None and row['state'] != 'removed' and row['persistent']:
                mine = True
            elif row is None and uid in defined:
                mine = True
        path = self.path(MDEV_RULE)
        before = _files.read(path)
        parents = set(mdev_rule_parents(before)) - {self.parent}
        if mine:
            parents.add(self.parent)
        mdevctl = next((p for p in ('/usr/bin/mdevctl', '/usr/sbin/mdevctl') if os.path.exists(self.path(p))),
                       '/usr/bin/mdevctl')
        after = mdev_rule_text(sorted(parents), mdevctl)
        if after != before:
            plan.files.append(_files.FileChange(path, before, after))

    def _plan_create(self, plan: Plan, parent: MdevParent, targets: list, existing: dict[str, Mdev],
                     defined: dict[str, str], record: dict[str, dict], persist: bool) -> None:
        asked: dict[str, int] = {}
        for uid, type_id, name in targets:
            mtype = parent.types[type_id]
            have = existing.get(uid)
            if have is not None and (have.parent != self.parent or have.type_id != type_id):
                raise PartitionError('mediated device %s already exists as %s on %s, not %s on %s; give another uuid '
                                     'or name' % (uid, have.type_id, have.parent, type_id, self.parent))
            if have is None and uid in defined and defined[uid] != self.parent:
                raise PartitionError('mdevctl already defines %s on %s, not on %s' % (uid, defined[uid], self.parent))
            row = {'uuid': uid, 'type': type_id, 'type_name': mtype.name, 'parent': self.parent, 'name': name,
                   'state': 'kept' if have is not None else 'created', 'persistent': uid in defined}
            if have is None:
                asked[type_id] = asked.get(type_id, 0) + 1
                if persist:
                    self._need_mdevctl('persist a mediated device (persist=true)')
                    if uid not in defined:
                        plan.mdev_steps.append(Step('define %s' % uid, argv=[
                            'mdevctl', 'define', '--uuid', uid, '--parent', self.parent, '--type', type_id, '--auto']))
                    plan.mdev_steps.append(Step('start %s' % uid, argv=['mdevctl', 'start', '--uuid', uid]))
                    row['persistent'] = True
                else:
                    plan.mdev_steps.append(Step('create %s' % uid, os.path.join(mtype.path, 'create'), uid))
                record[uid] = {'parent': self.parent, 'type': type_id, 'name': name}
            elif persist and uid not in defined:
                self._need_mdevctl('persist a mediated device (persist=true)')
                plan.mdev_steps.append(Step('define %s' % uid, argv=[
                    'mdevctl', 'define', '--uuid', uid, '--parent', self.parent, '--type', type_id, '--auto']))
                row['persistent'] = True
            plan.mdevs.append(row)
        for type_id, count in sorted(asked.items()):
            available = parent.types[type_id].available_instances
            if count > available:
                raise PartitionError('%d new mediated device(s) of type %s asked on %s, over its capacity: '
                                     'available_instances is %d; nothing was changed'
                                     % (count, parent.types[type_id].label(), self.parent, available))

    def _plan_remove(self, plan: Plan, targets: list, existing: dict[str, Mdev], defined: dict[str, str],
                     record: dict[str, dict]) -> None:
        busy = []
        for uid, type_id, name in targets:
            have = existing.get(uid)
            if have is not None and have.parent != self.parent:
                raise PartitionError('mediated device %s belongs to %s, not %s' % (uid, have.parent, self.parent))
            if have is None and uid not in defined:
                record.pop(uid, None)
                continue
            if have is not None:
                users = self.mdev_users(have)
                if users:
                    busy.append('%s (used by %s)' % (uid, ', '.join(users)))
                    continue
            type_name = have.type_name if have is not None else type_id
            plan.mdevs.append({'uuid': uid, 'type': have.type_id if have else type_id, 'type_name': type_name,
                               'parent': self.parent, 'name': name, 'state': 'removed', 'persistent': False})
            if uid in defined:
                self._need_mdevctl('remove the mdevctl definition of %s' % uid)
                if have is not None:
                    plan.mdev_steps.append(Step('stop %s' % uid, argv=['mdevctl', 'stop', '--uuid', uid]))
                plan.mdev_steps.append(Step('undefine %s' % uid, argv=['mdevctl', 'undefine', '--uuid', uid]))
            elif have is not None:
                plan.mdev_steps.append(Step('remove %s' % uid, os.path.join(have.path, 'remove'), '1'))
            record.pop(uid, None)
        if busy:
            raise PartitionError('refusing to remove mediated devices that a running domain uses: %s; nothing was '
                                 'changed' % '; '.join(busy))

    def _need_mdevctl(self, why: str) -> None:
        refused = self.host_tools_refused()
        if refused:
            raise PartitionError('cannot %s: %s' % (why, refused))
        if not self.have_mdevctl():
            where = '' if self.runner is None or not self.runner.skips('mdevctl') else ' in %s' % self.root
            raise PartitionError('mdevctl is needed to %s but is not installed%s: install the package %s, or set '
                                 'persist=false to create the device in sysfs only (lost at reboot)'
                                 % (why, where, MDEVCTL_PACKAGE))

    # ------------------------------------------------------------------ apply
    def apply(self, plan: Plan) -> None:
        """The VF count, the udev rule, the mediated devices, then the record of what was made.

        When a mediated-device step fails, the record still gets the devices whose steps all ran (so a later
        ``state: absent`` finds them), and the error propagates.
        """
        for step in plan.sriov_steps:
            self._do(step)
        record = [f for f in plan.files if f.path == plan.record_path]
        self._apply_files([f for f in plan.files if f.path != plan.record_path])
        done: list[Step] = []
        try:
            for step in plan.mdev_steps:
                self._do(step)
                done.append(step)
        except FleetGpuError:
            if record:
                finished = {_uid(s) for s in done} - {_uid(s) for s in plan.mdev_steps if s not in done}
                partial = dict(plan.record_before)
                for uid in finished:
                    if uid in plan.record_after:
                        partial[uid] = plan.record_after[uid]
                    else:
                        partial.pop(uid, None)
                if partial != plan.record_before:
                    record[0].after = record_text(partial) if partial else None
                    self._apply_files(record)
            raise
        self._apply_files(record)

    @staticmethod
    def _apply_files(changes: list[_files.FileChange]) -> None:
        done: list[_files.FileChange] = []
        try:
            for change in changes:
                change.apply()
                done.append(change)
        except FleetGpuError:
            _files.revert_all(done)
            raise

    def _do(self, step: Step) -> None:
        if step.argv:
            if self.runner is None:
                raise PartitionError('%s needs a host command runner' % step.what)
            self.runner.run(step.argv)
            return
        if step.path is None or step.value is None:
            raise PartitionError('%s: nothing to write' % step.what)
        try:
            self.sysfs.write(step.path, step.value)
        except SysfsError as exc:
            hint = _ERRNO_HINTS.get(exc.errno or 0, '')
            raise PartitionError('%s failed: %s%s' % (step.what, exc, hint)) from None

    # ------------------------------------------------------------------ result
    def result(self, plan: Plan, check_mode: bool) -> dict[str, Any]:
        vfs: list[dict[str, Any]] = []
        if self.sriov is not None:
            if check_mode or not plan.sriov_steps:
                addresses = [str(a) for a in self.sriov.vfs] if not plan.sriov_steps else \
                    self.sriov.vf_addresses(plan.numvfs_after or 0)
            else:
                fresh = read_sriov(self.sysfs, self.sriov.address)
                addresses = [str(a) for a in fresh.vfs] if fresh else []
            for addr in addresses:
                link = self.sysfs.sys('bus', 'pci', 'devices', addr, 'driver')
                vfs.append({'address': addr, 'driver': self.sysfs.link_name(link)})
        return {'parent': self.parent, 'vfs': vfs, 'mdevs': plan.mdevs,
                'files': [f.path for f in plan.files if f.changed], 'commands': plan.commands()}


def _uid(step: Step) -> str:
    """The UUID a mediated-device step acts on (the last word of what it does)."""
    return step.what.rsplit(' ', 1)[-1]


# the kernel's answers to a write of sriov_numvfs or create, in words
_ERRNO_HINTS = {
    errno.EBUSY: ' (the kernel refuses a new non-zero VF count while VFs are enabled)',
    errno.ERANGE: ' (more VFs than sriov_totalvfs)',
    errno.ENOENT: ' (the PF has no driver, or its driver cannot configure SR-IOV)',
    errno.ENOSPC: ' (the parent has no room left for this type)',
    errno.EEXIST: ' (a mediated device with this UUID exists already)',
}


def run(module: AnsibleModule) -> dict[str, Any]:
    """Do what the gpu_partition module's parameters ask (or predict it in check mode); the module's result."""
    params = module.params
    result: dict[str, Any] = {'changed': False, 'parent': params['parent'], 'vfs': [], 'mdevs': [], 'files': [],
                              'commands': []}
    try:
        sysfs = from_params(params)
        # the host's file system: given, else the parent of sysfs_root (/ for /sys, /host for /host/sys)
        root = _files.check_path(params['root'] or sysfs.host_root, 'root')
        part = Partitioner(sysfs, root=root, runner=ModuleRunner(module, root))
        plan = part.plan(params['parent'], params['sriov_numvfs'], params['mdevs'], params['state'], params['persist'])
        if plan.changed and not module.check_mode:
            part.apply(plan)
        result.update(part.result(plan, module.check_mode))
    except FleetGpuError as exc:
        exc.details = dict(result, **exc.details)
        raise
    result['changed'] = plan.changed
    if module._diff and plan.changed:
        result['diff'] = plan.diff()
    return result
