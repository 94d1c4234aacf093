"""A fake ``nvidia-smi`` for the tests of gpu_mig: the recorded command interface of the MIG commands.

The project's test machines have no NVIDIA GPU. This stand-in answers the commands gpu_mig uses
(``--query-gpu`` in CSV, ``-i IDX -mig 0|1``, and ``mig -i IDX`` with ``-lgip``, ``-lgi``, ``-lci``,
``-cgi LIST [-C]``, ``-dci``, ``-dgi``), prints its tables in the layout NVIDIA documents for the
real tool, and keeps the GPUs' state in a directory (``state.json``); every call is appended to
``calls.log`` as a JSON argument list. Placement is simplified: eight memory slices, seven compute
slices, an instance of size N starting at a multiple of N. It is written for these tests; no text
of the real tool's is copied.

:func:`install` writes an executable ``nvidia-smi`` into a directory, bound to a state directory.
"""
from __future__ import annotations

import json
import os
import stat
import sys

# the profiles of an 80 GB A100 as NVIDIA's MIG user guide lists them: name, id, compute slices,
# memory slices (of 8), GiB
A100_80GB = [
    ('1g.10gb', 19, 1, 1, 9.75), ('1g.10gb+me', 20, 1, 1, 9.75), ('1g.20gb', 15, 1, 2, 19.62),
    ('2g.20gb', 14, 2, 2, 19.62), ('3g.40gb', 9, 3, 4, 39.50), ('4g.40gb', 5, 4, 4, 39.50), ('7g.80gb', 0, 7, 8, 79.25),
]
MAX_INSTANCES = {'1g.10gb': 7, '1g.10gb+me': 1, '1g.20gb': 4, '2g.20gb': 3, '3g.40gb': 2, '4g.40gb': 1, '7g.80gb': 1}
CI_PROFILE = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4}


def default_gpus() -> list[dict]:
    return [
        {'index': 0, 'bus_id': '00000000:41:00.0', 'name': 'NVIDIA A100 80GB PCIe', 'mig': False, 'pending': False,
         'busy': False, 'instances': []},
        {'index': 1, 'bus_id': '00000000:C1:00.0', 'name': 'NVIDIA A100 80GB PCIe', 'mig': False, 'pending': False,
         'busy': False, 'instances': []},
        {'index': 2, 'bus_id': '00000000:3B:00.0', 'name': 'Tesla T4', 'mig': None, 'pending': False, 'busy': False,
         'instances': []},
    ]


def install(bin_dir: str, state_dir: str, gpus: list[dict] | None = None) -> str:
    """An executable ``nvidia-smi`` in ``bin_dir`` that keeps its state in ``state_dir``; returns its path."""
    os.makedirs(bin_dir, exist_ok=True)
    os.makedirs(state_dir, exist_ok=True)
    with open(os.path.join(state_dir, 'state.json'), 'w', encoding='utf-8') as handle:
        json.dump({'gpus': gpus if gpus is not None else default_gpus()}, handle)
    path = os.path.join(bin_dir, 'nvidia-smi')
    here = os.path.dirname(os.path.abspath(__file__))
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write('#!%s\nimport sys\nsys.path.insert(0, %r)\nimport fake_nvidia_smi\n'
                     'sys.exit(fake_nvidia_smi.main(sys.argv[1:], %r))\n' % (sys.executable, here, state_dir))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def calls(state_dir: str) -> list[list[str]]:
    try:
        with open(os.path.join(state_dir, 'calls.log'), encoding='utf-8') as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def state(state_dir: str) -> dict:
    with open(os.path.join(state_dir, 'state.json'), encoding='utf-8') as handle:
        return json.load(handle)


class _Exit(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _profile(token: str) -> tuple:
    text = token.strip()
    if text.lower().startswith('mig '):
        text = text[4:]
    for p in A100_80GB:
        if p[0] == text.lower() or (text.isdigit() and int(text) == p[1]):
            return p
    raise _Exit(2, 'Unable to create a GPU instance on GPU  0 using profile %s: Invalid Argument' % token)


def _place(gpu: dict, prof: tuple) -> int | None:
    """The start slice of a new instance of ``prof``, or None when it does not fit."""
    used = [False] * 8
    compute = 0
    count = 0
    for inst in gpu['instances']:
        for s in range(inst['start'], inst['start'] + inst['size']):
            used[s] = True
        compute += inst['slices']
        count += inst['profile_id'] == prof[1]
    if compute + prof[2] > 7 or count >= MAX_INSTANCES[prof[0]]:
        return None
    size = prof[3]
    for start in range(0, 8 - size + 1, size):
        if not any(used[start:start + size]):
            return start
    return None


def _table(title: str, head: list[str], rows: list[str]) -> str:
    width = max(len(x) for x in [title] + head + rows) + 2
    rule = '+' + '-' * width + '+'
    out = [rule, '| %-*s|' % (width - 1, title)]
    out += ['| %-*s|' % (width - 1, h) for h in head]
    out.append('|' + '=' * width + '|')
    out += ['| %-*s|' % (width - 1, r) for r in rows]
    out.append(rule)
    return '\n'.join(out) + '\n'


def _run(argv: list[str], gpus: list[dict]) -> str:
    if argv and argv[0].startswith('--query-gpu='):
        lines = []
        for g in gpus:
            if g['mig'] is None:
                mode = ['[N/A]', '[N/A]']
            else:
                cur = 'Enabled' if g['mig'] else 'Disabled'
                mode = [cur, 'Enabled' if (g['mig'] or g['pending']) else 'Disabled']
            lines.append(', '.join([str(g['index']), g['bus_id'], g['name']] + mode))
        return '\n'.join(lines) + '\n'
    sub = argv[0] == 'mig'
    args = argv[1:] if sub else argv
    if '-i' not in args:
        raise _Exit(2, 'this fake needs -i')
    key = args[args.index('-i') + 1].lower()
    gpu = next((g for g in gpus if (key.isdigit() and g['index'] == int(key)) or (not key.isdigit() and g['bus_id'].lower() == key)),
               None)
    if gpu is None:
        raise _Exit(6, 'No devices were found')
    if not sub and '-mig' in args:
        on = args[args.index('-mig') + 1] == '1'
        if gpu['mig'] is None:
            raise _Exit(3, 'Unable to %s MIG Mode for GPU %s: Not Supported' % ('enable' if on else 'disable', gpu['bus_id']))
        if not on and gpu['instances']:
            raise _Exit(19, 'Unable to disable MIG Mode for GPU %s: In use by another client' % gpu['bus_id'])
        if on and gpu['busy'] and not gpu['mig']:
            gpu['pending'] = True
            return ('Warning: MIG mode is in pending enable state for GPU %s: a process still uses the GPU; reset it or '
                    'reboot\nAll done.\n' % gpu['bus_id'])
        gpu['mig'], gpu['pending'] = on, False
        return '%s MIG Mode for GPU %s\nAll done.\n' % ('Enabled' if on else 'Disabled', gpu['bus_id'])
    if not gpu['mig']:
        raise _Exit(6, 'No MIG-enabled devices found.')
    idx = gpu['index']
    if '-lgip' in args:
        rows = []
        for name, pid, slices, mem, gib in A100_80GB:
            free = 0
            trial = {'instances': list(gpu['instances'])}
            while _place(trial, (name, pid, slices, mem, gib)) is not None and free < 8:
                start = _place(trial, (name, pid, slices, mem, gib))
                trial['instances'].append({'start': start, 'size': mem, 'slices': slices, 'profile_id': pid})
                free += 1
            rows.append('%3d  MIG %-14s %3d    %2d/%-2d      %6.2f      No     %3d     %d     %d' % (
                idx, name, pid, free, MAX_INSTANCES[name], gib, 14 * slices, slices // 2, 0))
            rows.append('%60s  %d     %d     %d' % ('', slices, 0, 1 if name.endswith('+me') else 0))
        return _table('GPU instance profiles:', ['GPU   Name             ID    Instances   Memory     P2P    SM    DEC   ENC',
                                                 '                              Free/Total   GiB              CE    JPEG  OFA'],
                      rows)
    if '-lgi' in args:
        if not gpu['instances']:
            raise _Exit(6, 'No GPU instances found: Not Found')
        rows = ['%3d  MIG %-14s %5d    %5d        %d:%d' % (idx, i['name'], i['profile_id'], i['gi_id'], i['start'], i['size'])
                for i in gpu['instances']]
        return _table('GPU instances:', ['GPU   Name             Profile  Instance   Placement',
                                         '                         ID       ID       Start:Size'], rows)
    if '-lci' in args:
        line = '%3d    %3d       MIG %-14s %3d       %3d          0:%d'
        rows = [line % (idx, i['gi_id'], i['name'], CI_PROFILE[i['slices']], ci, i['slices'])
                for i in gpu['instances'] for ci in i['ci']]
        if not rows:
            raise _Exit(6, 'No compute instances found: Not Found')
        return _table('Compute instances:', ['GPU     GPU       Name             Profile   Instance   Placement',
                                             '      Instance                       ID        ID       Start:Size',
                                             '        ID'], rows)
    if '-cgi' in args:
        out = []
        for token in args[args.index('-cgi') + 1].split(','):
            prof = _profile(token)
            start = _place(gpu, prof)
            if start is None:
                raise _Exit(2, ''.join(out) + 'Unable to create a GPU instance on GPU %2d using profile %s: Insufficient Resources\n'
                            'Failed to create GPU instances: Insufficient Resources' % (idx, token))
            gi_id = max([i['gi_id'] for i in gpu['instances']] + [0]) + 1
            inst = {'gi_id': gi_id, 'name': prof[0], 'profile_id': prof[1], 'slices': prof[2], 'start': start,
                    'size': prof[3], 'ci': []}
            gpu['instances'].append(inst)
            out.append('Successfully created GPU instance ID %2d on GPU %2d using profile MIG %s (ID %2d)\n'
                       % (gi_id, idx, prof[0], prof[1]))
            if '-C' in args:
                inst['ci'].append(0)
                out.append('Successfully created compute instance ID %2d on GPU %2d GPU instance ID %2d using profile '
                           'MIG %s (ID %2d)\n' % (0, idx, gi_id, prof[0], CI_PROFILE[prof[2]]))
        return ''.join(out)
    if '-dci' in args:
        found = [(i, ci) for i in gpu['instances'] for ci in i['ci']]
        if not found:
            raise _Exit(6, 'No compute instances found: Not Found')
        if gpu['busy']:
            raise _Exit(19, 'Unable to destroy compute instance ID  0 from GPU %2d GPU instance ID %2d: In use by another client'
                        % (idx, found[0][0]['gi_id']))
        out = []
        for inst, ci in found:
            out.append('Successfully destroyed compute instance ID %2d from GPU %2d GPU instance ID %2d\n' % (ci, idx, inst['gi_id']))
            inst['ci'] = []
        return ''.join(out)
    if '-dgi' in args:
        if not gpu['instances']:
            raise _Exit(6, 'No GPU instances found: Not Found')
        if any(i['ci'] for i in gpu['instances']):
            raise _Exit(19, 'Unable to destroy GPU instance ID %2d from GPU %2d: In use by another client'
                        % (gpu['instances'][0]['gi_id'], idx))
        out = ''.join('Successfully destroyed GPU instance ID %2d from GPU %2d\n' % (i['gi_id'], idx) for i in gpu['instances'])
        gpu['instances'] = []
        return out
    raise _Exit(2, 'this fake does not know %s' % ' '.join(argv))


def main(argv: list[str], state_dir: str) -> int:
    with open(os.path.join(state_dir, 'calls.log'), 'a', encoding='utf-8') as handle:
        handle.write(json.dumps(argv) + '\n')
    data = state(state_dir)
    try:
        text = _run(argv, data['gpus'])
    except _Exit as exc:
        # the failure may follow instances already created: the state keeps them, as the real tool does
        with open(os.path.join(state_dir, 'state.json'), 'w', encoding='utf-8') as handle:
            json.dump(data, handle)
        sys.stdout.write(exc.text + '\n')
        return exc.code
    with open(os.path.join(state_dir, 'state.json'), 'w', encoding='utf-8') as handle:
        json.dump(data, handle)
    sys.stdout.write(text)
    return 0
