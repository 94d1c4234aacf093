# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""GRUB on Debian and Ubuntu: a drop-in under /etc/default/grub.d/, then update-grub.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

grub-mkconfig sources /etc/default/grub, then every /etc/default/grub.d/*.cfg
in name order; the normal boot entry gets ``GRUB_CMDLINE_LINUX`` followed by
``GRUB_CMDLINE_LINUX_DEFAULT``, recovery entries ``GRUB_CMDLINE_LINUX`` only.
The collection's drop-in (named to sort last) never edits the user's files:
it appends the added arguments to ``GRUB_CMDLINE_LINUX`` (so recovery boots get
them too) and, only when an argument set earlier must go, assigns the
filtered value of that variable.
"""

from __future__ import annotations

import os

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import (
    TRIAL_ID, Bootloader, BootloaderError, CmdlinePlan, there, trial_tokens)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange, check_length, join, split

DROPIN = '/etc/default/grub.d/zz-fleetgpu-passthrough.cfg'
LINUX = 'GRUB_CMDLINE_LINUX'
DEFAULT = 'GRUB_CMDLINE_LINUX_DEFAULT'
# The trial entry: a grub.d script that prints one menu entry, sorted after 10_linux and 40_custom so
# that it never becomes entry 0 (GRUB_DEFAULT=0 keeps booting the host's own default entry).
TRIAL_SCRIPT = '/etc/grub.d/42_fleetgpu-passthrough-trial'
GRUB_CFG = '/boot/grub/grub.cfg'
GRUBENV = '/boot/grub/grubenv'


def first_entry(cfg: str) -> list[str] | None:
    """The lines of the first top-level ``menuentry`` block of a grub.cfg (the default with GRUB_DEFAULT=0),
    not counting the collection's own trial entry; None when there is none."""
    lines = cfg.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith('menuentry ') and TRIAL_ID not in line:
            block = [line]
            index += 1
            while index < len(lines):
                block.append(lines[index])
                if lines[index] == '}':
                    return block
                index += 1
            return None
        index += 1
    return None


def next_entry(grubenv: str | None) -> str:
    """The ``next_entry`` of a GRUB environment block ('' when unset)."""
    for line in (grubenv or '').splitlines():
        if line.startswith('next_entry='):
            return line[len('next_entry='):]
    return ''


def _expand(text: str, env: dict[str, str]) -> tuple[str, int]:
    """Expand one ``$NAME`` / ``${NAME}`` at the start of ``text``; returns (value, consumed)."""
    if text.startswith('${'):
        end = text.find('}')
        if end < 0:
            return '$', 1
        inner = text[2:end]
        for op in (':+', ':-'):
            if op in inner:
                name, word = inner.split(op, 1)
                val = env.get(name, '')
                if op == ':+':
                    return (parse_value(word, env) if val else ''), end + 1
                return (val if val else parse_value(word, env)), end + 1
        return env.get(inner, ''), end + 1
    index = 1
    while index < len(text) and (text[index].isalnum() or text[index] == '_'):
        index += 1
    if index == 1:
        return '$', 1
    return env.get(text[1:index], ''), index


def parse_value(text: str, env: dict[str, str]) -> str:
    """The value of a shell word (quotes, backslashes, ``$VAR`` expansion)."""
    out: list[str] = []
    index = 0
    quote = ''
    while index < len(text):
        char = text[index]
        if quote == "'":
            if char == "'":
                quote = ''
            else:
                out.append(char)
            index += 1
        elif char == '\\' and index + 1 < len(text) and (quote == '' or text[index + 1] in '"\\$`'):
            out.append(text[index + 1])
            index += 2
        elif char == '$':
            value, used = _expand(text[index:], env)
            out.append(value)
            index += used
        elif char == '"':
            quote = '' if quote == '"' else '"'
            index += 1
        elif char == "'" and quote == '':
            quote = "'"
            index += 1
        elif char == '#' and quote == '' and (index == 0 or text[index - 1].isspace()):
            break
        elif char.isspace() and quote == '':
            break
        else:
            out.append(char)
            index += 1
    return ''.join(out)


def source(text: str, env: dict[str, str]) -> dict[str, str]:
    """Apply the plain variable assignments of a shell file to ``env`` (other lines are ignored)."""
    env = dict(env)
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith('export '):
            line = line[len('export '):].strip()
        if not line or line.startswith('#') or '=' not in line:
            continue
        name, value = line.split('=', 1)
        if not name or not all(c.isalnum() or c == '_' for c in name) or name[0].isdigit():
            continue
        env[name] = parse_value(value, env)
    return env


def quote(tokens: list[str]) -> str:
    """Tokens as a double-quoted shell word."""
    text = ' '.join(tokens)
    for char in ('\\', '"', '$', '`'):
        text = text.replace(char, '\\' + char)
    return '"%s"' % text


class Grub(Bootloader):
    """Debian/Ubuntu GRUB through a drop-in and ``update-grub``."""

    name = 'grub'
    marker = '/etc/default/grub'

    @classmethod
    def detected(cls, root: str) -> bool:
        return there(root, cls.marker)

    def _files(self) -> list[str]:
        """The shell files grub-mkconfig sources, in order (target paths)."""
        found = ['/etc/default/grub']
        directory = self.path('/etc/default/grub.d')
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith('.cfg'))
        except OSError:
            names = []
        dropin_name = os.path.basename(DROPIN)
        if dropin_name not in names:
            names = sorted(names + [dropin_name])
        found += ['/etc/default/grub.d/%s' % n for n in names]
        return found

    def _evaluate(self, dropin_content: str | None) -> tuple[dict[str, str], dict[str, str], list[str]]:
        """(env before the drop-in, final env, files after the drop-in that set the variables)."""
        env: dict[str, str] = {}
        before_dropin: dict[str, str] = {}
        later: list[str] = []
        seen_dropin = False
        for path in self._files():
            if path == DROPIN:
                before_dropin = dict(env)
                seen_dropin = True
                text = dropin_content
            else:
                text = _files.read(self.path(path))
            if text is None:
                continue
            new_env = source(text, env)
            if seen_dropin and path != DROPIN and any(new_env.get(v) != env.get(v) for v in (LINUX, DEFAULT)):
                later.append(path)
            env = new_env
        if not os.path.exists(self.path('/etc/default/grub')):
            raise BootloaderError('grub: %s does not exist' % self.path('/etc/default/grub'))
        return before_dropin, env, later

    @staticmethod
    def _line(env: dict[str, str]) -> list[str]:
        return split(env.get(LINUX, '')) + split(env.get(DEFAULT, ''))

    def current(self) -> list[str]:
        _base, env, _later = self._evaluate(_files.read(self.path(DROPIN)))
        return self._line(env)

    def managed_difference(self) -> tuple[list[str], list[str]] | None:
        """What the collection's drop-in changes (it is the collection's own file: all of it was added by it)."""
        text = _files.read(self.path(DROPIN))
        if text is None:
            return None
        base, env, _later = self._evaluate(text)
        before, after = self._line(base), self._line(env)
        return [t for t in after if t not in before], [t for t in before if t not in after]

    def render(self, base: dict[str, str], desired: list[str]) -> str | None:
        """Drop-in content that turns ``base`` into ``desired`` (None: no drop-in needed)."""
        want = set(desired)
        base_linux = split(base.get(LINUX, ''))
        base_default = split(base.get(DEFAULT, ''))
        new_linux = [t for t in base_linux if t in want]
        new_default = [t for t in base_default if t in want]
        have = set(new_linux) | set(new_default)
        append = [t for t in desired if t not in have]
        lines: list[str] = []
        if new_default != base_default:
            lines.append('%s=%s' % (DEFAULT, quote(new_default)))
        if new_linux != base_linux:
            lines.append('%s=%s' % (LINUX, quote(new_linux + append)))
        elif append:
            lines.append('%s="$%s %s' % (LINUX, LINUX, quote(append)[1:]))
        if not lines:
            return None
        return _files.header() + '# kernel arguments set by fleetgpu.passthrough.kernel_cmdline\n' + '\n'.join(lines) + '\n'

    def plan(self, change: CmdlineChange) -> CmdlinePlan:
        dropin_path = self.path(DROPIN)
        base, env, _later = self._evaluate(_files.read(dropin_path))
        before = self._line(env)
        desired = change.apply(before)
        content = self.render(base, desired)
        _b, new_env, later = self._evaluate(content)
        after = self._line(new_env)
        if not change.satisfied_by(after):
            raise BootloaderError('grub: %s sorts after %s and sets the command line again; the requested arguments '
                                  'would not take effect (rename or edit it)' % (', '.join(later) or 'a drop-in', DROPIN))
        plan = CmdlinePlan(before, after)
        file_change = _files.plan(dropin_path, content)
        if file_change.changed:
            plan.files.append(file_change)
            plan.commands.append(['update-grub'])
        return plan

    # --- boot-once trial: a managed menu entry selected with grub-reboot

    supports_trial = True

    def trial_plan(self, change: CmdlineChange, panic: int) -> CmdlinePlan:
        cfg = _files.read(self.path(GRUB_CFG))
        block = first_entry(cfg or '')
        if block is None:
            raise BootloaderError('grub: no menu entry found in %s to base the trial boot on (run update-grub first)'
                                  % self.path(GRUB_CFG))
        body = block[1:-1]
        found = [i for i, line in enumerate(body) if line.strip().split(None, 1)[:1] == ['linux']]
        if len(found) != 1:
            raise BootloaderError('grub: the first menu entry of %s has %d linux lines; cannot base the trial boot '
                                  'on it' % (self.path(GRUB_CFG), len(found)))
        line = body[found[0]]
        indent = line[:len(line) - len(line.lstrip())]
        words = line.strip().split(None, 2)
        if len(words) < 2:
            raise BootloaderError('grub: the linux line of the first menu entry of %s names no kernel' % self.path(GRUB_CFG))
        tokens = split(words[2]) if len(words) > 2 else []
        trial = trial_tokens(change, tokens, panic)
        check_length(trial)
        body[found[0]] = '%slinux\t%s %s' % (indent, words[1], join(trial))
        entry = ["menuentry 'fleetgpu.passthrough trial boot (once)' --id %s {" % TRIAL_ID] + body + ['}']
        head = _files.header() + ('# a one-time trial of new kernel arguments, selected for one boot with grub-reboot; '
                                  'removed once the\n# new arguments are made permanent or the trial is given up\n')
        script = '#!/bin/sh\n%sexec tail -n +%d "$0"\n' % (head, head.count('\n') + 3) + '\n'.join(entry) + '\n'
        plan = CmdlinePlan(tokens, trial)
        file_change = _files.plan(self.path(TRIAL_SCRIPT), script, mode=0o755, keep_backup=False)
        if file_change.changed:
            plan.files.append(file_change)
            plan.commands.append(['update-grub'])
        if file_change.changed or next_entry(_files.read(self.path(GRUBENV))) != TRIAL_ID:
            plan.commands.append(['grub-reboot', TRIAL_ID])
        return plan

    def trial_exists(self) -> bool:
        return os.path.lexists(self.path(TRIAL_SCRIPT))

    def trial_discard_plan(self) -> CmdlinePlan:
        plan = CmdlinePlan([], [])
        if self.trial_exists():
            plan.files.append(_files.plan(self.path(TRIAL_SCRIPT), None, mode=0o755, keep_backup=False))
            plan.commands.append(['update-grub'])
        if next_entry(_files.read(self.path(GRUBENV))) == TRIAL_ID:
            plan.commands.append(['grub-editenv', GRUBENV, 'unset', 'next_entry'])
        return plan
