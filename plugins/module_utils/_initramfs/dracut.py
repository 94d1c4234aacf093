# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""dracut (RHEL, Fedora, openSUSE): a dracut module with a pre-udev hook, a dracut.conf.d file.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.
"""

from __future__ import annotations

import os

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._initramfs import (
    ADDRESSES_IN_IMAGE, COMMON_IN_IMAGE, EARLY_BIND, Initramfs, ManagedFile, modules_line, there)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vfio_files import ADDRESSES_CONF, MODPROBE_CONF

CONF = '/etc/dracut.conf.d/fleetgpu-passthrough.conf'
MODULE_DIR = '/usr/lib/dracut/modules.d/90fleetgpu-passthrough'
SETUP = MODULE_DIR + '/module-setup.sh'
HOOK = MODULE_DIR + '/fleetgpu-vfio.sh'


class Dracut(Initramfs):
    name = 'dracut'
    list_tool = 'lsinitrd'
    marker = 'dracut'

    @classmethod
    def detected(cls, root: str) -> bool:
        return there(root, '/usr/bin/dracut') or there(root, '/usr/sbin/dracut')

    def files(self, per_address: bool) -> list[ManagedFile]:
        conf = (_files.header() +
                'add_drivers+=" %s "\n' % modules_line() +
                'add_dracutmodules+=" fleetgpu-passthrough "\n' +
                'install_items+=" %s "\n' % MODPROBE_CONF)
        setup = ('#!/bin/bash\n' + _files.header() +
                 'check() { return 0; }\n'
                 'depends() { return 0; }\n'
                 'installkernel() { hostonly="" instmods %s; }\n'
                 'install() {\n'
                 '    inst_hook pre-udev 00 "$moddir/fleetgpu-vfio.sh"\n'
                 '    [ -r %s ] && inst_simple %s\n'
                 '    return 0\n'
                 '}\n') % (modules_line(), ADDRESSES_CONF, ADDRESSES_CONF)
        hook = '#!/bin/sh\n' + _files.header() + EARLY_BIND
        return [ManagedFile(CONF, conf), ManagedFile(SETUP, setup, 0o755), ManagedFile(HOOK, hook, 0o755)]

    def all_paths(self) -> list[str]:
        return [CONF, SETUP, HOOK]

    def regenerate(self) -> list[list[str]]:
        return [['dracut', '--regenerate-all', '--force']]

    def images(self, kernel: str) -> list[str]:
        image = '/boot/initramfs-%s.img' % kernel
        return [image] if os.path.exists(self.path(image)) else []

    def expected(self, per_address: bool) -> list[str]:
        wanted = COMMON_IN_IMAGE + ['var/lib/dracut/hooks/pre-udev/00-fleetgpu-vfio.sh']
        return wanted + (ADDRESSES_IN_IMAGE if per_address else [])
