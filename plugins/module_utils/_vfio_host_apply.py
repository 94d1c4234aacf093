# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Plan and apply the persistent vfio host files and the initramfs rebuild.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.
"""

from __future__ import annotations

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import CommandError, Runner
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._initramfs import Initramfs, InitramfsError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vfio_host import (
    ADDRESSES_CONF, MANAGED_ARGS, MODPROBE_CONF, MODULES_LOAD_CONF, Decision, addresses_conf, modprobe_conf,
    modules_load_conf)


class HostPlan:
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
         update: bool) -> HostPlan:
    result = HostPlan()
    result.files = [f for f in plan_files(root, initramfs, decision, builtin) if f.changed]
    per_address = bool(decision and decision.addresses)
    if initramfs is None or not update:
        return result
    if result.files:
        result.rebuild = True
        result.rebuild_reason = 'configuration changed'
    else:
        problems = initramfs.verify(kernel, per_address, builtin, present=decision is not None)
        if problems:
            result.rebuild = True
            result.rebuild_reason = '; '.join(problems)
    if result.rebuild:
        result.commands = initramfs.regenerate()
    return result


def apply(result: HostPlan, initramfs: Initramfs | None, runner: Runner, decision: Decision | None, builtin: bool,
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
