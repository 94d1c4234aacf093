# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""grubby and Boot Loader Specification entries (RHEL, Rocky, Alma, Fedora).

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

The configured arguments are read from the BLS entries under
/boot/loader/entries (``$kernelopts`` expanded from grubenv on EL8).  A change
runs ``grubby --update-kernel=ALL --args=... --remove-args=...``, keeps
``GRUB_CMDLINE_LINUX`` in /etc/default/grub in step (new kernels and
grub2-mkconfig take it from there), and, where grub2-mkconfig knows
``--update-bls-cmdline`` (RHEL 9.3 and later), regenerates with it so the
entries and grub.cfg agree.
"""

from __future__ import annotations

import os
import re

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import Bootloader, BootloaderError, CmdlinePlan, there
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader.grub import quote, source
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange, split
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import CommandError

ENTRIES = '/boot/loader/entries'
GRUBENV = ('/boot/grub2/grubenv', '/boot/efi/EFI/redhat/grubenv')
_LINUX_RE = re.compile(r'^(\s*(?:export\s+)?GRUB_CMDLINE_LINUX=).*$', re.M)


class Grubby(Bootloader):
    name = 'grubby'
    marker = 'grubby with /boot/loader/entries'

    @classmethod
    def detected(cls, root: str) -> bool:
        return (any(there(root, path) for path in ('/usr/sbin/grubby', '/usr/bin/grubby', '/sbin/grubby'))
                and os.path.isdir(_files.rooted(root, '/boot/loader/entries')))

    def _grubenv(self) -> dict[str, str]:
        for path in GRUBENV:
            text = _files.read(self.path(path))
            if text is not None:
                env = {}
                for line in text.splitlines():
                    if '=' in line and not line.startswith('#'):
                        key, value = line.split('=', 1)
                        env[key] = value
                return env
        return {}

    def entries(self) -> dict[str, list[str]]:
        """BLS entry file name -> its argument tokens."""
        directory = self.path(ENTRIES)
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith('.conf'))
        except OSError:
            names = []
        if not names:
            raise BootloaderError('grubby: no boot entries in %s' % directory)
        grubenv = self._grubenv()
        result: dict[str, list[str]] = {}
        for name in names:
            text = _files.read(os.path.join(directory, name)) or ''
            tokens: list[str] = []
            for line in text.splitlines():
                parts = line.strip().split(None, 1)
                if len(parts) == 2 and parts[0] == 'options':
                    for token in split(parts[1]):
                        if token.startswith('$') and token[1:] in grubenv:
                            tokens.extend(split(grubenv[token[1:]]))
                        else:
                            tokens.append(token)
            result[name] = tokens
        return result

    def _default_entry(self, entries: dict[str, list[str]]) -> str:
        release = ''
        for token in self.running:
            if token.startswith('BOOT_IMAGE='):
                release = token.split('vmlinuz-', 1)[-1]
        for name in entries:
            if release and name.endswith('-%s.conf' % release):
                return name
        return sorted(entries)[-1]

    def current(self) -> list[str]:
        entries = self.entries()
        return entries[self._default_entry(entries)]

    def _mkconfig_bls(self) -> bool:
        if not self.runner.have('grub2-mkconfig'):
            return False
        try:
            _rc, out, err = self.runner.run(['grub2-mkconfig', '--help'], check=False)
        except CommandError:
            return False
        return '--update-bls-cmdline' in (out + err)

    def plan(self, change: CmdlineChange) -> CmdlinePlan:
        entries = self.entries()
        before = entries[self._default_entry(entries)]
        after = change.apply(before)
        plan = CmdlinePlan(before, after)
        add: list[str] = []
        remove: list[str] = []
        for tokens in entries.values():
            wanted = change.apply(tokens)
            add += [t for t in wanted if t not in tokens and t not in add]
            remove += [t for t in tokens if t not in wanted and t not in remove and t not in add]
        grub_default = self.path('/etc/default/grub')
        text = _files.read(grub_default)
        if text is not None:
            env = source(text, {})
            linux = split(env.get('GRUB_CMDLINE_LINUX', ''))
            new_linux = change.apply(linux)
            if new_linux != linux:
                line = 'GRUB_CMDLINE_LINUX=%s' % quote(new_linux)
                if _LINUX_RE.search(text):
                    new_text = _LINUX_RE.sub(lambda m: m.group(1) + line.split('=', 1)[1], text, count=1)
                else:
                    new_text = text + ('' if text.endswith('\n') or not text else '\n') + line + '\n'
                plan.files.append(_files.plan(grub_default, new_text))
        if add or remove:
            cmd = ['grubby', '--update-kernel=ALL']
            undo = ['grubby', '--update-kernel=ALL']
            if add:
                cmd.append('--args=%s' % ' '.join(add))
                undo.append('--remove-args=%s' % ' '.join(add))
            if remove:
                cmd.append('--remove-args=%s' % ' '.join(remove))
                undo.append('--args=%s' % ' '.join(remove))
            plan.commands.append(cmd)
            plan.undo.append(undo)
        if (add or remove or plan.files) and self.update and self._mkconfig_bls():
            target = '/boot/grub2/grub.cfg'
            plan.commands.append(['grub2-mkconfig', '-o', target, '--update-bls-cmdline'])
        return plan
