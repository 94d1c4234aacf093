# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""/etc/kernel/cmdline backends: the shared file logic and systemd-boot (kernel-install).

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

proxmox-boot-tool uses the same file (``proxmox_boot_tool.py``).
/etc/kernel/cmdline is read whole by kernel-install and proxmox-boot-tool, so
it cannot carry a comment header: it holds the arguments on one line.  When it
does not exist yet it is seeded from the running command line (what
kernel-install itself would use), without ``BOOT_IMAGE=`` and ``initrd=``.
"""

from __future__ import annotations

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import Bootloader, BootloaderError, CmdlinePlan, from_running, there
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange, split

CMDLINE = '/etc/kernel/cmdline'


class KernelCmdlineFile(Bootloader):
    """Shared logic: the arguments live in /etc/kernel/cmdline."""

    def current(self) -> list[str]:
        text = _files.read(self.path(CMDLINE))
        if text is None:
            return from_running(self.running)
        return split(' '.join(line for line in text.splitlines() if not line.lstrip().startswith('#')))

    def refresh_commands(self) -> list[list[str]]:
        raise NotImplementedError

    def plan(self, change: CmdlineChange) -> CmdlinePlan:
        before = self.current()
        after = change.apply(before)
        plan = CmdlinePlan(before, after)
        file_change = _files.plan(self.path(CMDLINE), ' '.join(after) + '\n')
        if file_change.changed:
            plan.files.append(file_change)
            plan.commands.extend(self.refresh_commands())
            plan.rerun_on_rollback = True
        return plan


class SystemdBoot(KernelCmdlineFile):
    name = 'systemd-boot'
    marker = 'loader/loader.conf (systemd-boot)'

    @classmethod
    def detected(cls, root: str) -> bool:
        return any(there(root, esp + '/loader/loader.conf') for esp in ('/boot/efi', '/efi', '/boot'))

    def refresh_commands(self) -> list[list[str]]:
        versions = self.kernel_versions()
        if not versions:
            raise BootloaderError('systemd-boot: no installed kernel found under %s' % self.path('/lib/modules'))
        return [['kernel-install', 'add', version, self.kernel_image(version)] for version in versions]
