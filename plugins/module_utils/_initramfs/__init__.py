# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""initramfs generators: the files that put vfio into the early boot, rebuild, verify.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

One abstract :class:`Initramfs` and one backend per generator
(initramfs-tools, dracut, mkinitcpio).  Each backend says which files it
needs (hook, early script, config), how the images are rebuilt, and how an
image is listed to verify that vfio-pci and the collection's configuration are
inside.  Commands go through the :class:`Runner` seam.
"""

from __future__ import annotations

import abc
import json
import os

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import CommandError, Runner
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vfio_files import (
    ADDRESSES_CONF, MODPROBE_CONF, VFIO_MODULES)


#: The images found good since they last changed (ROOT-relative). Listing an image decompresses the
#: whole of it: seconds on a server, tens of seconds on a small or emulated host, on every converge.
#: An image whose identity (device, inode, size, modification and change times: a rebuild or any
#: write changes the change time) and expectations are recorded here as verified is not listed
#: again. Written only by a real run, after a good verification; removed by state=absent.
VERIFIED = '/var/lib/fleetgpu-passthrough/initramfs_verified.json'


def _identity(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class InitramfsError(FleetGpuError):
    """The initramfs could not be rebuilt, or the rebuilt image lacks what it must hold."""


# The early binding, POSIX sh, sourced or run before udev starts: mark the listed functions
# for vfio-pci (driver_override), take them from a driver that already holds them, load vfio-pci.
# Only shell built-ins, readlink and modprobe: klibc initramfs images have no basename.
EARLY_BIND = r'''fleetgpu_vfio_conf=/etc/fleetgpu-passthrough/vfio-pci-addresses
if [ -r "$fleetgpu_vfio_conf" ]; then
    while read -r fleetgpu_addr fleetgpu_rest; do
        case "$fleetgpu_addr" in ''|'#'*) continue ;; esac
        fleetgpu_dev="/sys/bus/pci/devices/$fleetgpu_addr"
        [ -e "$fleetgpu_dev/driver_override" ] || continue
        echo vfio-pci > "$fleetgpu_dev/driver_override"
        if [ -e "$fleetgpu_dev/driver" ]; then
            fleetgpu_drv=$(readlink "$fleetgpu_dev/driver")
            [ "${fleetgpu_drv##*/}" = vfio-pci ] || echo "$fleetgpu_addr" > "$fleetgpu_dev/driver/unbind"
        fi
    done < "$fleetgpu_vfio_conf"
fi
modprobe -q vfio-pci 2>/dev/null
if [ -r "$fleetgpu_vfio_conf" ]; then
    while read -r fleetgpu_addr fleetgpu_rest; do
        case "$fleetgpu_addr" in ''|'#'*) continue ;; esac
        [ -e "/sys/bus/pci/devices/$fleetgpu_addr/driver" ] || echo "$fleetgpu_addr" > /sys/bus/pci/drivers_probe
    done < "$fleetgpu_vfio_conf"
fi
unset fleetgpu_vfio_conf fleetgpu_addr fleetgpu_rest fleetgpu_dev fleetgpu_drv
'''


class ManagedFile:
    """A file a backend installs: target path, content, mode."""

    def __init__(self, path: str, content: str, mode: int = 0o644) -> None:
        self.path = path
        self.content = content
        self.mode = mode


class Initramfs(metaclass=abc.ABCMeta):
    name = ''
    list_tool = ''
    # what detection looks for, named in the error when no generator is installed
    marker = ''

    @classmethod
    def detected(cls, root: str) -> bool:
        """Whether the host under ``root`` has this generator."""
        return False

    def __init__(self, root: str, runner: Runner) -> None:
        self.root = root or '/'
        self.runner = runner
        self._verified: dict[str, dict[str, object]] | None = None
        self._verified_dirty = False
        #: images whose listing was skipped because the record shows them verified and unchanged
        self.reused: list[str] = []

    def path(self, path: str) -> str:
        return _files.rooted(self.root, path)

    @abc.abstractmethod
    def files(self, per_address: bool) -> list[ManagedFile]:
        """Files the generator needs so the image carries vfio and the early binding."""

    @abc.abstractmethod
    def all_paths(self) -> list[str]:
        """Every path this backend may install (what state=absent removes)."""

    @abc.abstractmethod
    def regenerate(self) -> list[list[str]]:
        """Commands that rebuild the images of every installed kernel."""

    @abc.abstractmethod
    def images(self, kernel: str) -> list[str]:
        """Image paths (target paths) to verify for ``kernel``."""

    @abc.abstractmethod
    def expected(self, per_address: bool) -> list[str]:
        """Paths (relative, no leading slash) the image must list, besides the vfio-pci module."""

    def list_image(self, image: str) -> list[str]:
        """Paths in the image; takes the last field of each line, so long listings (lsinitrd) work too."""
        _rc, out, _err = self.runner.run([self.list_tool, image])
        return [p for p in (_path_of(line) for line in out.splitlines()) if p]

    def verified_path(self) -> str:
        return self.path(VERIFIED)

    def _records(self) -> dict[str, dict[str, object]]:
        if self._verified is None:
            self._verified = {}
            text = _files.read(self.verified_path())
            try:
                data = json.loads(text) if text else {}
            except ValueError:
                data = {}  # a damaged record only costs a listing; the next good verification rewrites it
            if isinstance(data, dict) and isinstance(data.get('images'), dict):
                self._verified = {k: v for k, v in data['images'].items() if isinstance(v, dict)}
        return self._verified

    def save_verified(self) -> None:
        """Write the record of verified images (only a real run calls this, after verify found them good)."""
        if not self._verified_dirty or self._verified is None:
            return
        content = json.dumps({'images': self._verified}, indent=1, sort_keys=True) + '\n'
        try:
            _files.write(self.verified_path(), content, 0o644, keep_backup=False)
        except _files.FileError:
            pass  # the record only saves time: a host where it cannot be written lists its images each run
        self._verified_dirty = False

    def verify(self, kernel: str, per_address: bool, builtin: bool, present: bool = True) -> list[str]:
        """Problems found in the images of ``kernel`` (empty: good).

        With ``present``, an image recorded as verified for the same expectations and unchanged since
        (see :data:`VERIFIED`) is not listed again; every image found good is recorded in memory
        (:meth:`save_verified` writes the record).
        """
        if self.runner.skips(self.list_tool):
            # a prefix root without the listing tool: nothing can be verified, nothing is run on the host
            return []
        images = self.images(kernel)
        if not images:
            return ['no initramfs image for kernel %s was found under %s' % (kernel, self.path('/boot'))]
        problems = []
        expect = {'builtin': builtin, 'per_address': per_address, 'expected': sorted(self.expected(per_address)),
                  'generator': self.name}
        records = self._records() if present else {}
        for image in images:
            identity = _identity(self.path(image))
            record = records.get(image)
            if present and identity is not None and record == {'identity': identity, 'expect': expect}:
                self.reused.append(image)
                continue
            try:
                listing = self.list_image(image)
            except CommandError as exc:
                problems.append('cannot list %s: %s' % (image, exc))
                continue
            names = set(listing)
            found: list[str] = []
            if present:
                if not builtin and not any(_is_vfio_pci(n) for n in listing):
                    found.append('%s does not contain the vfio-pci module' % image)
                for want in self.expected(per_address):
                    if want not in names:
                        found.append('%s does not contain %s' % (image, want))
                if not found and identity is not None:
                    records[image] = {'identity': identity, 'expect': expect}
                    self._verified_dirty = True
                elif image in records:
                    del records[image]
                    self._verified_dirty = True
            else:
                for gone in self.expected(per_address):
                    if gone in names:
                        found.append('%s still contains %s' % (image, gone))
            problems.extend(found)
        return problems


def _path_of(line: str) -> str:
    """``-rw-r--r-- 1 root root 42 Nov 24 04:00 etc/x.conf`` or ``./etc/x.conf`` -> ``etc/x.conf``."""
    if ' -> ' in line:
        line = line.split(' -> ', 1)[0]
    fields = line.split()
    if not fields:
        return ''
    path = fields[-1]
    while path.startswith('./'):
        path = path[2:]
    return path.lstrip('/')


def _is_vfio_pci(name: str) -> bool:
    base = os.path.basename(name)
    return base.split('.ko', 1)[0] in ('vfio-pci', 'vfio_pci') and '.ko' in base


def modules_line() -> str:
    return ' '.join(VFIO_MODULES)


def rel(path: str) -> str:
    return path.lstrip('/')


COMMON_IN_IMAGE = [rel(MODPROBE_CONF)]
ADDRESSES_IN_IMAGE = [rel(ADDRESSES_CONF)]


def there(root: str, path: str) -> bool:
    """Whether ``path`` exists under ``root``."""
    return os.path.exists(_files.rooted(root, path))


def registry() -> dict[str, type[Initramfs]]:
    """Every initramfs generator by name, in detection order (mkinitcpio, dracut, initramfs-tools).

    The one list of generators: the module's choices, detection and lookup all come from it, so adding a
    generator means its file under _initramfs/ and a line here.
    """
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._initramfs import dracut, initramfs_tools, mkinitcpio

    order: tuple[type[Initramfs], ...] = (mkinitcpio.Mkinitcpio, dracut.Dracut, initramfs_tools.InitramfsTools)
    return {cls.name: cls for cls in order}


def names() -> list[str]:
    """The values of the module's ``initramfs`` option: ``auto``, every generator, and ``none``."""
    return ['auto'] + sorted(registry()) + ['none']


def detect(root: str) -> str:
    """Generator of the host under ``root`` (the first of :func:`registry` that is installed)."""
    generators = registry()
    for name, cls in generators.items():
        if cls.detected(root):
            return name
    raise InitramfsError('cannot tell the initramfs generator of %s: none of %s is installed; set the initramfs option'
                         % (root or '/', ', '.join(cls.marker for cls in generators.values())))


def backend(name: str, root: str, runner: Runner) -> Initramfs:
    if name == 'auto':
        name = detect(root)
    classes = registry()
    if name not in classes:
        raise InitramfsError('unknown initramfs generator %r (one of %s)' % (name, ', '.join(sorted(classes))))
    return classes[name](root, runner)
