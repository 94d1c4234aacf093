# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Controller side of vmware_gpu_import: read .vmx / .ovf files on the controller and derive the
fleet's VM requests.  The documentation lives in plugins/modules/vmware_gpu_import.py."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.vmware_gpu_import import import_paths

_ARGS = {
    'paths': dict(type='list', elements='path', required=True),
    'models': dict(type='raw'),
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp: str | None = None, task_vars: dict | None = None) -> dict:
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=_ARGS)
        try:
            # read-only: the same in check mode
            imported = import_paths(list(args['paths']), args['models'])
        except FleetGpuError as exc:
            result.update(failed=True, **exc.result())
            return result
        result.update(imported.as_dict())
        result['changed'] = False
        result['msg'] = '%d VM request(s), %d pending, %d entry(ies) skipped from %d file(s)' % (
            len(imported.vms), len(imported.pending), len(imported.skipped), len(imported.files))
        return result
