# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Engine of the gpu_mig module: read each GPU's MIG mode and instances with nvidia-smi, plan the
commands that give it the declared layout, run them, persist the layout in a systemd unit.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _mig
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._files import FileChange, FileError, header, read, revert_all, rooted
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._mig import MigError

UNIT_NAME = 'fleetgpu-mig.service'
UNIT_PATH = '/etc/systemd/system/' + UNIT_NAME
WANTS_PATH = '/etc/systemd/system/multi-user.target.wants/' + UNIT_NAME
LAYOUT_PATH = '/etc/fleetgpu-passthrough/mig-layout.json'
# the NVIDIA services that hand out vGPU types of the MIG instances: the layout is there before them
VGPU_SERVICES = 'nvidia-vgpud.service nvidia-vgpu-mgr.service libvirtd.service'
_ADDR = re.compile(r'^(?:[0-9a-f]{4,8}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$')

RunFn = Callable[[list], Any]   # argv -> (rc, stdout, stderr)


@dataclass
class GpuPlan:
    row: _mig.GpuRow
    wanted: list[str] | None              # profile names (None: state absent)
    before: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    instances: list[_mig.Instance] = field(default_factory=list)
    note: str = ''
    asks: list[tuple[str, int]] = field(default_factory=list)
    where: str = ''


def _key(value: object, where: str) -> str | int:
    if isinstance(value, bool):
        raise MigError('%s: %r is neither a GPU index nor a PCI address' % (where, value))
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return int(value)
    text = str(value).strip().lower() if isinstance(value, str) else ''
    if not _ADDR.match(text):
        raise MigError('%s: %r is neither a GPU index (0) nor a PCI address (0000:41:00.0)' % (where, value))
    return text


def _find(rows: list[_mig.GpuRow], key: str | int, where: str) -> _mig.GpuRow:
    for row in rows:
        if isinstance(key, int) and row.index == key:
            return row
        if isinstance(key, str) and row.bus_id.lower().endswith(key.split(':', 1)[-1] if key.count(':') == 2 else key):
            return row
    raise MigError('%s: no NVIDIA GPU %s (nvidia-smi lists: %s)' % (
        where, key, ', '.join('%d %s (%s)' % (r.index, r.bus_id, r.name) for r in rows) or 'none'))


def check_layout(gpus: object) -> list[tuple[str | int, list[tuple[str, int]]]]:
    """The option ``gpus`` checked: (GPU key, [(profile, count)])."""
    if not isinstance(gpus, list) or not gpus:
        raise MigError('gpus must be a non-empty list of {gpu, instances}')
    out: list[tuple[str | int, list[tuple[str, int]]]] = []
    for i, entry in enumerate(gpus):
        where = 'gpus[%d]' % i
        if not isinstance(entry, dict) or entry.get('gpu') is None:
            raise MigError('%s needs gpu (its index or PCI address)' % where)
        key = _key(entry['gpu'], where + '.gpu')
        asks = []
        for j, inst in enumerate(entry.get('instances') or []):
            iwhere = '%s.instances[%d]' % (where, j)
            if not isinstance(inst, dict) or not isinstance(inst.get('profile'), str) or not inst['profile'].strip():
                raise MigError('%s needs profile (a GPU instance profile such as 1g.10gb)' % iwhere)
            count = inst.get('count', 1)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise MigError('%s.count must be a number of 1 or more, got %r' % (iwhere, count))
            asks.append((inst['profile'].strip(), count))
        if any(k == key for k, _a in out):
            raise MigError('%s: GPU %s is listed twice' % (where, key))
        out.append((key, asks))
    return out


def _run(run: RunFn, argv: list[str]) -> tuple[int, str, str]:
    rc, out, err = run(argv)
    return int(rc), str(out or ''), str(err or '')


def _checked(run: RunFn, argv: list[str]) -> str:
    rc, out, err = _run(run, argv)
    if rc != 0:
        raise MigError('%s failed with exit code %d: %s' % (' '.join(argv), rc, (err or out).strip()[-2000:]))
    return out


def _read_instances(run: RunFn, smi: str, index: int) -> list[_mig.Instance]:
    rc, out, err = _run(run, _mig.list_argv(smi, index, '-lgi'))
    if _mig.not_found(rc, out, err):
        return []
    if rc != 0:
        raise MigError('%s failed with exit code %d: %s' % (' '.join(_mig.list_argv(smi, index, '-lgi')), rc, (err or out).strip()))
    instances = _mig.parse_instances(out)
    rc, out, err = _run(run, _mig.list_argv(smi, index, '-lci'))
    if _mig.not_found(rc, out, err):
        compute: dict[int, list[int]] = {}
    else:
        compute = _mig.parse_compute(_checked(run, _mig.list_argv(smi, index, '-lci')) if rc != 0 else out)
    for inst in instances:
        inst.compute = sorted(compute.get(inst.gi_id, []))
    return instances


def _order(names: list[str]) -> list[str]:
    """Largest instances first (the tool places them where they fit), then by name; the size is in the name (3g.40gb)."""
    return sorted(names, key=lambda n: (-_mig.Profile(n, 0, 0, 0).slices, n))


def _resolve(profiles: list[_mig.Profile], asks: list[tuple[str, int]], where: str, index: int) -> list[str]:
    """The layout's profile names as the GPU lists them, checked against what it holds, largest first."""
    wanted: list[str] = []
    for name, count in asks:
        prof = _mig.resolve_profile(name, profiles, where)
        if count > prof.total:
            raise MigError('%s: %d x %s asked, GPU %d holds at most %d' % (where, count, prof.name, index, prof.total))
        wanted += [prof.name] * count
    budget = _mig.compute_slices(profiles)
    used = sum(p.slices for n in wanted for p in profiles if p.name == n)
    if budget and used > budget:
        raise MigError('%s: the layout %s needs %d compute slices, GPU %d has %d'
                       % (where, ' + '.join('%d x %s' % (c, n) for n, c in asks), used, index, budget))
    return _order(wanted)


def plan_gpu(run: RunFn, smi: str, row: _mig.GpuRow, asks: list[tuple[str, int]] | None, where: str,
             check_mode: bool) -> GpuPlan:
    """The commands that give ``row`` the layout ``asks`` (None: MIG off, nothing left)."""
    plan = GpuPlan(row=row, wanted=None)
    if not row.supports_mig:
        if asks is None:
            plan.note = 'does not support MIG: nothing to undo'
            return plan
        raise MigError('%s: GPU %d (%s, %s) does not support MIG (nvidia-smi reports its MIG mode as %s)'
                       % (where, row.index, row.name, row.bus_id, row.mig_current))
    enabled = row.mig_current == 'Enabled'
    if enabled:
        plan.instances = _read_instances(run, smi, row.index)
    plan.before = sorted(i.profile for i in plan.instances)
    computes = any(i.compute for i in plan.instances)
    if asks is None:
        if computes:
            plan.commands.append(_mig.destroy_argv(smi, row.index, '-dci'))
        if plan.instances:
            plan.commands.append(_mig.destroy_argv(smi, row.index, '-dgi'))
        if enabled or row.mig_pending == 'Enabled':
            plan.commands.append(_mig.mig_mode_argv(smi, row.index, False))
        return plan
    profiles: list[_mig.Profile] = []
    if enabled:
        profiles = _mig.parse_profiles(_checked(run, _mig.list_argv(smi, row.index, '-lgip')))
    plan.asks, plan.where = asks, where
    if profiles:
        wanted = _resolve(profiles, asks, where, row.index)
    else:
        # MIG mode is off: the profiles can be listed (and checked) once it is on
        wanted = _order([n[4:].strip() if n.lower().startswith('mig ') else n for n, c in asks for _i in range(c)])
        if check_mode:
            plan.note = 'MIG mode is off: the profiles are checked once it is on'
    plan.wanted = wanted
    complete = all(i.compute for i in plan.instances)
    if enabled and sorted(wanted) == plan.before and complete:
        return plan
    if not enabled:
        plan.commands.append(_mig.mig_mode_argv(smi, row.index, True))
    if computes:
        plan.commands.append(_mig.destroy_argv(smi, row.index, '-dci'))
    if plan.instances:
        plan.commands.append(_mig.destroy_argv(smi, row.index, '-dgi'))
    if wanted:
        plan.commands.append(_mig.create_argv(smi, row.index, wanted))
    return plan


def _quote(arg: str) -> str:
    return '"%s"' % arg.replace('\\', '\\\\').replace('"', '\\"') if re.search(r'[\s"\\;]', arg) else arg


def render_unit(smi: str, layout: dict[str, list[str]]) -> str:
    """The oneshot unit that re-applies ``layout`` (bus id -> profile names) at boot, before the vGPU manager."""
    lines = [header().rstrip('\n'),
             '[Unit]',
             'Description=fleetgpu.passthrough: MIG layout of the NVIDIA GPUs, re-applied at boot',
             'After=nvidia-persistenced.service systemd-modules-load.service',
             'Before=%s' % VGPU_SERVICES,
             '',
             '[Service]',
             'Type=oneshot',
             'RemainAfterExit=yes']
    for bus in sorted(layout):
        base = [_quote(smi)]
        lines.append('ExecStart=%s -i %s -mig 1' % (base[0], bus))
        # nothing to destroy is not a failure ("-" prefix)
        lines.append('ExecStart=-%s mig -i %s -dci' % (base[0], bus))
        lines.append('ExecStart=-%s mig -i %s -dgi' % (base[0], bus))
        if layout[bus]:
            lines.append('ExecStart=%s mig -i %s -cgi %s -C' % (base[0], bus, ','.join(layout[bus])))
    lines += ['', '[Install]', 'WantedBy=multi-user.target', '']
    return '\n'.join(lines)


def _read_layout(path: str) -> dict[str, list[str]]:
    text = read(path)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MigError('%s is not the JSON the collection writes (%s): fix or remove it' % (path, exc)) from None
    gpus = data.get('gpus') if isinstance(data, dict) else None
    if not isinstance(gpus, dict):
        raise MigError('%s has no gpus mapping: fix or remove it' % path)
    return {str(k): [str(p) for p in v] for k, v in gpus.items() if isinstance(v, list)}


def _layout_text(p: GpuPlan) -> str:
    return 'MIG off' if p.wanted is None else ', '.join(p.wanted) or 'no instance'


def _files(plans: list[GpuPlan], state: str, persist: bool, root: str, smi: str) -> tuple[list[FileChange], bool, bool]:
    """The layout file and the unit after this run, and whether the unit's wants link is there before and after."""
    if not persist:
        return [], False, False
    layout_path = rooted(root, LAYOUT_PATH)
    after_layout = _read_layout(layout_path)
    for p in plans:
        if state == 'present' and p.wanted is not None:
            after_layout[p.row.bus_id] = list(p.wanted)
        else:
            after_layout.pop(p.row.bus_id, None)
    layout_text = (json.dumps({'comment': header().strip(), 'gpus': after_layout}, indent=2, sort_keys=True) + '\n'
                   if after_layout else None)
    unit_path = rooted(root, UNIT_PATH)
    files = [FileChange(layout_path, read(layout_path), layout_text),
             FileChange(unit_path, read(unit_path), render_unit(smi, after_layout) if after_layout else None)]
    return files, os.path.lexists(rooted(root, WANTS_PATH)), bool(after_layout)


def _persist(files: list[FileChange], root: str, wants_before: bool, wants_after: bool) -> None:
    done: list[FileChange] = []
    try:
        for f in files:
            f.apply()
            done.append(f)
        wants = rooted(root, WANTS_PATH)
        if wants_after and not wants_before:
            os.makedirs(os.path.dirname(wants), exist_ok=True)
            os.symlink(UNIT_PATH, wants)
        elif wants_before and not wants_after:
            os.unlink(wants)
    except (FileError, OSError) as exc:
        left = revert_all(done)
        raise MigError('persisting the MIG layout failed: %s%s' % (exc, '; not restored: ' + '; '.join(left) if left else '')) from None


def _apply_gpu(run_cmd: RunFn, smi: str, p: GpuPlan, warnings: list[str]) -> list[int]:
    """Run one GPU's commands; returns [its index] when its MIG mode stays pending (the rest waits for the boot)."""
    ran: list[list[str]] = []
    for argv in list(p.commands):
        if argv[:5] == _mig.create_argv(smi, p.row.index, [])[:5] and p.asks:
            # MIG mode may have been off when the plan was made: the profiles are checked (and named) now
            profiles = _mig.parse_profiles(_checked(run_cmd, _mig.list_argv(smi, p.row.index, '-lgip')))
            p.wanted = _resolve(profiles, p.asks, p.where, p.row.index)
            argv = _mig.create_argv(smi, p.row.index, p.wanted)
        _checked(run_cmd, argv)
        ran.append(argv)
        if argv == _mig.mig_mode_argv(smi, p.row.index, True):
            again = _find(_mig.parse_query(_checked(run_cmd, _mig.query_argv(smi))), p.row.index, p.where)
            if again.mig_current != 'Enabled':
                warnings.append('GPU %d (%s): MIG mode is pending until the GPU is reset or the host reboots; the '
                                'instances are made then by %s (when persisted)' % (p.row.index, p.row.bus_id, UNIT_NAME))
                p.commands = ran
                return [p.row.index]
    p.commands = ran
    return []


def run(run_cmd: RunFn, smi: str | None, gpus: object, state: str, persist: bool, root: str, check_mode: bool,
        diff: bool, daemon_reload: Callable[[], None] | None = None) -> tuple[dict, list[str]]:
    warnings: list[str] = []
    if not smi:
        raise MigError('nvidia-smi was not found (PATH and the sbin directories): MIG needs the NVIDIA driver and its '
                       'tools on the host (or give the path as nvidia_smi)')
    layout_in = check_layout(gpus)
    rows = _mig.parse_query(_checked(run_cmd, _mig.query_argv(smi)))
    plans = []
    for i, (key, asks) in enumerate(layout_in):
        where = 'gpus[%d] (GPU %s)' % (i, key)
        row = _find(rows, key, where)
        plans.append(plan_gpu(run_cmd, smi, row, asks if state == 'present' else None, where, check_mode))
        if plans[-1].note and state == 'present':
            warnings.append('GPU %d: %s' % (row.index, plans[-1].note))

    files, wants_before, wants_after = _files(plans, state, persist, root, smi)
    commands = [c for p in plans for c in p.commands]
    changed = bool(commands) or any(f.changed for f in files) or wants_before != wants_after
    result: dict = {'changed': changed}
    if diff:
        before_text = ''.join('GPU %d %s: %s\n' % (p.row.index, p.row.bus_id, ', '.join(p.before) or 'no instance')
                              for p in plans)
        after_text = ''.join('GPU %d %s: %s\n' % (p.row.index, p.row.bus_id, _layout_text(p)) for p in plans)
        result['diff'] = [{'before_header': 'MIG layout', 'after_header': 'MIG layout', 'before': before_text,
                           'after': after_text}] + [f.diff() for f in files if f.changed]
    pending: list[int] = []
    if not check_mode and changed:
        for p in plans:
            pending += _apply_gpu(run_cmd, smi, p, warnings)
        # the layout as made (the names as the GPU lists them) is what is persisted
        files, wants_before, wants_after = _files(plans, state, persist, root, smi)
        _persist(files, root, wants_before, wants_after)
        if daemon_reload is not None and any(f.changed and f.path.endswith('.service') for f in files):
            daemon_reload()
        commands = [c for p in plans for c in p.commands]
    result.update({
        'commands': commands,
        'files': [f.path for f in files if f.changed] + ([rooted(root, WANTS_PATH)] if wants_before != wants_after else []),
        'unit': UNIT_NAME if persist and wants_after else None,
    })
    result['reboot_required'] = bool(pending)
    gpus_out = []
    for p in plans:
        instances = p.instances
        if not check_mode and p.commands and p.row.index not in pending and p.wanted is not None:
            instances = _read_instances(run_cmd, smi, p.row.index)
        gpus_out.append({'index': p.row.index, 'bus_id': p.row.bus_id, 'name': p.row.name,
                         'mig': 'disabled' if p.wanted is None else ('pending' if p.row.index in pending else 'enabled'),
                         'layout': p.wanted if p.wanted is not None else [],
                         'instances': [{'gi_id': x.gi_id, 'profile': x.profile, 'profile_id': x.profile_id,
                                        'placement': x.placement, 'compute_instances': x.compute} for x in instances]})
    result['gpus'] = gpus_out
    return result, warnings
