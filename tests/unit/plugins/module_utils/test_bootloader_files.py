"""Managed files (module_utils/_files.py): atomic replace, previous version kept, modes, revert."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files


def test_write_keeps_previous_and_sets_mode(tmp_path: Path) -> None:
    path = tmp_path / 'etc' / 'x.conf'
    _files.write(str(path), 'one\n')
    assert path.read_text() == 'one\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not Path(str(path) + _files.BACKUP_SUFFIX).exists()
    _files.write(str(path), 'two\n')
    assert path.read_text() == 'two\n'
    assert Path(str(path) + _files.BACKUP_SUFFIX).read_text() == 'one\n'
    if os.geteuid() == 0:
        assert path.stat().st_uid == 0 and path.stat().st_gid == 0
    # no temporary file is left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ['x.conf', 'x.conf' + _files.BACKUP_SUFFIX]


def test_script_mode(tmp_path: Path) -> None:
    path = tmp_path / 'hook'
    _files.write(str(path), '#!/bin/sh\n', 0o755)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


@pytest.mark.parametrize('before, after', [(None, 'new\n'), ('old\n', 'new\n'), ('old\n', None)])
def test_plan_apply_revert(tmp_path: Path, before: str | None, after: str | None) -> None:
    path = tmp_path / 'a.conf'
    if before is not None:
        path.write_text(before)
    change = _files.plan(str(path), after)
    assert change.changed
    diff = change.diff()
    assert diff['before'] == (before or '') and diff['after'] == (after or '')
    change.apply()
    assert (path.read_text() if path.exists() else None) == after
    change.revert()
    assert (path.read_text() if path.exists() else None) == before


def test_unchanged_plan_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / 'a.conf'
    path.write_text('same\n')
    change = _files.plan(str(path), 'same\n')
    assert not change.changed
    change.apply()
    assert not Path(str(path) + _files.BACKUP_SUFFIX).exists()


def test_removal_leaves_no_backup_behind(tmp_path: Path) -> None:
    """Undoing the configuration removes the managed file and any backup an earlier run kept."""
    path = tmp_path / 'modprobe.d' / 'fleetgpu-passthrough.conf'
    _files.write(str(path), 'one\n')
    _files.write(str(path), 'two\n')
    assert Path(str(path) + _files.BACKUP_SUFFIX).exists()
    change = _files.plan(str(path), None)
    change.apply()
    assert sorted(p.name for p in path.parent.iterdir()) == []
    change.revert()
    assert path.read_text() == 'two\n'


def test_removal_in_own_directory_leaves_nothing(tmp_path: Path) -> None:
    own = tmp_path / 'etc' / 'fleetgpu-passthrough'
    own.mkdir(parents=True)
    (own / 'list').write_text('x\n')
    change = _files.plan(str(own / 'list'), None)
    change.apply()
    assert not own.exists()
    change.revert()
    assert (own / 'list').read_text() == 'x\n'


def test_rooted() -> None:
    assert _files.rooted('/', '/etc/x') == '/etc/x'
    assert _files.rooted('/tmp/r', '/etc/x') == '/tmp/r/etc/x'
    with pytest.raises(_files.FileError, match='must be absolute'):
        _files.rooted('/tmp/r', 'etc/x')


def test_unwritable_directory_is_a_file_error(tmp_path: Path) -> None:
    blocker = tmp_path / 'etc'
    blocker.write_text('a file where a directory should be')
    with pytest.raises(_files.FileError, match='cannot write'):
        _files.write(str(blocker / 'x.conf'), 'x')
