# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""/etc/kernel/cmdline backends: the shared file logic and systemd-boot (kernel-install).

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

proxmox-boot-tool uses the same file (``proxmox_boot_tool.py``).
/etc/kernel/cmdline is read whole by kernel-install and proxmox-boot-tool, so
it cannot carry a comment header: it holds the arguments on one line.  When it
does not exist yet it is seeded from the running command line (what
kernel-install itself would use), without ``BOOT_IMAGE=`` and ``initrd=``.
"""

from __future__ import annotations

import fnmatch
import os
import re

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import (
    TRIAL_ID, Bootloader, BootloaderError, CmdlinePlan, from_running, there, trial_tokens)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange, check_length, join, split

CMDLINE = '/etc/kernel/cmdline'
ESPS = ('/boot/efi', '/efi', '/boot')
# systemd-boot's one-time entry (Boot Loader Interface): an EFI variable of the loader's vendor GUID
ONESHOT = '/sys/firmware/efi/efivars/LoaderEntryOneShot-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f'
TRIAL_FILE = TRIAL_ID + '.conf'


def _version_key(name: str) -> list[tuple[int, object]]:
    """A sort key that orders numbers as numbers (6.1.0-10 after 6.1.0-9)."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r'(\d+)', name)]


def oneshot_entry(data: bytes | None) -> str:
    """The entry named by a LoaderEntryOneShot efivarfs file (4 bytes of attributes, then UTF-16LE)."""
    if not data or len(data) < 4:
        return ''
    return data[4:].decode('utf-16-le', errors='replace').rstrip('\x00')


class KernelCmdlineFile(Bootloader):
    """Shared logic: the arguments live in /etc/kernel/cmdline."""

    def current(self) -> list[str]:
        text = _files.read(self.path(CMDLINE))
        if text is None:
            return from_running(self.running)
        return split(' '.join(line for line in text.splitlines() if not line.lstrip().startswith('#')))

    def refresh_commands(self) -> list[list[str]]:
        raise NotImplementedError

    def plan(self, change: CmdlineChange) -> CmdlinePlan:
        before = self.current()
        after = change.apply(before)
        plan = CmdlinePlan(before, after)
        file_change = _files.plan(self.path(CMDLINE), ' '.join(after) + '\n')
        if file_change.changed:
            plan.files.append(file_change)
            plan.commands.extend(self.refresh_commands())
            plan.rerun_on_rollback = True
        return plan


class SystemdBoot(KernelCmdlineFile):
    name = 'systemd-boot'
    marker = 'loader/loader.conf (systemd-boot)'

    @classmethod
    def detected(cls, root: str) -> bool:
        return any(there(root, esp + '/loader/loader.conf') for esp in ('/boot/efi', '/efi', '/boot'))

    def refresh_commands(self) -> list[list[str]]:
        versions = self.kernel_versions()
        if not versions:
            raise BootloaderError('systemd-boot: no installed kernel found under %s' % self.path('/lib/modules'))
        return [['kernel-install', 'add', version, self.kernel_image(version)] for version in versions]

    # --- boot-once trial: a loader entry of its own, selected with bootctl set-oneshot

    supports_trial = True

    def esp(self) -> str:
        for esp in ESPS:
            if there(self.root, esp + '/loader/loader.conf'):
                return esp
        raise BootloaderError('systemd-boot: no loader/loader.conf under %s' % ', '.join(self.path(e) for e in ESPS))

    def default_entry(self) -> tuple[str, str]:
        """(file name, content) of the entry systemd-boot boots by default: the one loader.conf's ``default``
        names, else the one of the highest version (systemd-boot's order for entries of one kind)."""
        esp = self.esp()
        directory = self.path(esp + '/loader/entries')
        try:
            names = sorted((n for n in os.listdir(directory) if n.endswith('.conf') and n != TRIAL_FILE),
                           key=_version_key, reverse=True)
        except OSError:
            names = []
        if not names:
            raise BootloaderError('systemd-boot: no boot entry in %s to base the trial boot on' % directory)
        pattern = ''
        for line in (_files.read(self.path(esp + '/loader/loader.conf')) or '').splitlines():
            words = line.split(None, 1)
            if len(words) == 2 and words[0] == 'default':
                pattern = words[1].strip()
        chosen = [n for n in names if pattern and fnmatch.fnmatch(n, pattern)] or names
        return chosen[0], _files.read(os.path.join(directory, chosen[0])) or ''

    def _oneshot(self) -> str:
        try:
            with open(self.path(ONESHOT), 'rb') as handle:
                return oneshot_entry(handle.read())
        except OSError:
            return ''

    def trial_plan(self, change: CmdlineChange, panic: int) -> CmdlinePlan:
        name, content = self.default_entry()
        lines = content.splitlines()
        options = [line.split(None, 1)[1] if len(line.split(None, 1)) == 2 else '' for line in lines
                   if line.split(None, 1)[:1] == ['options']]
        tokens = split(' '.join(options))
        trial = trial_tokens(change, tokens, panic)
        check_length(trial)
        kept = [line for line in lines if line.split(None, 1)[:1] not in (['title'], ['options'], ['sort-key'])]
        entry = (_files.header() + '# a one-time trial of new kernel arguments (bootctl set-oneshot), based on %s\n' % name
                 + 'title fleetgpu.passthrough trial boot (once)\n' + '\n'.join(kept) + '\noptions %s\n' % join(trial))
        plan = CmdlinePlan(tokens, trial)
        file_change = _files.plan(self.path(self.esp() + '/loader/entries/' + TRIAL_FILE), entry, keep_backup=False)
        if file_change.changed:
            plan.files.append(file_change)
        if file_change.changed or self._oneshot() != TRIAL_FILE:
            plan.commands.append(['bootctl', 'set-oneshot', TRIAL_FILE])
        return plan

    def trial_exists(self) -> bool:
        return any(os.path.lexists(self.path(esp + '/loader/entries/' + TRIAL_FILE)) for esp in ESPS)

    def trial_discard_plan(self) -> CmdlinePlan:
        plan = CmdlinePlan([], [])
        for esp in ESPS:
            path = self.path(esp + '/loader/entries/' + TRIAL_FILE)
            if os.path.lexists(path):
                plan.files.append(_files.plan(path, None, keep_backup=False))
        if self._oneshot() == TRIAL_FILE:
            # an empty identifier removes the variable
            plan.commands.append(['bootctl', 'set-oneshot', ''])
        return plan
