"""kernel_cmdline through ansible-playbook: check, real, repeat, repeat in check mode; diff; failures.

The target is a directory root holding a Debian /etc/default/grub with intel_iommu=off; the
running command line comes from a simulated kernel tree.  update-grub is a logging stand-in
inside the root, reached through a stand-in chroot on PATH (the module runs a prefix root's tools
inside it); the running host's update-grub on PATH is a stand-in too, that must never be called.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import VENV_BIN, playbook_json
from tests.sim import simkernel

GRUB = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=off"\nGRUB_CMDLINE_LINUX=""\n'
DROPIN = 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg'

PLAY = '''
- name: kernel_cmdline
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Set the IOMMU arguments
      fleetgpu.passthrough.kernel_cmdline:
        add: "{{ add }}"
        remove: "{{ remove | default([]) }}"
        root: "{{ root }}"
        sysfs_root: "{{ sysfs_root }}"
      register: result
'''


FAKE_CHROOT = '#!/bin/sh\nroot="$1"; shift\nprog="$1"; shift\nexec "$root$prog" "$@"\n'


@pytest.fixture()
def target(tmp_path: Path) -> dict:
    root = tmp_path / 'root'
    (root / 'etc/default/grub.d').mkdir(parents=True)
    (root / 'etc/default/grub').write_text(GRUB)
    (root / 'usr/sbin').mkdir(parents=True)
    fakebin = tmp_path / 'bin'
    fakebin.mkdir()
    log = tmp_path / 'log'
    log.write_text('')
    host_log = tmp_path / 'host.log'
    host_log.write_text('')
    (root / 'usr/sbin/update-grub').write_text('#!/bin/sh\necho update-grub >> "%s"\nexit ${GRUB_RC:-0}\n' % log)
    (root / 'usr/sbin/update-grub').chmod(0o755)
    (fakebin / 'chroot').write_text(FAKE_CHROOT)
    (fakebin / 'chroot').chmod(0o755)
    # the running host's own tools: stand-ins that only log, to prove they are never called
    for tool in ('update-grub', 'grub-mkconfig', 'grubby', 'kernel-install', 'kernelstub', 'proxmox-boot-tool'):
        (fakebin / tool).write_text('#!/bin/sh\necho "%s $*" >> "%s"\n' % (tool, host_log))
        (fakebin / tool).chmod(0o755)
    sysfs = simkernel.materialize('identical_pair', str(tmp_path / 'kernel'))
    return {'root': root, 'sysfs': sysfs, 'log': log, 'host_log': host_log,
            'env': {'PATH': '%s:%s:%s' % (fakebin, VENV_BIN, os.environ.get('PATH', ''))}}


def _run(run_playbook, target: dict, args: tuple = (), env: dict | None = None, **extra: object):
    ev = {'root': str(target['root']), 'sysfs_root': target['sysfs'], 'add': ['intel_iommu=on', 'iommu=pt']}
    ev.update(extra)
    proc = run_playbook(PLAY, extra_vars=ev, args=args, env=dict(target['env'], **(env or {})))
    task = [t for t in playbook_json(proc)['tasks'] if t['task'] == 'Set the IOMMU arguments'][0]
    return proc, task


def test_four_runs(run_playbook, target: dict) -> None:
    results = []
    for args in (('--check', '--diff'), ('--diff',), (), ('--check',)):
        proc, task = _run(run_playbook, target, args)
        assert proc.returncode == 0, task
        results.append(task['result'])
        if args[:1] == ('--check',) and len(results) == 1:
            assert not (target['root'] / DROPIN).exists()
            assert target['log'].read_text() == ''
    assert [r['changed'] for r in results] == [True, True, False, False]
    check, real = results[0], results[1]
    # check mode predicted exactly what the real run did
    # grub puts GRUB_CMDLINE_LINUX (where the additions go) before GRUB_CMDLINE_LINUX_DEFAULT
    assert check['cmdline_after'] == real['cmdline_after'] == 'intel_iommu=on iommu=pt quiet'
    assert real['cmdline_before'] == 'quiet intel_iommu=off'
    assert real['bootloader'] == 'grub'
    # diff: the arguments, then the drop-in file
    diff = real['diff']
    assert diff[0]['before'].strip() == 'quiet intel_iommu=off' and diff[0]['after'].strip() == 'intel_iommu=on iommu=pt quiet'
    assert diff[1]['after_header'].endswith(DROPIN) and 'iommu=pt' in diff[1]['after']
    # the simulated kernel runs with intel_iommu=on but not iommu=pt
    assert real['reboot_required'] is True and real['missing'] == ['iommu=pt']
    assert target['log'].read_text().splitlines() == ['update-grub']
    assert target['host_log'].read_text() == ''


def test_failed_update_grub_fails_and_restores(run_playbook, target: dict) -> None:
    proc, task = _run(run_playbook, target, env={'GRUB_RC': '3'})
    assert proc.returncode != 0 and task['status'] == 'failed'
    assert 'update-grub failed with exit code 3' in task['result']['msg']
    assert 'previous configuration was restored' in task['result']['msg']
    assert not (target['root'] / DROPIN).exists()


@pytest.mark.parametrize('extra, fragment', [
    ({'add': ['intel_iommu=on', 'intel_iommu=off']}, 'contradiction'),
    ({'add': ['iommu=pt'], 'remove': ['iommu']}, 'both added and removed'),
    ({'add': ['two words']}, 'more than one kernel argument'),
    ({'bootloader': 'lilo'}, 'value of bootloader must be one of'),
])
def test_bad_input(run_playbook, target: dict, extra: dict, fragment: str) -> None:
    play_extra = dict(extra)
    if 'bootloader' in play_extra:
        # pass through module args by a second play text
        play = PLAY.replace('root: "{{ root }}"', 'root: "{{ root }}"\n        bootloader: "{{ bootloader }}"')
        ev = {'root': str(target['root']), 'sysfs_root': target['sysfs'], 'add': ['iommu=pt']}
        ev.update(play_extra)
        proc = run_playbook(play, extra_vars=ev, env=target['env'])
        task = [t for t in playbook_json(proc)['tasks'] if t['task'] == 'Set the IOMMU arguments'][0]
    else:
        proc, task = _run(run_playbook, target, **play_extra)
    assert proc.returncode != 0
    assert fragment in task['result']['msg']
    assert not (target['root'] / DROPIN).exists()


def test_prefix_root_without_the_tool_never_runs_the_hosts_tool(run_playbook, target: dict) -> None:
    (target['root'] / 'usr/sbin/update-grub').unlink()
    proc, task = _run(run_playbook, target)
    assert proc.returncode == 0, task
    result = task['result']
    assert result['changed'] is True and (target['root'] / DROPIN).exists()
    assert result['skipped_commands'] == [['update-grub']] and result['commands'] == []
    assert any('not run: update-grub' in w for w in result.get('warnings', []))
    assert target['host_log'].read_text() == '' and target['log'].read_text() == ''


UNDO_PLAY = PLAY.replace('add: "{{ add }}"', 'add: "{{ add }}"\n        undo: "{{ undo | default(false) }}"')


def _undo(run_playbook, target: dict, args: tuple = ()) -> dict:
    ev = {'root': str(target['root']), 'sysfs_root': target['sysfs'], 'add': [], 'undo': True,
          'remove': ['intel_iommu', 'iommu']}
    proc = run_playbook(UNDO_PLAY, extra_vars=ev, args=args, env=target['env'])
    task = [t for t in playbook_json(proc)['tasks'] if t['task'] == 'Set the IOMMU arguments'][0]
    assert proc.returncode == 0, task
    return task['result']


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob('*')) if p.is_file()}


def test_undo_on_a_host_never_changed_keeps_the_admins_arguments(run_playbook, target: dict) -> None:
    own = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"\n'
    (target['root'] / 'etc/default/grub').write_text(own)
    before = _tree(target['root'])
    result = _undo(run_playbook, target)
    assert result['changed'] is False and result['reboot_required'] is False
    assert result['files'] == [] and result['cmdline_after'] == 'intel_iommu=on iommu=pt quiet'
    assert _tree(target['root']) == before
    assert target['log'].read_text() == ''
    # converging over the admin's own arguments records nothing, so the undo still leaves them
    proc, task = _run(run_playbook, target)
    assert task['result']['changed'] is False and task['result']['recorded'] == {'added': [], 'displaced': []}
    assert _undo(run_playbook, target)['changed'] is False
    assert _tree(target['root']) == before


def test_undo_gives_back_exactly_what_was_there(run_playbook, target: dict) -> None:
    own = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=off"\nGRUB_CMDLINE_LINUX="iommu=pt"\n'
    (target['root'] / 'etc/default/grub').write_text(own)
    before = _tree(target['root'])
    proc, task = _run(run_playbook, target)
    assert task['result']['changed'] is True
    assert task['result']['recorded'] == {'added': ['intel_iommu=on'], 'displaced': ['intel_iommu=off']}
    assert (target['root'] / 'var/lib/fleetgpu-passthrough/kernel_cmdline.json').exists()
    # check mode predicts the undo and writes nothing
    after_present = _tree(target['root'])
    check = _undo(run_playbook, target, ('--check',))
    assert check['changed'] is True and _tree(target['root']) == after_present
    result = _undo(run_playbook, target)
    assert result['changed'] is True
    assert result['cmdline_after'] == 'iommu=pt quiet intel_iommu=off'
    # the simulated kernel runs with intel_iommu=on: it lingers until the next boot
    assert result['reboot_required'] is True and result['lingering'] == ['intel_iommu=on']
    assert _tree(target['root']) == before, 'a managed file (drop-in, record, .bak) is left'
    assert _undo(run_playbook, target)['changed'] is False
