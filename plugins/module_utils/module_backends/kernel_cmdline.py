# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The engine of the kernel_cmdline module: read the running command line, plan the bootloader change, apply it.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import RECORD, Record, backend
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange, CmdlineError, check_length, reboot_reasons, split
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import ModuleRunner
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import from_params


def run(module: AnsibleModule) -> dict:
    """Do what the module's parameters ask (or predict it in check mode); the module's result."""
    params = module.params
    sysfs = from_params(params)
    running = split(sysfs.cmdline())
    root = params['root']
    runner = ModuleRunner(module, root)
    loader = backend(params['bootloader'], root, runner, params['update'], running)
    # a GRUB drop-in written before records were kept counts as recorded: it holds only what the collection set
    record = Record.load(_files.rooted(root, RECORD), loader)
    if params['undo']:
        if params['add']:
            raise CmdlineError('undo gives back what this collection changed and cannot be combined with add')
        change = record.undo_change(params['remove'])
    else:
        change = CmdlineChange(params['add'], params['remove'])
    plan = loader.plan(change)
    check_length(plan.after)
    # the record is written with the bootloader's files (and put back with them when a command fails)
    record_change = _files.plan(record.path, record.updated(plan.before, plan.after).render(), keep_backup=False)
    if record_change.changed:
        plan.files.append(record_change)
    skipped = [argv for argv in plan.commands if runner.skips(argv[0])] if params['update'] else []
    if plan.changed and not module.check_mode:
        loader.apply(plan)
        if params['undo']:
            # nothing of the collection's stays behind: not even the copies kept of the files it changed
            for change_made in plan.files:
                _files.remove(change_made.path + _files.BACKUP_SUFFIX, keep_backup=False)
    for argv in skipped:
        module.warn('not run: %s (the root %s does not hold %s, and a prefix root never runs the running host\'s '
                    'tools)' % (' '.join(argv), root, argv[0]))
    missing = change.missing(running)
    lingering = change.lingering(running)
    result = {
        'changed': plan.changed,
        'bootloader': loader.name,
        'cmdline_before': ' '.join(plan.before),
        'cmdline_after': ' '.join(plan.after),
        'reboot_required': bool(missing or lingering),
        'reboot_reasons': reboot_reasons(missing, lingering),
        'missing': missing,
        'lingering': lingering,
        'files': [f.path for f in plan.files if f.changed],
        'commands': [argv for argv in plan.commands if argv not in skipped] if params['update'] else [],
        'skipped_commands': skipped,
        'recorded': {'added': record.updated(plan.before, plan.after).added,
                     'displaced': record.updated(plan.before, plan.after).displaced},
    }
    if module._diff:
        diffs = [{'before_header': 'kernel arguments', 'after_header': 'kernel arguments',
                  'before': ' '.join(plan.before) + '\n', 'after': ' '.join(plan.after) + '\n'}]
        diffs += [f.diff() for f in plan.files if f.changed]
        result['diff'] = diffs
    return result
