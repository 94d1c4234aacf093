# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one seam between fleetgpu.passthrough and the kernel.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Every read and write of ``/sys``, ``/proc`` and ``/dev`` made by the modules
goes through one :class:`Sysfs` object rooted at ``sysfs_root``.  The proc and
dev roots are the siblings of the sysfs root (``/host/sys`` -> ``/host/proc``,
``/host/dev``), so a container that mounts a host's kernel trees under one
directory, or a test that builds a simulated tree, only passes one path.

Some sysfs attributes take the device lock (``driver_override`` for one).  A
driver stuck in its probe holds that lock forever and any access to the
attribute never returns.  Such accesses go through :meth:`Sysfs.read_bounded`
and :meth:`Sysfs.write`, which run the system call in a forked child process
that holds none of the module's file descriptors, wait for it with a time
bound, and report the path as stuck instead of hanging the play.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import time

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError

DEFAULT_TIMEOUT = 5.0
# The range every module accepts for its ``timeout`` option (seconds).
TIMEOUT_MAX = 3600.0


def checked_timeout(value: object, name: str = 'timeout') -> float:
    """``value`` as a number of seconds in (0, TIMEOUT_MAX], or :class:`SysfsError` naming the allowed range.

    The one validation of the ``timeout`` option of every module (it runs when a :class:`Sysfs` is
    made): ``inf``, ``nan``, ``1e300``, ``0``, negative numbers and non-numbers are refused.
    """
    if isinstance(value, bool):
        number = float('nan')
    else:
        try:
            number = float(value) if isinstance(value, (str, int, float)) else float('nan')
        except (TypeError, ValueError):
            number = float('nan')
    if not (0 < number <= TIMEOUT_MAX):  # also false for nan
        raise SysfsError('%s must be a number of seconds greater than 0 and at most %g, got %r'
                         % (name, TIMEOUT_MAX, value))
    return number


def common_argspec() -> dict:
    """The argument spec of the options of the ``sysfs`` doc fragment, shared by every module (read by :func:`from_params`)."""
    return {
        'sysfs_root': {'type': 'path', 'default': '/sys'},
        'timeout': {'type': 'float', 'default': DEFAULT_TIMEOUT},
    }


def is_live_root(path: str, live: str = '/') -> bool:
    """True when ``path`` resolves to ``live`` (``//``, ``/.``, a symlink to ``/`` all count as the live root)."""
    return os.path.realpath(path or '/') == os.path.realpath(live)


_MISSING = object()


class SysfsError(FleetGpuError):
    """A kernel interface could not be read or written."""

    def __init__(self, msg: str, path: str | None = None, err: int | None = None) -> None:
        super().__init__(msg)
        self.path = path
        self.errno = err


class SysfsTimeout(SysfsError):
    """A read or write did not return within its time bound."""


class PathEscapeError(SysfsError):
    """A relative path tried to leave its root."""


class Sysfs:
    """Rooted, time-bounded access to /sys, /proc and /dev."""

    def __init__(
        self,
        sysfs_root: str = '/sys',
        proc_root: str | None = None,
        dev_root: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        root = os.path.abspath(sysfs_root)
        base = os.path.dirname(root)
        self.sys_root = root
        self.host_root = base
        self.proc_root = os.path.abspath(proc_root) if proc_root else os.path.join(base, 'proc')
        self.dev_root = os.path.abspath(dev_root) if dev_root else os.path.join(base, 'dev')
        self.timeout = checked_timeout(timeout)

    # ------------------------------------------------------------------ paths
    @staticmethod
    def _join(root: str, parts: tuple[str, ...]) -> str:
        rel = os.path.normpath(os.path.join(*parts)) if parts else '.'
        if rel.startswith('/'):
            rel = rel.lstrip('/')
        if rel == '..' or rel.startswith('../'):
            raise PathEscapeError('path %r leaves %s' % ('/'.join(parts), root))
        return root if rel == '.' else os.path.join(root, rel)

    def sys(self, *parts: str) -> str:
        """Absolute path of ``/sys/<parts>`` under the configured root."""
        return self._join(self.sys_root, parts)

    def proc(self, *parts: str) -> str:
        return self._join(self.proc_root, parts)

    def dev(self, *parts: str) -> str:
        return self._join(self.dev_root, parts)

    def host(self, *parts: str) -> str:
        """A path of the host's file system next to its kernel trees (``/lib/modules``)."""
        return self._join(self.host_root, parts)

    # ------------------------------------------------------------------ reads
    def read(self, path: str, default: object = _MISSING) -> str:
        """Read a small attribute, stripped.  Missing file -> ``default`` or error."""
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.read(fd, 65536)
                if len(data) == 65536:  # a large file (/proc/cpuinfo of a big host): read to the end
                    chunks = [data]
                    while chunks[-1]:
                        chunks.append(os.read(fd, 1 << 20))
                    data = b''.join(chunks)
            finally:
                os.close(fd)
        except OSError as exc:
            if default is not _MISSING and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENODEV, errno.EINVAL):
                return default  # type: ignore[return-value]  # the caller's default (None, ''), its own type
            raise SysfsError('cannot read %s: %s' % (path, os.strerror(exc.errno or 0)), path, exc.errno) from None
        return data.decode('utf-8', 'replace').strip()

    def read_int(self, path: str, base: int = 0, default: object = _MISSING) -> int:
        text = self.read(path, default=None)
        if text is None or text == '':
            if default is _MISSING:
                raise SysfsError('cannot read %s: missing' % path, path, errno.ENOENT)
            return default  # type: ignore[return-value]  # the caller's default (None), its own type
        try:
            return int(text, base)
        except ValueError:
            if default is _MISSING:
                raise SysfsError('unexpected content %r in %s' % (text, path), path) from None
            return default  # type: ignore[return-value]  # the caller's default (None), its own type

    def readlink(self, path: str) -> str | None:
        try:
            return os.readlink(path)
        except OSError:
            return None

    def link_name(self, path: str) -> str | None:
        """Basename of a symlink's target (``driver`` -> ``vfio-pci``), or None."""
        target = self.readlink(path)
        return os.path.basename(target.rstrip('/')) if target else None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def cpu_vendor(self) -> str | None:
        """``GenuineIntel`` / ``AuthenticAMD`` from /proc/cpuinfo."""
        info = self.read(self.proc('cpuinfo'), default='')
        for line in info.splitlines():
            if line.startswith('vendor_id'):
                return line.split(':', 1)[1].strip()
        return None

    def cpu_flags(self) -> set[str]:
        info = self.read(self.proc('cpuinfo'), default='')
        for line in info.splitlines():
            if line.startswith('flags'):
                return set(line.split(':', 1)[1].split())
        return set()

    def kernel_release(self) -> str | None:
        """The running kernel's release (``6.1.0-27-amd64``), None when it cannot be read."""
        return self.read(self.proc('sys', 'kernel', 'osrelease'), default=None) or None

    def cmdline(self) -> str:
        return self.read(self.proc('cmdline'), default='').replace('\x00', ' ').strip()

    def fd_targets(self) -> list[tuple[int, str]]:
        """(pid, link target) for every open file descriptor that can be read."""
        found: list[tuple[int, str]] = []
        for entry in self.listdir(self.proc_root):
            if not entry.isdigit():
                continue
            fd_dir = self.proc(entry, 'fd')
            for fd in self.listdir(fd_dir):
                target = self.readlink(os.path.join(fd_dir, fd))
                if target:
                    found.append((int(entry), target))
        return found

    def open_devices(self) -> dict[str, list[tuple[int, str]]]:
        """/dev path -> [(pid, process name)] of every process that has it open (one scan of /proc)."""
        holders: dict[str, list[tuple[int, str]]] = {}
        names: dict[int, str] = {}
        for pid, target in self.fd_targets():
            if not target.startswith('/dev/'):
                continue
            if pid not in names:
                names[pid] = self.process_name(pid)
            entry = (pid, names[pid])
            lst = holders.setdefault(target, [])
            if entry not in lst:
                lst.append(entry)
        return holders

    def process_name(self, pid: int) -> str:
        return self.read(self.proc(str(pid), 'comm'), default='?')

    # ------------------------------------------------- bounded reads / writes
    def read_bounded(self, paths: list[str], timeout: float | None = None) -> tuple[dict[str, str | None], list[str]]:
        """Read attributes that may block on a device lock.

        Returns ``(values, stuck)``: ``values[path]`` is the stripped content,
        or None when the file is missing or unreadable; ``stuck`` lists the
        paths whose read did not return within ``timeout`` seconds.
        """
        ops = [{'op': 'r', 'path': p} for p in paths]
        results, stuck = self._run_bounded(ops, self.timeout if timeout is None else timeout)
        values: dict[str, str | None] = {}
        for index, path in enumerate(paths):
            res = results.get(index)
            values[path] = res.get('value') if res else None
        return values, [paths[i] for i in stuck]

    def read_bounded_groups(self, groups: list[list[str]], timeout: float | None = None) -> tuple[dict[str, str | None], list[str]]:
        """Like :meth:`read_bounded` for groups of paths that share one lock (one device's attributes).

        All paths are read in one child process.  When a path does not return,
        the other paths of its group are not tried (they would block on the
        same lock) and are reported stuck too: each stuck group costs one
        ``timeout``, not one per path.
        """
        paths = [p for group in groups for p in group]
        group_ids = [index for index, group in enumerate(groups) for _p in group]
        ops = [{'op': 'r', 'path': p} for p in paths]
        results, stuck = self._run_bounded(ops, self.timeout if timeout is None else timeout, group_ids)
        values: dict[str, str | None] = {}
        for index, path in enumerate(paths):
            res = results.get(index)
            values[path] = res.get('value') if res else None
        return values, [paths[i] for i in stuck]

    def read_bytes_bounded(self, paths: list[str], size: int,
                           timeout: float | None = None) -> tuple[dict[str, bytes | None], dict[str, int], list[str]]:
        """Read the first ``size`` bytes of binary attributes (a device's ``config``) with a time bound.

        Returns ``(values, errors, stuck)``: ``values[path]`` is the bytes read (None when the read
        failed or did not return), ``errors[path]`` the errno of a failed read, ``stuck`` the paths
        whose read did not return within ``timeout`` seconds.
        """
        ops = [{'op': 'rb', 'path': p, 'size': size} for p in paths]
        results, stuck = self._run_bounded(ops, self.timeout if timeout is None else timeout)
        values: dict[str, bytes | None] = {}
        errors: dict[str, int] = {}
        for index, path in enumerate(paths):
            res = results.get(index) or {}
            values[path] = bytes.fromhex(res['hex']) if 'hex' in res else None
            if res.get('errno'):
                errors[path] = res['errno']
        return values, errors, [paths[i] for i in stuck]

    def write(self, path: str, value: str, timeout: float | None = None) -> None:
        """Write one value to a kernel attribute with a time bound.

        Raises :class:`SysfsTimeout` when the write does not return and
        :class:`SysfsError` (with ``errno``) when the kernel refuses it.
        """
        limit = self.timeout if timeout is None else timeout
        results, stuck = self._run_bounded([{'op': 'w', 'path': path, 'data': value}], limit)
        if stuck:
            raise SysfsTimeout('writing %r to %s did not return within %gs' % (value, path, limit), path)
        res = results.get(0, {})
        err = res.get('errno')
        if err:
            raise SysfsError('writing %r to %s failed: %s' % (value, path, os.strerror(err)), path, err)

    def _run_bounded(self, ops: list[dict], timeout: float,
                     group_ids: list[int] | None = None) -> tuple[dict[int, dict], list[int]]:
        results: dict[int, dict] = {}
        stuck: list[int] = []
        start = 0
        while start < len(ops):
            done_upto = self._child_batch(ops, start, timeout, results)
            if done_upto >= len(ops):
                break
            stuck.append(done_upto)
            start = done_upto + 1
            if group_ids is not None:
                while start < len(ops) and group_ids[start] == group_ids[done_upto]:
                    stuck.append(start)
                    start += 1
        return results, stuck

    def _child_batch(self, ops: list[dict], start: int, timeout: float, results: dict[int, dict]) -> int:
        """Run ops[start:] in a forked child; return the index of the first op not done."""
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: hold nothing of the parent's but the pipe
            try:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, wfd)
                os.closerange(wfd + 1, 65536)
                for index in range(start, len(ops)):
                    os.write(wfd, _encode(index, _do_op(ops[index])))
            finally:
                os._exit(0)
        os.close(wfd)
        nxt = start
        buf = b''
        deadline = time.monotonic() + timeout
        try:
            while nxt < len(ops):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                ready, _w, _x = select.select([rfd], [], [], remaining)
                if not ready:
                    break
                chunk = os.read(rfd, 65536)
                if not chunk:
                    break
                buf += chunk
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    msg = json.loads(line)
                    results[msg['i']] = msg
                    nxt = msg['i'] + 1
                    deadline = time.monotonic() + timeout
        finally:
            os.close(rfd)
            if nxt < len(ops):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                _reap_later(pid)
            else:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        return nxt


def from_params(params: dict) -> Sysfs:
    """The :class:`Sysfs` of a module's ``sysfs`` doc-fragment options (see :func:`common_argspec`).

    The one place every module turns ``sysfs_root`` and ``timeout`` into a Sysfs; the timeout is checked
    there (:func:`checked_timeout`), the same way for every module.
    """
    return Sysfs(params['sysfs_root'], timeout=params['timeout'])


def _do_op(op: dict) -> dict:
    try:
        if op['op'] == 'r':
            with open(op['path'], 'rb') as handle:
                return {'value': handle.read().decode('utf-8', 'replace').strip()}
        if op['op'] == 'rb':
            with open(op['path'], 'rb') as handle:
                return {'hex': handle.read(op['size']).hex()}
        fd = os.open(op['path'], os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, op['data'].encode('utf-8'))
        finally:
            os.close(fd)
        return {}
    except OSError as exc:
        return {'errno': exc.errno or errno.EIO}


def _encode(index: int, res: dict) -> bytes:
    res = dict(res)
    res['i'] = index
    return (json.dumps(res) + '\n').encode('utf-8')


def _reap_later(pid: int) -> None:
    """Collect a killed child if it is already gone; a child stuck in the
    kernel (D state) is left to init once this process exits."""
    for _attempt in range(5):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)
