"""vfio_bind through real ansible-playbook runs, against the FUSE kernel mounted by the test.

The collection is built and installed the way users do (fixture installed_collection);
the play runs check mode, the real change, a repeat, a repeat in check mode, then the
restore, and a failure for a refused request.
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
import simkernel  # noqa: E402  pylint: disable=wrong-import-position

from conftest import playbook_json  # noqa: E402

GPU, AUDIO = '0000:01:00.0', '0000:01:00.1'

PLAY = '''
- name: Bind the second GPU's group to vfio-pci
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Bind
      fleetgpu.passthrough.vfio_bind:
        devices: "{{ devices }}"
        state: "{{ bind_state | default('present') }}"
        sysfs_root: "{{ sysfs_root }}"
        journal_path: "{{ journal_path }}"
        timeout: 3
'''


@pytest.fixture()
def kernel(tmp_path: Path) -> Iterator[dict]:
    topo = simkernel.load_topology('identical_pair')
    topo['kernel']['loaded'] = ['bochs', 'snd_hda_intel', 'virtio_pci', 'lpc_ich', 'ahci', 'i801_smbus',
                                'vfio', 'vfio_iommu_type1', 'vfio_pci', 'vfio_pci_core']
    with fusekernel.simulated(topo, tmp_path / 'k') as root:
        yield {'sysfs_root': root, 'journal_path': str(tmp_path / 'state' / 'vfio_bind.json'),
               'devices': [GPU, AUDIO]}


def driver(root: str, addr: str) -> str | None:
    link = os.path.join(root, 'bus', 'pci', 'devices', addr, 'driver')
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def task_result(proc) -> dict:  # type: ignore[no-untyped-def]
    doc = playbook_json(proc)
    tasks = [t for t in doc['tasks'] if t['action'].endswith('vfio_bind')]
    assert len(tasks) == 1, doc
    return tasks[0]


def test_check_apply_repeat_restore(run_playbook, kernel: dict) -> None:  # type: ignore[no-untyped-def]
    root = kernel['sysfs_root']
    backing = fusekernel.backing_of(root)
    before = fusekernel.snapshot(backing)

    # 1. check mode with diff: plans, changes nothing
    proc = run_playbook(PLAY, extra_vars=kernel, args=('--check', '--diff'))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = task_result(proc)
    assert res['status'] == 'ok' and res['result']['changed'] is True
    diff = res['result']['diff']
    diff = diff[0] if isinstance(diff, list) else diff
    assert 'bochs-drm' in diff['before'] and 'vfio-pci' in diff['after']
    assert fusekernel.snapshot(backing) == before and fusekernel.ops(backing) == []
    assert not os.path.exists(kernel['journal_path'])

    # 2. the real change
    proc = run_playbook(PLAY, extra_vars=kernel)
    res = task_result(proc)
    assert proc.returncode == 0 and res['result']['changed'] is True, proc.stdout + proc.stderr
    assert driver(root, GPU) == driver(root, AUDIO) == 'vfio-pci'
    assert driver(root, '0000:00:01.0') == 'bochs-drm'  # the identical boot GPU stays
    journal = json.loads(Path(kernel['journal_path']).read_text())
    assert journal['devices'][GPU]['driver_before'] == 'bochs-drm'

    # 3. repeat, and repeat in check mode: nothing to do
    for args in ((), ('--check', '--diff')):
        proc = run_playbook(PLAY, extra_vars=kernel, args=args)
        assert proc.returncode == 0
        assert playbook_json(proc)['stats']['localhost']['changed'] == 0
        assert task_result(proc)['result']['changed'] is False

    # 4. restore
    proc = run_playbook(PLAY, extra_vars=dict(kernel, bind_state='absent'))
    assert proc.returncode == 0 and task_result(proc)['result']['changed'] is True, proc.stdout + proc.stderr
    assert driver(root, GPU) == 'bochs-drm' and driver(root, AUDIO) == 'snd_hda_intel'
    assert not any(o['op'] == 'new_id' for o in fusekernel.ops(backing))
    proc = run_playbook(PLAY, extra_vars=dict(kernel, bind_state='absent'))
    assert playbook_json(proc)['stats']['localhost']['changed'] == 0


def test_refusal_fails_the_task_with_the_override_named(run_playbook, kernel: dict) -> None:  # type: ignore[no-untyped-def]
    proc = run_playbook(PLAY, extra_vars=dict(kernel, devices=['0000:00:01.0']))
    assert proc.returncode != 0
    res = task_result(proc)
    assert res['status'] == 'failed'
    assert 'boot VGA' in res['result']['msg'] and 'allow_boot_vga' in res['result']['msg']
    assert 'Traceback' not in json.dumps(res['result'])
    assert driver(kernel['sysfs_root'], '0000:00:01.0') == 'bochs-drm'


def test_bad_driver_name_fails_naming_it(run_playbook, kernel: dict) -> None:  # type: ignore[no-untyped-def]
    play = PLAY.replace('timeout: 3', 'timeout: 3\n        driver: "vfio-pci && reboot"')
    proc = run_playbook(play, extra_vars=kernel)
    res = task_result(proc)
    assert res['status'] == 'failed' and "'vfio-pci && reboot'" in res['result']['msg']
