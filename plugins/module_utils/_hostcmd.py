# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one place where host tools (update-grub, grubby, dracut...) are run.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Backends never call a program themselves: they hand an argument list to a
:class:`Runner`.  Modules pass a :class:`ModuleRunner` (``get_bin_path`` +
``run_command`` with ``LANG=C``, return code checked; with a prefix root the
program runs inside that root through chroot, or not at all, never on the
running host); unit tests pass a fake that records the commands and answers
with canned output.
"""

from __future__ import annotations

import abc
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: every module imports it anyway
    from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError


class CommandError(FleetGpuError):
    """A host tool is missing or returned a failure."""

    def __init__(self, msg: str, argv: list[str] | None = None, rc: int | None = None,
                 stdout: str = '', stderr: str = '') -> None:
        super().__init__(msg)
        self.argv = argv or []
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


class Runner(metaclass=abc.ABCMeta):
    """Runs one command given as an argument list."""

    @abc.abstractmethod
    def have(self, program: str) -> bool:
        """True when ``program`` can be found."""

    @abc.abstractmethod
    def run(self, argv: list[str], check: bool = True) -> tuple[int, str, str]:
        """Run ``argv``; raise :class:`CommandError` on a non-zero exit when ``check``."""

    def skips(self, program: str) -> bool:
        """True when commands of ``program`` are not run at all (see :class:`ModuleRunner`)."""
        return False


# Where a program is looked for inside a prefix root, as PATH would find it there.
ROOT_BIN_DIRS = ('/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin')


class ModuleRunner(Runner):
    """Runner backed by an AnsibleModule, acting on the same root as the files.

    With the live root (``/``, by resolved path) a program runs as found on the host.  With a
    prefix root (another tree: a chroot, an image, a test directory) a program never runs on the
    running host: it runs inside the root through ``chroot ROOT PROGRAM ARGS...`` when the root
    holds it, and not at all otherwise (the argument list is kept in :attr:`skipped`).
    Command arguments are always paths as seen inside the root.
    """

    def __init__(self, module: AnsibleModule, root: str = '/') -> None:
        self.module = module
        self.root = os.path.abspath(root or '/')
        self.live = os.path.realpath(self.root) == '/'
        self.skipped: list[list[str]] = []

    def _in_root(self, program: str) -> str | None:
        """``program`` as a path inside the prefix root, None when the root does not hold it."""
        if '/' in program:
            candidates = [program]
        else:
            candidates = ['%s/%s' % (d, program) for d in ROOT_BIN_DIRS]
        for inner in candidates:
            path = os.path.join(self.root, inner.lstrip('/'))
            if os.path.lexists(path) and not os.path.isdir(path):
                return inner
        return None

    def have(self, program: str) -> bool:
        if self.live:
            return bool(self.module.get_bin_path(program))
        return self._in_root(program) is not None

    def skips(self, program: str) -> bool:
        return not self.live and self._in_root(program) is None

    def run(self, argv: list[str], check: bool = True) -> tuple[int, str, str]:
        if self.live:
            path = self.module.get_bin_path(argv[0])
            if not path:
                raise CommandError('%s is needed but was not found in PATH or the sbin directories' % argv[0], argv)
            full = [path] + list(argv[1:])
        else:
            inner = self._in_root(argv[0])
            if inner is None:
                self.skipped.append(list(argv))
                return 0, '', ''
            chroot = self.module.get_bin_path('chroot')
            if not chroot:
                raise CommandError('chroot is needed to run %s inside %s but was not found' % (argv[0], self.root), argv)
            full = [chroot, self.root, inner] + list(argv[1:])
        rc, out, err = self.module.run_command(
            full, environ_update={'LANG': 'C', 'LC_ALL': 'C'})
        if check and rc != 0:
            raise CommandError('%s failed with exit code %d: %s' % (' '.join(argv), rc, (err or out).strip()[-2000:]),
                               argv, rc, out, err)
        return rc, out, err
