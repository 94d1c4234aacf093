# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""proxmox-boot-tool backend: /etc/kernel/cmdline, then ``proxmox-boot-tool refresh``.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.
"""

from __future__ import annotations

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import there
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader.systemd_boot import KernelCmdlineFile


class ProxmoxBootTool(KernelCmdlineFile):
    """Proxmox VE hosts whose ESPs are kept by proxmox-boot-tool (marker /etc/kernel/proxmox-boot-uuids)."""

    name = 'proxmox-boot-tool'
    marker = '/etc/kernel/proxmox-boot-uuids'

    @classmethod
    def detected(cls, root: str) -> bool:
        return there(root, cls.marker)

    def refresh_commands(self) -> list[list[str]]:
        return [['proxmox-boot-tool', 'refresh']]
