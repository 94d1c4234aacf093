"""gpu_partition through real ansible-playbook runs, against the FUSE kernel mounted by the test.

The collection is built and installed the way users do (fixture installed_collection). One play sets 4 VFs on
the simulated SR-IOV GPU (persisted with the udev rule) and two mediated devices on the mbochs parent (sysfs
only: the simulated host has no mdevctl); it runs in check mode, for real, again, and again in check mode; then
gpu_facts reports what was made; then the restore removes it all. Bad input fails the task with the input named,
no traceback, and nothing changed.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'sim'))
import fusekernel  # noqa: E402  pylint: disable=wrong-import-position

from conftest import playbook_json  # noqa: E402

PF = '0000:03:00.0'
RULE = 'etc/udev/rules.d/70-fleetgpu-passthrough-sriov-0000:03:00.0.rules'
RECORD = 'var/lib/fleetgpu-passthrough/partition.json'

PLAY = '''
- name: Split the GPUs
  hosts: localhost
  gather_facts: false
  module_defaults:
    fleetgpu.passthrough.gpu_partition:
      sysfs_root: "{{ sysfs_root }}"
      root: "{{ host_root }}"
      timeout: 3
  tasks:
    - name: VFs
      fleetgpu.passthrough.gpu_partition:
        parent: "03:00.0"
        sriov_numvfs: "{{ numvfs | default(4) }}"
        state: "{{ part_state | default('present') }}"
    - name: Mediated devices
      fleetgpu.passthrough.gpu_partition:
        parent: mbochs
        persist: "{{ persist | default(false) }}"
        state: "{{ part_state | default('present') }}"
        mdevs: "{{ mdevs | default(omit) }}"
'''

MDEVS = [{'type': 'mbochs-medium', 'name': 'desk1-0'}, {'type': 'mbochs-2', 'name': 'desk2-0'}]

FACTS = '''
- name: Facts
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Read
      fleetgpu.passthrough.gpu_facts:
        sysfs_root: "{{ sysfs_root }}"
'''


FAKE_CHROOT = '#!/bin/sh\nroot="$1"; shift\nprog="$1"; shift\nexec "$root$prog" "$@"\n'

# mdevctl as far as gpu_partition uses it: definitions in ROOT/etc/mdevctl.d/PARENT/UUID, start and stop
# through the simulated kernel's sysfs, every call logged to ROOT/mdevctl.log
FAKE_MDEVCTL = """#!%(python)s
import json, os, sys
ROOT, SYS = %(root)r, %(sysfs)r
args = sys.argv[1:]
with open(os.path.join(ROOT, 'mdevctl.log'), 'a') as log:
    log.write(' '.join(args) + '\\n')
opts = dict(zip(args[1::2], args[2::2]))
uid = opts['--uuid']
defs = os.path.join(ROOT, 'etc/mdevctl.d')
def find():
    for parent in os.listdir(defs):
        if os.path.exists(os.path.join(defs, parent, uid)):
            return parent, json.load(open(os.path.join(defs, parent, uid)))
    sys.exit('mdevctl: no definition of ' + uid)
if args[0] == 'define':
    os.makedirs(os.path.join(defs, opts['--parent']), exist_ok=True)
    with open(os.path.join(defs, opts['--parent'], uid), 'w') as out:
        json.dump({'mdev_type': opts['--type'], 'start': 'auto' if '--auto' in args else 'manual', 'attrs': []}, out)
elif args[0] == 'start':
    parent, conf = find()
    with open(os.path.join(SYS, 'class/mdev_bus', parent, 'mdev_supported_types', conf['mdev_type'], 'create'), 'w') as f:
        f.write(uid)
elif args[0] == 'stop':
    with open(os.path.join(SYS, 'bus/mdev/devices', uid, 'remove'), 'w') as f:
        f.write('1')
elif args[0] == 'undefine':
    parent, _conf = find()
    os.unlink(os.path.join(defs, parent, uid))
"""


def fake_mdevctl(root: Path, sysfs_root: str, bindir: Path) -> dict[str, str]:
    """A stand-in mdevctl inside ``root`` and a stand-in chroot in ``bindir``; the environment that finds them."""
    (root / 'usr/sbin').mkdir(parents=True, exist_ok=True)
    tool = root / 'usr/sbin/mdevctl'
    tool.write_text(FAKE_MDEVCTL % {'python': sys.executable, 'root': str(root), 'sysfs': sysfs_root})
    tool.chmod(0o755)
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / 'chroot').write_text(FAKE_CHROOT)
    (bindir / 'chroot').chmod(0o755)
    return {'PATH': '%s:%s' % (bindir, os.environ.get('PATH', ''))}


@pytest.fixture()
def kernel(tmp_path: Path) -> Iterator[dict]:
    if not os.path.exists('/dev/fuse'):
        pytest.fail('the behaving simulated kernel needs /dev/fuse')
    with fusekernel.simulated('partition', tmp_path / 'k') as root:
        # the host's root is the parent of the sysfs root, so gpu_facts finds the record and the rule there
        yield {'sysfs_root': root, 'host_root': os.path.dirname(root), 'mdevs': MDEVS}


def results(proc) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    doc = playbook_json(proc)
    return {t['task']: t for t in doc['tasks'] if t['action'].endswith(('gpu_partition', 'gpu_facts'))}


def vfs(root: str) -> list[str]:
    d = os.path.join(root, 'bus/pci/devices', PF)
    return sorted(n for n in os.listdir(d) if n.startswith('virtfn'))


def test_check_apply_repeat_facts_restore(run_playbook, kernel: dict) -> None:  # type: ignore[no-untyped-def]
    root, host = kernel['sysfs_root'], kernel['host_root']
    backing = fusekernel.backing_of(root)
    before = fusekernel.snapshot(backing)

    # 1. check mode with diff: the exact plan, nothing written
    proc = run_playbook(PLAY, extra_vars=kernel, args=('--check', '--diff'))
    assert proc.returncode == 0, proc.stdout[-3000:]
    res = results(proc)
    vf_plan, md_plan = res['VFs']['result'], res['Mediated devices']['result']
    assert vf_plan['changed'] and [v['address'] for v in vf_plan['vfs']] == \
        ['0000:03:00.1', '0000:03:00.2', '0000:03:00.3', '0000:03:00.4']
    assert vf_plan['files'] == [os.path.join(host, RULE)]
    diff = vf_plan['diff']
    assert 'sriov_numvfs: 0' in diff[0]['before'] and 'sriov_numvfs: 4' in diff[0]['after']
    assert 'ATTR{sriov_numvfs}="4"' in diff[1]['after'] and diff[1]['before'] == ''
    planned = [(m['type'], m['type_name'], m['state'], m['persistent']) for m in md_plan['mdevs']]
    assert planned == [('mbochs-2', 'mbochs-medium', 'created', False)] * 2
    assert fusekernel.snapshot(backing) == before and fusekernel.ops(backing) == []
    assert not os.path.exists(os.path.join(host, RULE)) and not os.path.exists(os.path.join(host, RECORD))

    # 2. the change: what check mode said
    proc = run_playbook(PLAY, extra_vars=kernel)
    assert proc.returncode == 0, proc.stdout[-3000:]
    res = results(proc)
    assert res['VFs']['result']['changed'] and res['Mediated devices']['result']['changed']
    assert [v['address'] for v in res['VFs']['result']['vfs']] == [v['address'] for v in vf_plan['vfs']]
    assert len(vfs(root)) == 4
    made = [m['uuid'] for m in res['Mediated devices']['result']['mdevs']]
    assert made == [m['uuid'] for m in md_plan['mdevs']]
    assert sorted(os.listdir(os.path.join(root, 'bus/mdev/devices'))) == sorted(made)
    avail = os.path.join(root, 'class/mdev_bus/mbochs/mdev_supported_types/mbochs-2/available_instances')
    assert Path(avail).read_text().strip() == '14'
    assert 'ATTR{sriov_numvfs}="4"' in Path(host, RULE).read_text()
    assert sorted(json.loads(Path(host, RECORD).read_text())['mdevs']) == sorted(made)

    # 3. repeat, and repeat in check mode: nothing to do
    for args in ((), ('--check', '--diff')):
        proc = run_playbook(PLAY, extra_vars=kernel, args=args)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert playbook_json(proc)['stats']['localhost']['changed'] == 0
        assert {m['state'] for m in results(proc)['Mediated devices']['result']['mdevs']} == {'kept'}

    # 4. gpu_facts reports the VFs, the persisted count and the collection's mdevs
    proc = run_playbook(FACTS, extra_vars=kernel)
    assert proc.returncode == 0, proc.stdout[-3000:]
    facts = results(proc)['Read']['result']['ansible_facts']['gpu_passthrough']
    pf = [p for p in facts['sriov_parents'] if p['address'] == PF][0]
    assert pf['numvfs'] == 4 and pf['persisted'] == 4 and len(pf['vfs']) == 4
    assert all(v['driver'] == 'vfio-pci' and v['held_by'] is None for v in pf['vfs'])
    mbochs = [p for p in facts['mdev_parents'] if p['parent'] == 'mbochs'][0]
    assert sorted(m['uuid'] for m in mbochs['mdevs']) == sorted(made)
    assert all(m['collection'] and not m['persistent'] and m['type_name'] == 'mbochs-medium' for m in mbochs['mdevs'])
    assert [t['available_instances'] for t in mbochs['types'] if t['type'] == 'mbochs-2'] == [14]

    # 5. restore: the collection's VFs and mdevs go, and the rule and the record with them
    restore = dict(kernel, part_state='absent')
    restore.pop('mdevs')
    proc = run_playbook(PLAY, extra_vars=restore)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert vfs(root) == [] and os.listdir(os.path.join(root, 'bus/mdev/devices')) == []
    assert not os.path.exists(os.path.join(host, RULE)) and not os.path.exists(os.path.join(host, RECORD))
    assert Path(avail).read_text().strip() == '16'
    proc = run_playbook(PLAY, extra_vars=restore)
    assert playbook_json(proc)['stats']['localhost']['changed'] == 0


@pytest.mark.parametrize('extra, task, words', [
    ({'mdevs': [{'type': 'GRID T4-4Q'}]}, 'Mediated devices',
     ["type 'GRID T4-4Q' is not offered by mbochs", 'mbochs-1 (mbochs-small)', 'mbochs-3 (mbochs-large)']),
    ({'mdevs': [{'type': 'mbochs-3', 'name': str(i)} for i in range(5)]}, 'Mediated devices',
     ['5 new mediated device(s) of type mbochs-3 (mbochs-large)', 'available_instances is 4']),
    ({'persist': True}, 'Mediated devices', ['install the package mdevctl', 'persist=false']),
    ({'numvfs': 9}, 'VFs', ['sriov_numvfs 9 is over the capacity of 0000:03:00.0: sriov_totalvfs is 8']),
])
def test_bad_input_fails_naming_it_and_changes_nothing(run_playbook, kernel: dict, extra: dict,  # type: ignore[no-untyped-def]
                                                       task: str, words: list[str]) -> None:
    backing = fusekernel.backing_of(kernel['sysfs_root'])
    play = PLAY
    if task == 'Mediated devices':   # only the failing task: the VFs task would change the kernel
        play = PLAY.replace('    - name: VFs\n', '    - name: VFs\n      when: false\n')
    before = fusekernel.snapshot(backing)
    proc = run_playbook(play, extra_vars=dict(kernel, **extra))
    assert proc.returncode != 0
    res = results(proc)[task]
    assert res['status'] == 'failed', res
    for word in words:
        assert word in res['result']['msg'], res['result']['msg']
    assert 'Traceback' not in json.dumps(res['result'])
    assert fusekernel.snapshot(backing) == before
    assert not os.path.exists(os.path.join(kernel['host_root'], RULE))


def test_persisted_mdevs_through_mdevctl_inside_the_root(run_playbook, kernel: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / 'hostroot'
    env = fake_mdevctl(root, kernel['sysfs_root'], tmp_path / 'bin')
    ev = dict(kernel, host_root=str(root), persist=True, mdevs=[{'type': 'mbochs-large', 'name': 'vm1-0'}])
    play = PLAY.replace('    - name: VFs\n', '    - name: VFs\n      when: false\n')
    proc = run_playbook(play, extra_vars=ev, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    res = results(proc)['Mediated devices']['result']
    uid = res['mdevs'][0]['uuid']
    assert res['commands'] == [['mdevctl', 'define', '--uuid', uid, '--parent', 'mbochs', '--type', 'mbochs-3', '--auto'],
                               ['mdevctl', 'start', '--uuid', uid]]
    assert res['mdevs'][0]['persistent'] and os.path.exists(root / 'etc/mdevctl.d/mbochs' / uid)
    assert os.listdir(os.path.join(kernel['sysfs_root'], 'bus/mdev/devices')) == [uid]
    proc = run_playbook(play, extra_vars=ev, env=env)
    assert playbook_json(proc)['stats']['localhost']['changed'] == 0
    proc = run_playbook(play, extra_vars=dict(ev, part_state='absent'), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (root / 'mdevctl.log').read_text().splitlines()[-2:] == ['stop --uuid %s' % uid, 'undefine --uuid %s' % uid]
    assert os.listdir(os.path.join(kernel['sysfs_root'], 'bus/mdev/devices')) == []
    assert not os.path.exists(root / 'etc/mdevctl.d/mbochs' / uid)
