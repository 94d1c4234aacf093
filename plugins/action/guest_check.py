# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Controller side of guest_check: read what the KVM hosts' play registered (gpu_facts and
libvirt_gpu_info) from hostvars, find the VM's host, compare with the guest's GPUs.  The
documentation lives in plugins/modules/guest_check.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.fleetgpu.passthrough.plugins.plugin_utils._hostvars import hostvar
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.guest_check import (
    GuestCheckError,
    HostView,
    compare,
    given_by_domain,
    locate,
    verdict,
)

_ARGS = {
    'vm': dict(type='str', required=True),
    'guest_gpus': dict(type='list', elements='raw', required=True),
    'driver': dict(type='str'),
    'vm_host': dict(type='str'),
    'hosts': dict(type='list', elements='str', required=True),
    'facts_result': dict(type='str', default='fleetgpu_gpu_facts'),
    'libvirt_result': dict(type='str', default='fleetgpu_libvirt_info'),
}


def read_host(hostvars: Mapping[str, Any], host: str, facts_result: str, libvirt_result: str) -> HostView:
    """One KVM host's view from what the first play registered for it."""
    view = HostView(name=host)
    facts = hostvar(hostvars, host, facts_result)
    if not isinstance(facts, dict) or not facts:
        view.error = 'no %s result (not in the play that reads the KVM hosts, or unreachable)' % facts_result
        return view
    if facts.get('unreachable'):
        view.error = 'unreachable: %s' % to_text(facts.get('msg') or 'no message')
        return view
    if facts.get('failed'):
        view.error = 'gpu_facts failed: %s' % to_text(facts.get('msg') or 'no message')
        return view
    gpus = ((facts.get('ansible_facts') or {}).get('gpu_passthrough') or {}).get('gpus')
    if not isinstance(gpus, list):
        view.error = '%s holds no gpu_passthrough facts' % facts_result
        return view
    libvirt = hostvar(hostvars, host, libvirt_result)
    if not isinstance(libvirt, dict) or 'available' not in libvirt:
        view.error = 'no %s result (libvirt_gpu_info did not run there)' % libvirt_result
        return view
    if not libvirt.get('available'):
        view.error = 'libvirt is not available: %s' % to_text(libvirt.get('error') or 'no reason given')
        return view
    view.domains = given_by_domain(list(libvirt.get('domains') or []), gpus)
    return view


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp: str | None = None, task_vars: dict | None = None) -> dict:
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        _validation, args = self.validate_argument_spec(argument_spec=_ARGS)
        try:
            return self._run(result, args, task_vars)
        except FleetGpuError as exc:
            result.update(failed=True, **exc.result())
            return result

    def _run(self, result: dict, args: dict, task_vars: dict) -> dict:
        vm = args['vm']
        if not vm:
            raise GuestCheckError('vm is empty: give the name of the libvirt domain this guest runs in')
        bad = [i for i, g in enumerate(args['guest_gpus']) if not isinstance(g, dict) or 'vendor_device' not in g]
        if bad:
            raise GuestCheckError('guest_gpus of VM %r: item(s) %s are not GPUs of gpu_facts (a dict with '
                                  'vendor_device); pass ansible_facts.gpu_passthrough.gpus of the guest'
                                  % (vm, ', '.join(str(i) for i in bad)))
        hostvars = task_vars.get('hostvars') or {}
        inventory = set((task_vars.get('groups') or {}).get('all') or [])
        views = [read_host(hostvars, h, args['facts_result'], args['libvirt_result'])
                 for h in sorted(set(args['hosts']))]
        host = locate(vm, args['vm_host'], views, inventory)
        given = host.domains[vm]
        checked = compare(vm, given, list(args['guest_gpus']), args['driver'])
        checked.update(host=host.name, given=given, driver=args['driver'])
        result.update(changed=False, msg=verdict(checked, host.name), **checked)
        if not checked['ok']:
            result['failed'] = True
        return result
