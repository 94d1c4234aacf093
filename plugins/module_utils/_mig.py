# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""NVIDIA MIG (Multi-Instance GPU) through ``nvidia-smi``: the argument lists, the reading of its output,
and the layout a GPU is asked for.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Only ``nvidia-smi`` is used (argument lists, never a shell): the CSV query of the GPUs and their MIG
mode, ``-mig 0|1``, and the ``mig`` subcommand's ``-lgip`` (GPU instance profiles), ``-lgi`` (GPU
instances), ``-lci`` (compute instances), ``-cgi PROFILES -C`` (GPU instances, each with its default
compute instance), ``-dci`` and ``-dgi``.  The tables are read by their rows, as the tool prints them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError

QUERY_FIELDS = 'index,pci.bus_id,name,mig.mode.current,mig.mode.pending'
# "No GPU instances found" / "No compute instances found": the list commands exit non-zero on an empty list
_NOT_FOUND = re.compile(r'No (GPU|compute) instances? found', re.IGNORECASE)
# |   0  MIG 1g.5gb        19     7/7        4.75       No     14     0     0   |
_GIP_ROW = re.compile(r'^\|\s*(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)/(\d+)\s')
# |   0  MIG 1g.5gb       19        7          4:1     |
_GI_ROW = re.compile(r'^\|\s*(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+):(\d+)\s*\|')
# |   0      7       MIG 1g.5gb           0         0          0:1     |
_CI_ROW = re.compile(r'^\|\s*(\d+)\s+(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+):(\d+)\s*\|')
_SLICES = re.compile(r'^(\d+)g\.')


class MigError(FleetGpuError):
    """nvidia-smi is missing, a GPU cannot do MIG, or a layout cannot be made."""


@dataclass
class GpuRow:
    index: int
    bus_id: str
    name: str
    mig_current: str            # Enabled | Disabled | [N/A]
    mig_pending: str

    @property
    def supports_mig(self) -> bool:
        return self.mig_current in ('Enabled', 'Disabled')


@dataclass
class Profile:
    name: str                   # 1g.10gb (without the "MIG " of the table)
    id: int
    free: int
    total: int

    @property
    def slices(self) -> int:
        match = _SLICES.match(self.name)
        return int(match.group(1)) if match else 0


@dataclass
class Instance:
    gi_id: int
    profile: str
    profile_id: int
    placement: str
    compute: list[int] = field(default_factory=list)   # compute instance ids in it


def query_argv(smi: str) -> list[str]:
    return [smi, '--query-gpu=' + QUERY_FIELDS, '--format=csv,noheader']


def mig_mode_argv(smi: str, index: int, on: bool) -> list[str]:
    return [smi, '-i', str(index), '-mig', '1' if on else '0']


def list_argv(smi: str, index: int, what: str) -> list[str]:
    """``what``: -lgip, -lgi or -lci."""
    return [smi, 'mig', '-i', str(index), what]


def create_argv(smi: str, index: int, profiles: list[str]) -> list[str]:
    return [smi, 'mig', '-i', str(index), '-cgi', ','.join(profiles), '-C']


def destroy_argv(smi: str, index: int, what: str) -> list[str]:
    """``what``: -dci (every compute instance) or -dgi (every GPU instance)."""
    return [smi, 'mig', '-i', str(index), what]


def parse_query(text: str) -> list[GpuRow]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(',')]
        if len(cells) < 5 or not cells[0].isdigit():
            raise MigError('nvidia-smi --query-gpu printed a line that is not index, bus id, name, MIG mode: %r' % line)
        # a GPU name may hold a comma: the fields around it are fixed
        rows.append(GpuRow(index=int(cells[0]), bus_id=cells[1], name=', '.join(cells[2:-2]),
                           mig_current=cells[-2], mig_pending=cells[-1]))
    return rows


def parse_profiles(text: str) -> list[Profile]:
    out = []
    for line in text.splitlines():
        match = _GIP_ROW.match(line)
        if match:
            out.append(Profile(name=match.group(2), id=int(match.group(3)), free=int(match.group(4)),
                               total=int(match.group(5))))
    return out


def parse_instances(text: str) -> list[Instance]:
    out = []
    for line in text.splitlines():
        match = _GI_ROW.match(line)
        if match:
            out.append(Instance(gi_id=int(match.group(4)), profile=match.group(2), profile_id=int(match.group(3)),
                                placement='%s:%s' % (match.group(5), match.group(6))))
    return out


def parse_compute(text: str) -> dict[int, list[int]]:
    """GPU instance id -> its compute instance ids."""
    out: dict[int, list[int]] = {}
    for line in text.splitlines():
        match = _CI_ROW.match(line)
        if match:
            out.setdefault(int(match.group(2)), []).append(int(match.group(5)))
    return out


def not_found(rc: int, out: str, err: str) -> bool:
    """The list command found nothing (it says so and exits non-zero)."""
    return rc != 0 and bool(_NOT_FOUND.search(out + err))


def resolve_profile(wanted: str, profiles: list[Profile], where: str) -> Profile:
    """The profile a layout entry names: its name (with or without ``MIG ``, any case) or its numeric id."""
    text = str(wanted).strip()
    if text.lower().startswith('mig '):
        text = text[4:].strip()
    for p in profiles:
        if p.name.lower() == text.lower() or (text.isdigit() and int(text) == p.id):
            return p
    raise MigError('%s: GPU instance profile %r is not offered by this GPU (profiles: %s)'
                   % (where, wanted, ', '.join('%s (id %d)' % (p.name, p.id) for p in profiles) or 'none'))


def compute_slices(profiles: list[Profile]) -> int:
    """The GPU's compute slices: how many instances of its smallest (1g) profile it holds."""
    return max((p.total for p in profiles if p.slices == 1), default=0)
