# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one place where host tools (update-grub, grubby, dracut...) are run.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Backends never call a program themselves: they hand an argument list to a
:class:`Runner`.  Modules pass a :class:`ModuleRunner` (``get_bin_path`` +
``run_command`` with ``LANG=C``, return code checked); unit tests pass a fake
that records the commands and answers with canned output.
"""

from __future__ import annotations

import abc


class CommandError(Exception):
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


class ModuleRunner(Runner):
    """Runner backed by an AnsibleModule."""

    def __init__(self, module: object) -> None:
        self.module = module

    def have(self, program: str) -> bool:
        return bool(self.module.get_bin_path(program))  # type: ignore[attr-defined]

    def run(self, argv: list[str], check: bool = True) -> tuple[int, str, str]:
        path = self.module.get_bin_path(argv[0])  # type: ignore[attr-defined]
        if not path:
            raise CommandError('%s is needed but was not found in PATH or the sbin directories' % argv[0], argv)
        full = [path] + list(argv[1:])
        rc, out, err = self.module.run_command(  # type: ignore[attr-defined]
            full, environ_update={'LANG': 'C', 'LC_ALL': 'C'})
        if check and rc != 0:
            raise CommandError('%s failed with exit code %d: %s' % (' '.join(argv), rc, (err or out).strip()[-2000:]),
                               argv, rc, out, err)
        return rc, out, err
