# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Kernel command lines as token sets.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

A kernel command line is a list of tokens, ``key`` or ``key=value``.  The
functions here add, replace and remove tokens with set semantics: a token is
never duplicated, and adding ``key=value`` replaces every other value of that
key, so ``intel_iommu=off`` can never sit next to ``intel_iommu=on``.
"""

from __future__ import annotations

import re

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError

_KEY_RE = re.compile(r'^[A-Za-z0-9_.\-]+$')
# x86 COMMAND_LINE_SIZE: the kernel keeps this many bytes of its command line, terminating NUL
# included, and silently drops the rest (the IOMMU arguments after it would be lost).
MAX_CMDLINE = 2048


class CmdlineError(FleetGpuError, ValueError):
    """A requested change is not a valid or consistent set of kernel arguments."""


def split(text: str) -> list[str]:
    """Split a command line into tokens; double quotes group a value with spaces."""
    tokens: list[str] = []
    cur: list[str] = []
    in_quote = False
    started = False
    for char in text or '':
        if char == '"':
            in_quote = not in_quote
            cur.append(char)
            started = True
        elif char.isspace() and not in_quote:
            if started:
                tokens.append(''.join(cur))
                cur = []
                started = False
        else:
            cur.append(char)
            started = True
    if started:
        tokens.append(''.join(cur))
    return tokens


def join(tokens: list[str]) -> str:
    return ' '.join(tokens)


def check_length(tokens: list[str]) -> None:
    """Refuse a command line the kernel would cut (x86: 2048 bytes with the terminating NUL)."""
    size = len(join(tokens).encode('utf-8'))
    if size + 1 > MAX_CMDLINE:
        raise CmdlineError('the kernel command line would be %d bytes long (with the arguments already there); the '
                           'kernel keeps at most %d bytes including its terminating NUL (x86 COMMAND_LINE_SIZE) and '
                           'drops the rest, so nothing was written' % (size, MAX_CMDLINE))


def reboot_reasons(missing: list[str], lingering: list[str]) -> list[str]:
    """Why the running kernel needs a reboot to match the configured command line, one sentence each."""
    out = []
    if missing:
        out.append('the running kernel lacks ' + join(missing))
    if lingering:
        out.append('the running kernel still has ' + join(lingering))
    return out


def key_of(token: str) -> str:
    return token.split('=', 1)[0]


def validate_token(token: object, what: str) -> str:
    """A token as the user gave it, checked: ``key`` or ``key=value`` without spaces."""
    if not isinstance(token, str) or not token.strip():
        raise CmdlineError('%s entry %r is not a kernel argument (expected key or key=value)' % (what, token))
    token = token.strip()
    bad = [c for c in token if ord(c) < 0x20 or ord(c) == 0x7f]
    if bad:
        raise CmdlineError('%s entry %r holds a control character (%r): the kernel command line is a single line of '
                           'printable characters' % (what, token, bad[0]))
    if token.count('"') % 2:
        raise CmdlineError('%s entry %r has an unbalanced double quote: at boot the rest of the command line would '
                           'become part of its value' % (what, token))
    if len(token.encode('utf-8')) >= MAX_CMDLINE:
        raise CmdlineError('%s entry %r... is %d bytes long: the whole kernel command line is limited to %d bytes '
                           '(x86 COMMAND_LINE_SIZE, terminating NUL included)'
                           % (what, token[:40], len(token.encode('utf-8')), MAX_CMDLINE))
    if len(split(token)) != 1:
        raise CmdlineError('%s entry %r holds more than one kernel argument; give one per list item' % (what, token))
    if not _KEY_RE.match(key_of(token)):
        raise CmdlineError('%s entry %r: key %r is not a valid kernel parameter name' % (what, token, key_of(token)))
    return token


class CmdlineChange:
    """A validated set of additions and removals."""

    def __init__(self, add: list[str] | None = None, remove: list[str] | None = None) -> None:
        self.add = [validate_token(t, 'add') for t in (add or [])]
        self.remove = [validate_token(t, 'remove') for t in (remove or [])]
        seen: dict[str, str] = {}
        for token in self.add:
            key = key_of(token)
            if key in seen and seen[key] != token:
                raise CmdlineError('add holds a contradiction: %r and %r set the same parameter %r'
                                   % (seen[key], token, key))
            seen[key] = token
        self.add = list(dict.fromkeys(self.add))
        for token in self.remove:
            for added in self.add:
                if token == added or ('=' not in token and key_of(added) == token):
                    raise CmdlineError('%r is both added and removed (remove entry %r)' % (added, token))

    @property
    def add_keys(self) -> set[str]:
        return {key_of(t) for t in self.add}

    def removes(self, token: str) -> bool:
        """True when ``token`` is dropped by a remove entry (exact token, or every value of a bare key)."""
        for entry in self.remove:
            if entry == token or ('=' not in entry and key_of(token) == entry):
                return True
        return False

    def displaces(self, token: str) -> bool:
        """True when ``token`` must go: removed, or another value of a key being added."""
        if self.removes(token):
            return True
        key = key_of(token)
        return key in self.add_keys and token not in self.add

    def apply(self, tokens: list[str]) -> list[str]:
        """The command line after this change; the first position of a replaced key is kept."""
        result: list[str] = []
        placed: set[str] = set()
        wanted = {key_of(t): t for t in self.add}
        for token in tokens:
            key = key_of(token)
            if self.removes(token):
                continue
            if key in wanted:
                if key not in placed:
                    result.append(wanted[key])
                    placed.add(key)
                continue
            if token in result:
                continue
            result.append(token)
        for token in self.add:
            if key_of(token) not in placed:
                result.append(token)
                placed.add(key_of(token))
        return result

    def satisfied_by(self, tokens: list[str]) -> bool:
        """True when a (running) command line holds every addition and no removed token."""
        return not self.missing(tokens) and not self.lingering(tokens)

    def missing(self, tokens: list[str]) -> list[str]:
        present = set(tokens)
        return [t for t in self.add if t not in present]

    def lingering(self, tokens: list[str]) -> list[str]:
        return [t for t in tokens if self.displaces(t)]
