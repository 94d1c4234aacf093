# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Managed configuration files: atomic writes with the previous version kept.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Every file the collection writes starts with a header saying it is managed,
is mode 0644 (0755 for scripts the boot tooling executes) and owned by root
when the process runs as root, and replaces the old content atomically
(temporary file in the same directory, fsync, rename).  The previous content
is kept next to it as ``<name>.fleetgpu.bak`` so a failed follow-up command can
put it back.
"""

from __future__ import annotations

import os
import tempfile

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError

HEADER = 'managed by fleetgpu.passthrough: changes made here are overwritten'
BACKUP_SUFFIX = '.fleetgpu.bak'


class FileError(FleetGpuError):
    """A managed file could not be read, written or restored."""


def header(comment: str = '#') -> str:
    return '%s %s\n' % (comment, HEADER)


def is_live(root: str | None) -> bool:
    """True when ``root`` is the running host's own ``/``, by resolved path (``//``, ``/.`` count too)."""
    return os.path.realpath(root or '/') == '/'


def check_path(value: str, what: str) -> str:
    """A path option checked for what no file name of the collection may hold (control characters)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in value):
        raise FileError('%s %r holds a control character (newline, tab...); refusing it' % (what, value))
    return value


def rooted(root: str, path: str) -> str:
    """``path`` (absolute, as on the target host) below ``root``."""
    if not path.startswith('/'):
        raise FileError('path %r must be absolute' % path)
    if is_live(root):
        return path
    return os.path.join(os.path.abspath(check_path(root, 'root')), path.lstrip('/'))


def read(path: str) -> str | None:
    """Content of a text file, None when it does not exist."""
    try:
        with open(path, 'r', encoding='utf-8', errors='replace') as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileError('cannot read %s: %s' % (path, exc.strerror)) from None


class FileChange:
    """One planned change of one file: ``after`` None means the file is removed."""

    def __init__(self, path: str, before: str | None, after: str | None, mode: int = 0o644,
                 keep_backup: bool = True) -> None:
        self.path = path
        self.before = before
        self.after = after
        self.mode = mode
        self.keep_backup = keep_backup
        self.applied = False
        self.had_backup = False

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self) -> dict[str, str]:
        return {
            'before_header': self.path if self.before is not None else '%s (absent)' % self.path,
            'after_header': self.path if self.after is not None else '%s (absent)' % self.path,
            'before': self.before or '',
            'after': self.after or '',
        }

    def apply(self) -> None:
        if not self.changed:
            return
        self.had_backup = os.path.lexists(self.path + BACKUP_SUFFIX)
        if self.after is None:
            # A managed file removed on purpose leaves nothing behind: no backup of it (the content
            # is kept in memory for revert()), and no backup left by earlier runs either.
            remove(self.path, keep_backup=False)
            remove(self.path + BACKUP_SUFFIX, keep_backup=False)
            if _owned_dir(self.path):
                _rmdir_if_empty(os.path.dirname(self.path))
        else:
            write(self.path, self.after, self.mode, keep_backup=self.keep_backup)
        self.applied = True

    def revert(self) -> None:
        """Put the content from before :meth:`apply` back."""
        if not self.applied:
            return
        if self.before is None:
            remove(self.path, keep_backup=False)
        else:
            write(self.path, self.before, self.mode, keep_backup=False)
        if not self.had_backup:
            # the copy apply() kept is not needed any more: a rollback leaves nothing behind
            remove(self.path + BACKUP_SUFFIX, keep_backup=False)
        self.applied = False


def revert_all(done: list[FileChange]) -> list[str]:
    """Undo applied changes, newest first (the rollback of every apply that writes files).

    Returns what could not be put back, one sentence per file (empty: everything was restored).
    """
    left: list[str] = []
    for change in reversed(done):
        try:
            change.revert()
        except FileError as exc:
            left.append('%s keeps the new content (%s)' % (change.path, exc))
    return left


def _owned_dir(path: str) -> bool:
    """True when the file sits in a directory the collection created (its name says fleetgpu)."""
    return 'fleetgpu' in os.path.basename(os.path.dirname(path))


def _rmdir_if_empty(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError:
        pass


def plan(path: str, content: str | None, mode: int = 0o644, keep_backup: bool = True) -> FileChange:
    return FileChange(path, read(path), content, mode, keep_backup)


def write(path: str, content: str, mode: int = 0o644, keep_backup: bool = True) -> None:
    """Write ``content`` atomically; the old content (if any) is kept as ``path + BACKUP_SUFFIX``."""
    directory = os.path.dirname(path) or '.'
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if keep_backup and os.path.isfile(path):
            old = read(path)
            if old is not None:
                write_atomic(path + BACKUP_SUFFIX, old, 0o644)
        write_atomic(path, content, mode)
    except OSError as exc:
        raise FileError('cannot write %s: %s' % (path, exc.strerror)) from None


def remove(path: str, keep_backup: bool = True) -> None:
    try:
        if keep_backup and os.path.isfile(path):
            old = read(path)
            if old is not None:
                write_atomic(path + BACKUP_SUFFIX, old, 0o644)
        if os.path.lexists(path):
            os.unlink(path)
    except OSError as exc:
        raise FileError('cannot remove %s: %s' % (path, exc.strerror)) from None


def write_atomic(path: str, content: str, mode: int) -> None:
    """Replace ``path`` with ``content`` in one step (temporary file, fsync, rename); raises OSError.

    The one atomic writer of the collection: configuration files, the vfio_bind journal and the
    fleet report all go through it.
    """
    directory = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if os.geteuid() == 0:
            os.chown(tmp, 0, 0)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
