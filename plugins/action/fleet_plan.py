# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Controller side of fleet_plan: read every host's play-1 results from hostvars, validate the
fleet model, place the VM requests, write the fleet report, publish the plan.  The
documentation lives in plugins/modules/fleet_plan.py."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.fleetgpu.passthrough.plugins.plugin_utils._hostvars import hostvar
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.fleet_plan import (
    HostInput,
    parse_models,
    parse_vms,
    plan,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._fleet_report import build, write

_ARGS = {
    'models': dict(type='raw'),
    'vms': dict(type='raw'),
    'policy': dict(type='str', default='spread'),
    'report_dir': dict(type='path'),
    'mode': dict(type='str', choices=['place', 'report'], default='place'),
    'hosts': dict(type='list', elements='str'),
    'facts_result': dict(type='str', default='fleetgpu_gpu_facts'),
    'libvirt_result': dict(type='str', default='fleetgpu_libvirt_info'),
    'check_result': dict(type='str', default='fleetgpu_iommu_check'),
}


def read_host(hostvars: Mapping[str, Any], host: str, ok_hosts: set[str], names: dict[str, str]) -> HostInput:
    """One host's HostInput from what play 1 registered for it."""
    info = HostInput(name=host)
    facts_res = hostvar(hostvars, host, names['facts_result'])
    boot = hostvar(hostvars, host, 'vfio_host_allow_boot_vga')
    try:
        info.allow_boot_vga = boolean(boot, strict=False) if boot is not None else False
    except TypeError:
        info.allow_boot_vga = False
    res = facts_res if isinstance(facts_res, dict) else {}
    if res.get('unreachable'):
        info.status, info.message = 'unreachable', to_text(res.get('msg') or 'unreachable')
        return info
    if res.get('failed'):
        info.status, info.message = 'failed', 'gpu_facts failed: %s' % to_text(res.get('msg') or 'no message')
        return info
    if host not in ok_hosts:
        info.status, info.message = ('failed', 'a task of the facts play failed on this host') if res else \
            ('unreachable', 'no result from this host (unreachable, or it failed before gpu_facts)')
        return info
    facts = (res.get('ansible_facts') or {}).get('gpu_passthrough')
    if not isinstance(facts, dict):
        ansible_facts = hostvar(hostvars, host, 'ansible_facts')
        facts = ansible_facts.get('gpu_passthrough') if isinstance(ansible_facts, dict) else None
    if not isinstance(facts, dict):
        info.status, info.message = 'failed', 'no gpu_passthrough facts: run gpu_facts before fleet_plan'
        return info
    info.facts = facts
    lv = hostvar(hostvars, host, names['libvirt_result'])
    info.libvirt = lv if isinstance(lv, dict) and 'available' in lv else {'available': False,
                                                                          'error': 'libvirt_gpu_info did not run'}
    check = hostvar(hostvars, host, names['check_result'])
    if isinstance(check, dict):
        for finding in check.get('findings') or []:
            if isinstance(finding, dict) and finding.get('severity') != 'info':
                info.problems.append('%s: %s' % (finding.get('name'), finding.get('message')))
    return info


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
        hostvars = task_vars.get('hostvars') or {}
        inventory = set((task_vars.get('groups') or {}).get('all') or [])
        hosts = args['hosts'] if args['hosts'] is not None else list(task_vars.get('ansible_play_hosts_all') or [])
        ok_hosts = set(task_vars.get('ansible_play_hosts') or [])
        strict = args['mode'] == 'place'
        models = parse_models(args['models'], inventory or None)
        vms = parse_vms(args['vms'], models, inventory or None)
        names = {k: args[k] for k in ('facts_result', 'libvirt_result', 'check_result')}
        inputs = {h: read_host(hostvars, h, ok_hosts, names) for h in sorted(set(hosts))}
        fleet = plan(inputs, models, vms, args['policy'], strict=strict)
        doc = build(fleet, args['mode'])
        host_plans = {h: fleet.host_plan(h) for h in sorted(inputs)}
        artifact = fleet.artifact()
        result.update({
            'changed': False,
            'placement': artifact,
            'hosts': host_plans,
            'drift': fleet.drift,
            'unplaced': doc['unplaced'],
            'errors': doc['errors'],
            'summary': doc['summary'],
            'ansible_facts': {'fleetgpu_plan': {'hosts': host_plans, 'placement': artifact,
                                                'policy': fleet.policy}},
            'ansible_stats': {'data': {'fleetgpu_placement': artifact}, 'per_host': False, 'aggregate': False},
        })
        if args['report_dir']:
            # a relative directory is relative to where ansible-playbook runs (the controller's cwd)
            args['report_dir'] = os.path.abspath(args['report_dir'])
            if self._task.check_mode:
                result['report'] = None
                result['report_msg'] = 'check mode: the fleet report was not written (%s)' % args['report_dir']
            else:
                # a controller-side artifact: rewritten only when its content differs, never a change of the fleet
                paths, _rewritten = write(doc, args['report_dir'])
                result['report'] = paths
                result['report_msg'] = 'fleet report: %s and %s' % (paths['html'], paths['json'])
        if strict and fleet.unplaced:
            result.update(failed=True, msg=fleet.failure_message())
        return result
