# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Bootloader backends for the kernel command line.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

One abstract :class:`Bootloader` and one class per tool (see the sibling
modules).  Each backend reads the configured command line from files, plans
the change (file contents before/after and the commands to run), and applies
the plan: files first (atomically, previous version kept), then the commands;
a failed command puts the previous files back.
"""

from __future__ import annotations

import abc
import json
import os

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange, CmdlineError, key_of, validate_token
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import CommandError, Runner


class BootloaderError(FleetGpuError):
    """The bootloader configuration cannot be read, planned or changed."""


class CmdlinePlan:
    """What one backend would do: command line before/after, files, commands."""

    def __init__(self, before: list[str], after: list[str]) -> None:
        self.before = before
        self.after = after
        self.files: list[_files.FileChange] = []
        self.commands: list[list[str]] = []
        # commands that undo self.commands when a later step fails (grubby, kernelstub)
        self.undo: list[list[str]] = []
        # the commands read the files: after the files are put back, running the ones that succeeded
        # again restores what they wrote (kernel-install for every kernel, proxmox-boot-tool)
        self.rerun_on_rollback = False

    @property
    def changed(self) -> bool:
        return self.before != self.after or any(f.changed for f in self.files)


class Bootloader(metaclass=abc.ABCMeta):
    """One way of making the kernel command line persistent."""

    name = ''
    # what detection looks for, named in the error when no backend's marker is there
    marker = ''

    @classmethod
    def detected(cls, root: str) -> bool:
        """Whether the host under ``root`` carries this bootloader's marker."""
        return False

    def __init__(self, root: str, runner: Runner, update: bool = True, running: list[str] | None = None) -> None:
        self.root = root or '/'
        self.runner = runner
        self.update = update
        self.running = running or []

    def path(self, path: str) -> str:
        return _files.rooted(self.root, path)

    @abc.abstractmethod
    def current(self) -> list[str]:
        """The configured command line of the default boot entry."""

    @abc.abstractmethod
    def plan(self, change: CmdlineChange) -> CmdlinePlan:
        """What applying ``change`` would do; reads only."""

    # --- boot-once trial: a one-time boot entry with the new command line (see stage_trial)
    # backends with a one-time boot set this and implement the three methods below
    supports_trial = False

    def trial_plan(self, change: CmdlineChange, panic: int) -> CmdlinePlan:
        """Files and commands that add the trial entry (the default entry's arguments after ``change``, plus
        ``panic=N``) and select it for the next boot only; ``plan.after`` is the trial's command line."""
        raise BootloaderError('%s has no one-time boot entry: a trial boot is not possible with it' % self.name)

    def trial_exists(self) -> bool:
        """Whether the collection's trial entry is there."""
        return False

    def trial_discard_plan(self) -> CmdlinePlan:
        """Files and commands that remove the trial entry and its one-time selection (nothing when absent)."""
        return CmdlinePlan([], [])

    def managed_difference(self) -> tuple[list[str], list[str]] | None:
        """(added, displaced) by a file only this collection writes, for a host changed before records
        were kept; None when the backend has no such file (or it is absent)."""
        return None

    def apply(self, plan: CmdlinePlan) -> None:
        """Write the plan's files, run its commands; on a failure put everything back or say what is left."""
        done: list[_files.FileChange] = []
        ran: list[list[str]] = []
        attempted = False
        try:
            for change in plan.files:
                change.apply()
                done.append(change)
            if self.update:
                for argv in plan.commands:
                    attempted = True
                    self.runner.run(argv)
                    ran.append(argv)
        except (CommandError, _files.FileError) as exc:
            left = self._rollback(plan, done, ran, attempted)
            if left:
                raise BootloaderError('%s: %s; the rollback is INCOMPLETE, still to fix by hand: %s'
                                      % (self.name, exc, '; '.join(left))) from None
            again = ' (and %s run again with it)' % ', '.join(' '.join(a) for a in ran) \
                if ran and plan.rerun_on_rollback else ''
            raise BootloaderError('%s: %s; the previous configuration was restored%s'
                                  % (self.name, exc, again)) from None

    def _rollback(self, plan: CmdlinePlan, done: list[_files.FileChange], ran: list[list[str]], attempted: bool) -> list[str]:
        """Undo what was done; returns what could not be undone (empty: all restored)."""
        left = _files.revert_all(done)
        if plan.rerun_on_rollback:
            # the commands that succeeded read the new file: run them again with the old one
            for argv in ran:
                try:
                    self.runner.run(argv)
                except CommandError as exc:
                    left.append('%s could not be run again with the previous file, so what it wrote keeps the new '
                                'arguments (%s)' % (' '.join(argv), exc))
        elif attempted:
            for argv in plan.undo:
                try:
                    self.runner.run(argv)
                except CommandError as exc:
                    left.append('undoing with %s failed: %s' % (' '.join(argv), exc))
        return left

    def kernel_versions(self) -> list[str]:
        """Kernel versions installed on the target (``/lib/modules/*`` with an image)."""
        found = []
        base = self.path('/lib/modules')
        try:
            names = sorted(os.listdir(base))
        except OSError:
            names = []
        for name in names:
            if os.path.exists(os.path.join(base, name, 'vmlinuz')) or os.path.exists(self.path('/boot/vmlinuz-%s' % name)):
                found.append(name)
        return found

    def kernel_image(self, version: str) -> str:
        """The kernel image of ``version`` as a path on the target (commands run inside the root)."""
        image = '/lib/modules/%s/vmlinuz' % version
        if os.path.exists(self.path(image)):
            return image
        return '/boot/vmlinuz-%s' % version


# What the collection itself changed on the command line, per host, next to the vfio_bind journal.
RECORD = '/var/lib/fleetgpu-passthrough/kernel_cmdline.json'
RECORD_VERSION = 1


class Record:
    """The kernel arguments this collection added, and the host's own ones it displaced.

    Kept as a small JSON file under the root (written atomically with the bootloader's files, and
    rolled back with them).  A token that was on the command line before the collection ran is
    never recorded as added, so an undo (:meth:`undo_change`) removes only what the collection
    put there and puts back what it took away; an empty record is no file at all.
    """

    def __init__(self, path: str, added: list[str] | None = None, displaced: list[str] | None = None) -> None:
        self.path = path
        self.added = list(added or [])
        self.displaced = list(displaced or [])

    @classmethod
    def load(cls, path: str, loader: 'Bootloader | None' = None) -> 'Record':
        """The record at ``path``; without one, what ``loader``'s own managed file shows was changed."""
        record = cls._load(path)
        if loader is not None and not os.path.lexists(path):
            legacy = loader.managed_difference()
            if legacy:
                record = cls(path, legacy[0], legacy[1])
        return record

    @classmethod
    def _load(cls, path: str) -> 'Record':
        try:
            text = _files.read(path)
        except _files.FileError as exc:
            raise BootloaderError(str(exc)) from None
        if text is None:
            return cls(path)
        what = 'the record %s of the kernel arguments this collection changed' % path
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BootloaderError('%s is not valid JSON (%s); it was left as it is: repair or remove it'
                                  % (what, exc)) from None
        if not isinstance(data, dict) or data.get('version') != RECORD_VERSION:
            raise BootloaderError('%s is not a version %d record; it was left as it is' % (what, RECORD_VERSION))
        lists = []
        for key in ('added', 'displaced'):
            value = data.get(key, [])
            if not isinstance(value, list):
                raise BootloaderError('%s: %s must be a list; it was left as it is' % (what, key))
            try:
                lists.append([validate_token(t, '%s %s' % (path, key)) for t in value])
            except CmdlineError as exc:
                raise BootloaderError('%s: %s; it was left as it is' % (what, exc)) from None
        return cls(path, lists[0], lists[1])

    def updated(self, before: list[str], after: list[str]) -> 'Record':
        """The record after a change from ``before`` to ``after``."""
        added = list(self.added)
        displaced = list(self.displaced)
        for token in after:
            if token not in before:
                if token in displaced:
                    displaced.remove(token)
                elif token not in added:
                    added.append(token)
        for token in before:
            if token not in after:
                if token in added:
                    added.remove(token)
                elif token not in displaced:
                    displaced.append(token)
        return Record(self.path, added, displaced)

    def render(self) -> str | None:
        if not self.added and not self.displaced:
            return None
        return json.dumps({'comment': _files.HEADER, 'version': RECORD_VERSION, 'added': self.added,
                           'displaced': self.displaced}, indent=1, sort_keys=True) + '\n'

    def undo_change(self, limit: list[str] | None = None) -> CmdlineChange:
        """The change that gives back what was recorded (only the keys of ``limit`` when given)."""
        keys = {key_of(validate_token(t, 'remove')) for t in (limit or [])}

        def wanted(token: str) -> bool:
            return not keys or key_of(token) in keys

        add: list[str] = []
        for token in self.displaced:
            if wanted(token) and key_of(token) not in {key_of(t) for t in add}:
                add.append(token)
        remove = [t for t in self.added if wanted(t) and t not in add]
        return CmdlineChange(add, remove)


# The one-time boot entry of a trial (GRUB menu entry id, systemd-boot entry file name without .conf).
TRIAL_ID = 'fleetgpu-passthrough-trial'


def trial_tokens(change: CmdlineChange, tokens: list[str], panic: int) -> list[str]:
    """The trial entry's arguments: ``change`` applied to the default entry's ``tokens``, and ``panic=N``
    (the user's own panic= is replaced in the trial entry only: a trial must never wait at a panic)."""
    out = [t for t in change.apply(tokens) if key_of(t) != 'panic']
    return out + ['panic=%d' % panic]


def merge_plans(before: list[str], after: list[str], *plans: CmdlinePlan) -> CmdlinePlan:
    """One plan doing the files and commands of ``plans`` in order (a command is run once)."""
    merged = CmdlinePlan(before, after)
    for part in plans:
        merged.files.extend(part.files)
        for argv in part.commands:
            if argv not in merged.commands:
                merged.commands.append(argv)
        merged.undo.extend(part.undo)
        merged.rerun_on_rollback = merged.rerun_on_rollback or part.rerun_on_rollback
    return merged


def from_running(running: list[str]) -> list[str]:
    """A command line seeded from /proc/cmdline, without what the boot loader adds itself."""
    return [t for t in running if not t.startswith(('BOOT_IMAGE=', 'initrd='))]


def there(root: str, path: str) -> bool:
    """Whether ``path`` exists under ``root``."""
    return os.path.exists(_files.rooted(root, path))


def registry() -> dict[str, type[Bootloader]]:
    """Every bootloader backend by name, in detection order (the first whose marker exists wins).

    The one list of bootloaders: the module's choices, detection and lookup all come from it, so adding a
    bootloader means its file under _bootloader/ and a line here.
    """
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import (
        grub, grubby, kernelstub, proxmox_boot_tool, systemd_boot)

    order: tuple[type[Bootloader], ...] = (kernelstub.Kernelstub, proxmox_boot_tool.ProxmoxBootTool,
                                           systemd_boot.SystemdBoot, grubby.Grubby, grub.Grub)
    return {cls.name: cls for cls in order}


def names() -> list[str]:
    """The values of the module's ``bootloader`` option: ``auto`` and every backend."""
    return ['auto'] + sorted(registry())


def detect(root: str) -> str:
    """Name of the bootloader backend for the host under ``root``."""
    backends = registry()
    for name, cls in backends.items():
        if cls.detected(root):
            return name
    raise BootloaderError('cannot tell the bootloader of %s: none of %s exists; set the bootloader option'
                          % (root or '/', ', '.join(cls.marker for cls in backends.values())))


def backend(name: str, root: str, runner: Runner, update: bool = True, running: list[str] | None = None) -> Bootloader:
    """The backend object for ``name`` (``auto`` detects it)."""
    if name == 'auto':
        name = detect(root)
    classes = registry()
    if name not in classes:
        raise BootloaderError('unknown bootloader %r (one of %s)' % (name, ', '.join(sorted(classes))))
    return classes[name](root, runner, update, running)
