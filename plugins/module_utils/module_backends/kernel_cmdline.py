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
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import (
    RECORD, TRIAL_ID, Bootloader, BootloaderError, CmdlinePlan, Record, backend, merge_plans)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange, CmdlineError, check_length, reboot_reasons, split
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import ModuleRunner
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import from_params


def _acts(plan: CmdlinePlan) -> bool:
    """Whether a trial plan has anything to do (its before/after are two different command lines)."""
    return any(f.changed for f in plan.files) or bool(plan.commands)


def _trial(loader: Bootloader, params: dict, change: CmdlineChange, plan: CmdlinePlan, running: list[str],
           check_mode: bool) -> tuple[CmdlinePlan, dict]:
    """The plan to carry out for the ``trial`` option, and the ``trial`` result.

    stage: while the configuration lacks the change and the running kernel lacks it too, the trial entry
    replaces the permanent change (the permanent files stay as they are); on a host that runs the trial now
    (its entry is there and the running kernel has the change) nothing is done and the state is ``booted``.
    commit: the permanent change and the trial entry's removal, once the running kernel has the change.
    discard: only the trial entry's removal.
    """
    mode = params['trial']
    exists = loader.trial_exists()
    satisfied = change.satisfied_by(running)
    info = {'mode': mode, 'state': 'none', 'entry': None, 'cmdline': None, 'arguments': [], 'supported': loader.supports_trial}
    added = [t for t in plan.after if t not in plan.before] + ['-' + t for t in plan.before if t not in plan.after]
    if mode == 'stage':
        if not loader.supports_trial:
            if params['trial_required']:
                raise BootloaderError('%s has no one-time boot entry, so the new kernel arguments cannot be tried once '
                                      'before they are made permanent; nothing was written (trial_required is true)'
                                      % loader.name)
            info['state'] = 'unsupported'
            return plan, info
        if not plan.changed:
            return plan, info
        if satisfied:
            if exists:
                # the host runs the trial boot: verify, then commit (no second reboot)
                info.update(state='booted', entry=TRIAL_ID, arguments=added)
                return CmdlinePlan(plan.before, plan.before), info
            return plan, info
        trial = loader.trial_plan(change, params['panic_timeout'])
        info.update(state='staged', entry=TRIAL_ID, cmdline=' '.join(trial.after), arguments=added)
        staged = CmdlinePlan(plan.before, plan.before)
        staged.files, staged.commands = trial.files, trial.commands
        return staged, info
    discard = loader.trial_discard_plan()
    if mode == 'discard':
        info['state'] = 'discarded' if _acts(discard) else 'none'
        return merge_plans(plan.before, plan.before, discard), info
    # commit
    if not satisfied and not check_mode and plan.changed:
        if _acts(discard):
            loader.apply(discard)
        raise BootloaderError('the running kernel lacks %s: the host did not come up on the trial boot entry and fell '
                              'back to its previous command line by itself (a panic or a failed boot reboots it); '
                              'nothing permanent was written, and the trial entry was removed'
                              % ' '.join(change.missing(running) + ['-' + t for t in change.lingering(running)]))
    info['state'] = 'committed' if plan.changed or _acts(discard) else 'none'
    info['arguments'] = added
    return merge_plans(plan.before, plan.after, plan, discard), info


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
        if params['trial'] not in ('off', 'discard'):
            raise CmdlineError('undo cannot be combined with trial %s' % params['trial'])
        change = record.undo_change(params['remove'])
    else:
        change = CmdlineChange(params['add'], params['remove'])
    if params['panic_timeout'] < 1:
        raise CmdlineError('panic_timeout is %d: a trial boot that panics must reboot by itself after at least 1 s'
                           % params['panic_timeout'])
    plan = loader.plan(change)
    check_length(plan.after)
    trial_info = None
    if params['undo']:
        # an undo leaves no trial entry behind either
        plan = merge_plans(plan.before, plan.after, plan, loader.trial_discard_plan())
    elif params['trial'] != 'off':
        plan, trial_info = _trial(loader, params, change, plan, running, module.check_mode)
    # the record is written with the bootloader's files (and put back with them when a command fails)
    recorded = record.updated(plan.before, plan.after)
    record_change = _files.plan(record.path, recorded.render(), keep_backup=False)
    if record_change.changed:
        plan.files.append(record_change)
    changed = plan.changed or bool(trial_info and trial_info['state'] in ('staged', 'discarded', 'committed') and _acts(plan))
    skipped = [argv for argv in plan.commands if runner.skips(argv[0])] if params['update'] else []
    if changed and not module.check_mode:
        loader.apply(plan)
        if params['undo']:
            # nothing of the collection's stays behind: not even the copies kept of the files it changed
            for change_made in plan.files:
                _files.remove(change_made.path + _files.BACKUP_SUFFIX, keep_backup=False)
    for argv in skipped:
        module.warn('not run: %s (the root %s does not hold %s, and a prefix root never runs the running host\'s '
                    'tools)' % (' '.join(argv), root, argv[0]))
    if trial_info and trial_info['state'] == 'unsupported':
        module.warn('%s has no one-time boot entry: the new kernel arguments are written permanently without a trial '
                    'boot (trial_required: true refuses this instead)' % loader.name)
    missing = change.missing(running)
    lingering = change.lingering(running)
    configured = plan.after if trial_info is None or trial_info['state'] not in ('staged', 'booted') else \
        loader.plan(change).after
    result = {
        'changed': changed,
        'bootloader': loader.name,
        'cmdline_before': ' '.join(plan.before),
        'cmdline_after': ' '.join(configured),
        'reboot_required': bool(missing or lingering),
        'reboot_reasons': reboot_reasons(missing, lingering),
        'missing': missing,
        'lingering': lingering,
        'files': [f.path for f in plan.files if f.changed],
        'commands': [argv for argv in plan.commands if argv not in skipped] if params['update'] else [],
        'skipped_commands': skipped,
        'recorded': {'added': recorded.added, 'displaced': recorded.displaced},
        'trial': trial_info or {'mode': 'off', 'state': 'none', 'entry': None, 'cmdline': None, 'arguments': [],
                                'supported': loader.supports_trial},
    }
    if module._diff:
        if trial_info and trial_info['state'] == 'staged':
            diffs = [{'before_header': 'kernel arguments', 'after_header': 'kernel arguments of the trial boot (once)',
                      'before': ' '.join(plan.before) + '\n', 'after': trial_info['cmdline'] + '\n'}]
        else:
            diffs = [{'before_header': 'kernel arguments', 'after_header': 'kernel arguments',
                      'before': ' '.join(plan.before) + '\n', 'after': ' '.join(configured) + '\n'}]
        diffs += [f.diff() for f in plan.files if f.changed]
        result['diff'] = diffs
    return result
