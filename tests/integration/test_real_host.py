"""gpu_facts and iommu_check against this machine's own kernel (/sys, /proc)."""
from __future__ import annotations

import os

from tests.conftest import playbook_json

PLAY = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: facts
      fleetgpu.passthrough.gpu_facts:
        timeout: 5
    - name: check
      fleetgpu.passthrough.iommu_check:
'''


def _groups() -> dict:
    base = '/sys/kernel/iommu_groups'
    try:
        names = os.listdir(base)
    except OSError:
        return {}
    return {int(n): sorted(os.listdir(os.path.join(base, n, 'devices'))) for n in names if n.isdigit()}


def test_modules_on_the_real_kernel(run_playbook) -> None:
    proc = run_playbook(PLAY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = playbook_json(proc)
    by_name = {t['task']: t['result'] for t in doc['tasks']}
    facts = by_name['facts']['ansible_facts']['gpu_passthrough']
    check = by_name['check']
    groups = _groups()
    host = facts['host']
    with open('/proc/sys/kernel/osrelease') as handle:
        assert host['kernel_release'] == handle.read().strip()
    with open('/proc/cmdline') as handle:
        assert host['cmdline'] == handle.read().replace('\x00', ' ').strip()
    units = sorted(os.listdir('/sys/class/iommu')) if os.path.isdir('/sys/class/iommu') else []
    if not groups and not units:
        # the machine the project is developed on: a real kernel with no IOMMU
        assert host['iommu_enabled'] is False
        assert host['iommu_type'] is None
        assert check['host']['iommu_enabled'] is False
        assert 'iommu_off' in [f['name'] for f in check['findings']]
        assert check['ready'] is False
        assert all(g['iommu_group'] is None and g['state'] == 'unusable' for g in facts['gpus'])
    else:
        assert host['iommu_enabled'] is True
        assert check['host']['iommu_groups'] == len(groups)
        assert check['host']['iommu_units'] == units
        for gpu in facts['gpus']:
            if gpu['iommu_group'] is not None:
                assert sorted(m['address'] for m in gpu['iommu_group_members']) == groups[gpu['iommu_group']]
    assert by_name['facts']['changed'] is False and check['changed'] is False
    for gpu in facts['gpus']:
        assert os.path.isdir('/sys/bus/pci/devices/%s' % gpu['address'])
