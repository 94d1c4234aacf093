# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The files vfio_host_config writes: their paths and their contents, rendered from a decision.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

The initramfs backends import the paths from here to put the same files into the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._gpu_selection import Decision

VFIO_MODULES = ['vfio', 'vfio_iommu_type1', 'vfio_pci']
MODPROBE_CONF = '/etc/modprobe.d/fleetgpu-passthrough.conf'
MODULES_LOAD_CONF = '/etc/modules-load.d/fleetgpu-passthrough.conf'
ADDRESSES_CONF = '/etc/fleetgpu-passthrough/vfio-pci-addresses'
# Arguments this collection may put on the command line; state=absent removes exactly these.
MANAGED_ARGS = ['intel_iommu=on', 'iommu=pt', 'vfio-pci.ids']


def existing_softdeps(text: str | None) -> list[str]:
    """Modules of the ``softdep X pre: vfio-pci`` lines of a modprobe.d file written before."""
    found = []
    for line in (text or '').splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == 'softdep' and parts[2] == 'pre:' and 'vfio-pci' in parts[3:]:
            found.append(parts[1])
    return found


def modprobe_conf(decision: Decision, builtin: bool) -> str:
    lines = []
    if decision.ids and not builtin:
        lines.append('options vfio-pci ids=%s' % ','.join(decision.ids))
    for mod in decision.softdeps:
        lines.append('softdep %s pre: vfio-pci' % mod)
    for mod in decision.blacklist:
        lines.append('blacklist %s' % mod)
    return '\n'.join(lines) + '\n'


def modules_load_conf() -> str:
    return '\n'.join(VFIO_MODULES) + '\n'


def addresses_conf(decision: Decision) -> str:
    return ''.join('%s\n' % a for a in decision.addresses)
