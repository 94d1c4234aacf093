# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""mkinitcpio (Arch): an install/runtime hook pair and a mkinitcpio.conf.d drop-in.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

The runtime hook's ``run_earlyhook`` runs before udev triggers coldplug.
"""

from __future__ import annotations

import os

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._initramfs import (
    ADDRESSES_IN_IMAGE, COMMON_IN_IMAGE, EARLY_BIND, Initramfs, ManagedFile, there)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vfio_files import (
    ADDRESSES_CONF, MODPROBE_CONF, VFIO_MODULES)

CONF = '/etc/mkinitcpio.conf.d/fleetgpu-passthrough.conf'
INSTALL = '/etc/initcpio/install/fleetgpu-passthrough'
RUNTIME = '/etc/initcpio/hooks/fleetgpu-passthrough'


class Mkinitcpio(Initramfs):
    name = 'mkinitcpio'
    list_tool = 'lsinitcpio'
    marker = 'mkinitcpio'

    @classmethod
    def detected(cls, root: str) -> bool:
        return there(root, '/etc/mkinitcpio.conf') or there(root, '/usr/bin/mkinitcpio')

    def files(self, per_address: bool) -> list[ManagedFile]:
        conf = (_files.header() + 'MODULES+=(%s)\n' % ' '.join(VFIO_MODULES) + 'HOOKS+=(fleetgpu-passthrough)\n')
        install = ('#!/bin/bash\n' + _files.header() +
                   'build() {\n' +
                   ''.join('    add_module %s\n' % m for m in VFIO_MODULES) +
                   '    add_file %s\n' % MODPROBE_CONF +
                   '    [ -r %s ] && add_file %s\n' % (ADDRESSES_CONF, ADDRESSES_CONF) +
                   '    add_runscript\n'
                   '}\n'
                   'help() {\n'
                   '    echo "Binds the GPUs chosen by fleetgpu.passthrough to vfio-pci before udev starts."\n'
                   '}\n')
        runtime = ('#!/usr/bin/ash\n' + _files.header() + 'run_earlyhook() {\n' +
                   ''.join('    ' + line + '\n' if line else '\n' for line in EARLY_BIND.splitlines()) + '}\n')
        return [ManagedFile(CONF, conf), ManagedFile(INSTALL, install), ManagedFile(RUNTIME, runtime)]

    def all_paths(self) -> list[str]:
        return [CONF, INSTALL, RUNTIME]

    def regenerate(self) -> list[list[str]]:
        return [['mkinitcpio', '-P']]

    def images(self, kernel: str) -> list[str]:
        boot = self.path('/boot')
        try:
            names = sorted(os.listdir(boot))
        except OSError:
            return []
        return ['/boot/%s' % n for n in names
                if n.startswith('initramfs-') and n.endswith('.img') and '-fallback' not in n]

    def expected(self, per_address: bool) -> list[str]:
        wanted = COMMON_IN_IMAGE + ['hooks/fleetgpu-passthrough']
        return wanted + (ADDRESSES_IN_IMAGE if per_address else [])
