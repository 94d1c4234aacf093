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
import os

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import Change
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import CommandError, Runner


class BootloaderError(Exception):
    """The bootloader configuration cannot be read, planned or changed."""


class Plan:
    """What one backend would do: command line before/after, files, commands."""

    def __init__(self, before: list[str], after: list[str]) -> None:
        self.before = before
        self.after = after
        self.files: list[_files.FileChange] = []
        self.commands: list[list[str]] = []
        # commands that undo self.commands when a later step fails (grubby, kernelstub)
        self.undo: list[list[str]] = []

    @property
    def changed(self) -> bool:
        return self.before != self.after or any(f.changed for f in self.files)


class Bootloader(metaclass=abc.ABCMeta):
    """One way of making the kernel command line persistent."""

    name = ''

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
    def plan(self, change: Change) -> Plan:
        """What applying ``change`` would do; reads only."""

    def apply(self, plan: Plan) -> None:
        """Write the plan's files, run its commands; on a command failure restore the files."""
        done: list[_files.FileChange] = []
        try:
            for change in plan.files:
                change.apply()
                done.append(change)
            if self.update:
                for argv in plan.commands:
                    self.runner.run(argv)
        except (CommandError, _files.FileError) as exc:
            self._rollback(plan, done)
            raise BootloaderError('%s: %s; the previous configuration was restored' % (self.name, exc)) from None

    def _rollback(self, plan: Plan, done: list[_files.FileChange]) -> None:
        for change in reversed(done):
            try:
                change.revert()
            except _files.FileError:
                pass
        for argv in plan.undo:
            try:
                self.runner.run(argv)
            except CommandError:
                pass

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
        image = self.path('/lib/modules/%s/vmlinuz' % version)
        if os.path.exists(image):
            return image
        return self.path('/boot/vmlinuz-%s' % version)


def from_running(running: list[str]) -> list[str]:
    """A command line seeded from /proc/cmdline, without what the boot loader adds itself."""
    return [t for t in running if not t.startswith(('BOOT_IMAGE=', 'initrd='))]


# Detection order: the first backend whose marker exists on the target wins.
DETECTION_ORDER = ('kernelstub', 'proxmox-boot-tool', 'systemd-boot', 'grubby', 'grub')


def detect(root: str) -> str:
    """Name of the bootloader backend for the host under ``root``."""
    def there(path: str) -> bool:
        return os.path.exists(_files.rooted(root, path))

    if there('/etc/kernelstub/configuration'):
        return 'kernelstub'
    if there('/etc/kernel/proxmox-boot-uuids'):
        return 'proxmox-boot-tool'
    for esp in ('/boot/efi', '/efi', '/boot'):
        if there(esp + '/loader/loader.conf'):
            return 'systemd-boot'
    entries = _files.rooted(root, '/boot/loader/entries')
    if (there('/usr/sbin/grubby') or there('/usr/bin/grubby') or there('/sbin/grubby')) and os.path.isdir(entries):
        return 'grubby'
    if there('/etc/default/grub'):
        return 'grub'
    raise BootloaderError(
        'cannot tell the bootloader of %s: none of /etc/kernelstub/configuration, /etc/kernel/proxmox-boot-uuids, '
        'loader/loader.conf (systemd-boot), grubby with /boot/loader/entries, /etc/default/grub exists; '
        'set the bootloader option' % (root or '/'))


def backend(name: str, root: str, runner: Runner, update: bool = True, running: list[str] | None = None) -> Bootloader:
    """The backend object for ``name`` (``auto`` detects it)."""
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import grub, grubby, kernelstub, systemd_boot

    if name == 'auto':
        name = detect(root)
    classes = {
        'grub': grub.Grub,
        'grubby': grubby.Grubby,
        'systemd-boot': systemd_boot.SystemdBoot,
        'proxmox-boot-tool': systemd_boot.ProxmoxBootTool,
        'kernelstub': kernelstub.Kernelstub,
    }
    if name not in classes:
        raise BootloaderError('unknown bootloader %r (one of %s)' % (name, ', '.join(sorted(classes))))
    return classes[name](root, runner, update, running)
