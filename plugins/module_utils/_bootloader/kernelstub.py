# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""kernelstub (Pop!_OS): options in /etc/kernelstub/configuration, changed by the tool.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.
"""

from __future__ import annotations

import json

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import Bootloader, BootloaderError, CmdlinePlan, there
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange, split

CONFIG = '/etc/kernelstub/configuration'


class Kernelstub(Bootloader):
    name = 'kernelstub'
    marker = '/etc/kernelstub/configuration'

    @classmethod
    def detected(cls, root: str) -> bool:
        return there(root, cls.marker)

    def current(self) -> list[str]:
        path = self.path(CONFIG)
        text = _files.read(path)
        if text is None:
            raise BootloaderError('kernelstub: %s does not exist' % path)
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BootloaderError('kernelstub: %s is not valid JSON: %s' % (path, exc)) from None
        section = data.get('user') or data.get('default') or {}
        options = section.get('kernel_options', [])
        if isinstance(options, str):
            return split(options)
        return [str(o) for o in options]

    def plan(self, change: CmdlineChange) -> CmdlinePlan:
        before = self.current()
        after = change.apply(before)
        plan = CmdlinePlan(before, after)
        add = [t for t in after if t not in before]
        remove = [t for t in before if t not in after]
        if remove:
            plan.commands.append(['kernelstub', '--delete-options', ' '.join(remove)])
            plan.undo.append(['kernelstub', '--add-options', ' '.join(remove)])
        if add:
            plan.commands.append(['kernelstub', '--add-options', ' '.join(add)])
            plan.undo.insert(0, ['kernelstub', '--delete-options', ' '.join(add)])
        return plan
