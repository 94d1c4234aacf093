# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""initramfs-tools (Debian, Ubuntu): a hook that adds vfio and the address list, an init-top script.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

mkinitramfs copies /etc/modprobe.d into the image itself.  The init-top
script runs before udev's coldplug, so ``driver_override`` is set before any
host driver module is loaded: mkinitramfs orders the scripts of one phase by
their PREREQ pairs through tsort, which emits independent scripts in name
order, and ``fleetgpu-passthrough`` sorts before ``udev``.  Should a driver
hold the device anyway, the script unbinds it and probes again.
"""

from __future__ import annotations

import os

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._initramfs import (
    ADDRESSES_IN_IMAGE, COMMON_IN_IMAGE, EARLY_BIND, Initramfs, ManagedFile, modules_line, there)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vfio_files import ADDRESSES_CONF

HOOK = '/etc/initramfs-tools/hooks/fleetgpu-passthrough'
SCRIPT = '/etc/initramfs-tools/scripts/init-top/fleetgpu-passthrough'

_PREREQS = '''PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in
    prereqs) prereqs; exit 0 ;;
esac
'''


class InitramfsTools(Initramfs):
    name = 'initramfs-tools'
    list_tool = 'lsinitramfs'
    marker = 'update-initramfs'

    @classmethod
    def detected(cls, root: str) -> bool:
        return there(root, '/usr/sbin/update-initramfs') or there(root, '/etc/initramfs-tools/initramfs.conf')

    def files(self, per_address: bool) -> list[ManagedFile]:
        hook = ('#!/bin/sh\n' + _files.header() + _PREREQS +
                '. /usr/share/initramfs-tools/hook-functions\n'
                'manual_add_modules %s\n'
                'if [ -r %s ]; then\n'
                '    mkdir -p "${DESTDIR}/%s"\n'
                '    cp -p %s "${DESTDIR}/%s"\n'
                'fi\n'
                'exit 0\n') % (modules_line(), ADDRESSES_CONF, ADDRESSES_CONF.rsplit('/', 1)[0].lstrip('/'),
                               ADDRESSES_CONF, ADDRESSES_CONF.lstrip('/'))
        script = '#!/bin/sh\n' + _files.header() + _PREREQS + EARLY_BIND + 'exit 0\n'
        return [ManagedFile(HOOK, hook, 0o755), ManagedFile(SCRIPT, script, 0o755)]

    def all_paths(self) -> list[str]:
        return [HOOK, SCRIPT]

    def regenerate(self) -> list[list[str]]:
        return [['update-initramfs', '-u', '-k', 'all']]

    def images(self, kernel: str) -> list[str]:
        image = '/boot/initrd.img-%s' % kernel
        return [image] if os.path.exists(self.path(image)) else []

    def expected(self, per_address: bool) -> list[str]:
        wanted = COMMON_IN_IMAGE + ['scripts/init-top/fleetgpu-passthrough']
        return wanted + (ADDRESSES_IN_IMAGE if per_address else [])
