# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The engine of the vfio_host_config module: plan and apply the persistent vfio host files and the initramfs rebuild.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.
"""

from __future__ import annotations

import os
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._files import rooted
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._files import read as read_file
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import CommandError, ModuleRunner, Runner
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._initramfs import Initramfs, InitramfsError, backend
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import from_params
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._gpu_selection import Decision, SelectionError, decide, validate_facts
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vfio_files import (
    ADDRESSES_CONF, MANAGED_ARGS, MODPROBE_CONF, MODULES_LOAD_CONF, addresses_conf, existing_softdeps, modprobe_conf,
    modules_load_conf)


class HostFilesPlan:
    """Files to change, whether the initramfs must be rebuilt, and the result of doing it."""

    def __init__(self) -> None:
        self.files: list[_files.FileChange] = []
        self.rebuild = False
        self.rebuild_reason = ''
        self.commands: list[list[str]] = []
        self.problems: list[str] = []

    @property
    def changed(self) -> bool:
        return self.rebuild or any(f.changed for f in self.files)


def plan_files(root: str, initramfs: Initramfs | None, decision: Decision | None, builtin: bool) -> list[_files.FileChange]:
    """Every managed file with its wanted content (None: absent)."""
    per_address = bool(decision and decision.addresses)
    wanted: dict[str, tuple[str | None, int]] = {}
    if decision is not None:
        wanted[MODPROBE_CONF] = (_files.header() + modprobe_conf(decision, builtin), 0o644)
        wanted[MODULES_LOAD_CONF] = (_files.header() + modules_load_conf(), 0o644)
        wanted[ADDRESSES_CONF] = ((_files.header() + addresses_conf(decision)) if per_address else None, 0o644)
    else:
        for path in (MODPROBE_CONF, MODULES_LOAD_CONF, ADDRESSES_CONF):
            wanted[path] = (None, 0o644)
    if initramfs is not None:
        for path in initramfs.all_paths():
            wanted[path] = (None, 0o644)
        if decision is not None:
            for managed in initramfs.files(per_address):
                wanted[managed.path] = (managed.content, managed.mode)
    changes = []
    for path in sorted(wanted):
        content, mode = wanted[path]
        changes.append(_files.plan(_files.rooted(root, path), content, mode))
    return changes


def plan(root: str, initramfs: Initramfs | None, decision: Decision | None, builtin: bool, kernel: str,
         update: bool) -> HostFilesPlan:
    result = HostFilesPlan()
    result.files = [f for f in plan_files(root, initramfs, decision, builtin) if f.changed]
    per_address = bool(decision and decision.addresses)
    if initramfs is None or not update:
        _forget_verified(result, initramfs, decision)
        return result
    if result.files:
        result.rebuild = True
        result.rebuild_reason = 'configuration changed'
    else:
        problems = initramfs.verify(kernel, per_address, builtin, present=decision is not None)
        if problems:
            result.rebuild = True
            result.rebuild_reason = '; '.join(problems)
    _forget_verified(result, initramfs, decision)
    if result.rebuild:
        result.commands = initramfs.regenerate()
    return result


def _forget_verified(result: HostFilesPlan, initramfs: Initramfs | None, decision: Decision | None) -> None:
    """state=absent: the record of verified images goes with the rest (it asks for no rebuild)."""
    if initramfs is None or decision is not None:
        return
    record = _files.plan(initramfs.verified_path(), None)
    if record.changed:
        result.files.append(record)


def apply(result: HostFilesPlan, initramfs: Initramfs | None, runner: Runner, decision: Decision | None, builtin: bool,
          kernel: str) -> None:
    """Write the files; rebuild and verify the initramfs. A failed rebuild restores the files."""
    done: list[_files.FileChange] = []
    try:
        for change in result.files:
            change.apply()
            done.append(change)
        for argv in result.commands:
            runner.run(argv)
    except (CommandError, _files.FileError) as exc:
        _files.revert_all(done)
        raise InitramfsError('%s; the previous configuration files were restored (the initramfs may need '
                             'rebuilding by hand before the next boot)' % exc) from None
    if initramfs is not None and result.commands:
        problems = initramfs.verify(kernel, bool(decision and decision.addresses), builtin, present=decision is not None)
        if problems:
            result.problems = problems
            raise InitramfsError('the rebuilt initramfs is not right: %s' % '; '.join(problems))


def managed_args() -> list[str]:
    return list(MANAGED_ARGS)


_RELEASE_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}\Z')


def check_kernel_release(root: str, release: str) -> None:
    """Refuse a kernel_release that is not a release name installed under ``root`` (before anything is written)."""
    if not _RELEASE_RE.match(release):
        raise SelectionError('kernel_release %r is not a kernel release name (like 6.1.0-27-amd64)' % (release,))
    modules = rooted(root, '/lib/modules/%s' % release)
    if not os.path.isdir(modules):
        raise SelectionError('kernel_release %r is not installed: %s does not exist; nothing was written'
                             % (release, modules))


def run(module: AnsibleModule) -> dict:
    """Do what the module's parameters ask (or predict it in check mode); the module's result."""
    p = module.params
    sysfs = from_params(p)
    runner = ModuleRunner(module, p['root'])
    facts = validate_facts(p['facts'] or {})
    host = facts.get('host') or {}
    builtin = bool(host.get('vfio_pci_builtin'))
    kernel = p['kernel_release'] or host.get('kernel_release') or sysfs.kernel_release() or ''
    if p['kernel_release'] is not None:
        check_kernel_release(p['root'], p['kernel_release'])
    decision = None
    if p['state'] == 'present':
        if not facts:
            raise SelectionError('facts is required with state=present (pass ansible_facts.gpu_passthrough from gpu_facts)')
        previous = existing_softdeps(read_file(rooted(p['root'], MODPROBE_CONF)))
        decision = decide(facts, p['devices'], sysfs, p['allow_boot_vga'], p['iommu_pt'], p['blacklist'], previous,
                          p['dynamic_devices'])
        for warning in decision.warnings:
            module.warn(warning)
    selection = decision
    if decision is None and facts and p['devices']:
        try:
            selection = decide(facts, p['devices'], sysfs, p['allow_boot_vga'], p['iommu_pt'], [],
                               keep=p['dynamic_devices'])
        except SelectionError as exc:
            module.warn('the devices to put back on their drivers could not be resolved: %s' % exc)
    initramfs = None if p['initramfs'] == 'none' else backend(p['initramfs'], p['root'], runner)
    host_plan = plan(p['root'], initramfs, decision, builtin, kernel, p['update'])
    skipped = [argv for argv in host_plan.commands if runner.skips(argv[0])]
    if host_plan.changed and not module.check_mode:
        apply(host_plan, initramfs, runner, decision, builtin, kernel)
    if initramfs is not None and decision is not None and not module.check_mode:
        initramfs.save_verified()
    for argv in skipped:
        module.warn('not run: %s (the root %s does not hold %s, and a prefix root never runs the running host\'s '
                    'tools)' % (' '.join(argv), p['root'], argv[0]))
    result = {
        'changed': host_plan.changed,
        'initramfs': initramfs.name if initramfs else 'none',
        'rebuild': host_plan.rebuild_reason,
        'files': [f.path for f in host_plan.files],
        'commands': [argv for argv in host_plan.commands if argv not in skipped],
        'skipped_commands': skipped,
        'verified_unchanged': initramfs.reused if initramfs else [],
        'ids': decision.ids if decision else [],
        'addresses': decision.addresses if decision else [],
        'softdeps': decision.softdeps if decision else [],
        'cmdline_add': decision.cmdline_add if decision else [],
        'cmdline_remove': decision.cmdline_remove if decision else managed_args(),
    }
    if selection:
        result['selected'] = selection.selected
        result['bind'] = selection.bind
    if module._diff:
        result['diff'] = [f.diff() for f in host_plan.files]
    return result
