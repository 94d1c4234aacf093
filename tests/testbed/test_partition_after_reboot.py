"""Partitioned devices after a real reboot (issue 14), then their removal, on the runtime phase's
intel test host.

Runs AFTER test_awx_runner.py, whose real job rebooted the host once; test_partition.py had,
before that reboot, enabled two VFs of the emulated NVMe controller (03:00.0) and created two
``mbochs`` mediated devices with gpu_partition (persisted: a udev rule applied when the PF's
driver binds, mdevctl definitions started automatically), and defined the domain
``fleetgpu-partition`` holding a VF and an mdev. Here:

* the VFs and the mdevs came back by themselves at boot (the kernel's sysfs, mdevctl);
* the domain's hostdevs still resolve: libvirt_hostdev finds both in the definition (no change),
  and the domain starts again with the VF on vfio-pci and the mdev;
* the collection's removal (gpu_partition ``state: absent`` on both parents) leaves nothing:
  no VF, no mdev, no udev rule, no mdevctl definition, and a second run changes nothing.
  (playbooks/restore.yml does the same for what the fleet role created; its partition part is
  tested with the fleet wiring.)

The domain is undefined and mbochs unloaded at the end, whatever happens.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

from conftest import REPO
from test_partition import (
    DOMAIN,
    MODULES_LOAD,
    PARENT,
    PF,
    VF,
    VFS,
    domstate,
    kernel_view,
    mdevs_on,
    numvfs,
    sh,
    stable_uuids,
    state_task,
)
from test_real_kernel import _play, _result  # one play runner for the runtime tests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402

TESTBED_HOSTS = ('intel',)
RULE = '/etc/udev/rules.d/70-fleetgpu-passthrough-sriov-%s.rules' % PF

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='QEMU test hosts need root'),
    pytest.mark.skipif(not (REPO / '.cache' / 'collections').exists() and not os.environ.get('CI'),
                       reason='collection not installed (run scripts/install-collection.sh)'),
]


@pytest.fixture(scope='module')
def host(testbed_hosts: Dict[str, launch.TestHost]) -> Iterator[launch.TestHost]:
    """The intel host; the domain goes, and mbochs is no longer asked for at boot, whatever happens."""
    testhost = testbed_hosts['intel']
    yield testhost
    sh(testhost, 'virsh -q -c qemu:///system destroy %s; virsh -q -c qemu:///system undefine %s; rm -f %s; '
       'modprobe -r mbochs' % (DOMAIN, DOMAIN, MODULES_LOAD), check=False)


def test_vfs_and_mdevs_came_back_after_the_reboot_and_removal_leaves_nothing(host, tmp_path):
    started = time.monotonic()
    uuids = stable_uuids()
    # came back at boot: the udev rule set the VF count when nvme bound the PF, mdevctl started the mdevs
    # (what a failure needs: the rule and when udev saw the PF; mdevctl's own log lines at boot)
    assert numvfs(host) == len(VFS), sh(host, 'cat %s; journalctl -b --no-pager -o short-monotonic | '
                                              'grep -E "%s|Switching root" | head -20' % (RULE, PF), check=False)
    assert mdevs_on(host) == sorted(uuids), sh(host, 'mdevctl list --defined; journalctl -b --no-pager -t mdevctl | '
                                                     'tail -5', check=False)
    assert domstate(host) == 'shut off'

    # the domain's hostdevs still resolve, and it starts again; then the collection's removal
    remove = [
        {'fleetgpu.passthrough.gpu_partition': {'parent': PARENT, 'state': 'absent'}},
        {'fleetgpu.passthrough.gpu_partition': {'parent': PF, 'state': 'absent'}},
    ]
    doc = _play(host, tmp_path, [
        {'name': 'bind', 'fleetgpu.passthrough.vfio_bind': {'devices': [VF]}},
        {'name': 'still there', 'fleetgpu.passthrough.libvirt_hostdev': {
            'domain': DOMAIN, 'devices': [VF, 'mdev:%s' % uuids[0]], 'start': True}},
        state_task('running', 'echo domstate $(virsh -q domstate %s)' % DOMAIN),
        {'name': 'stop', 'ansible.builtin.command': {'argv': ['sh', '-c', 'virsh -q destroy %s && virsh -q undefine %s'
                                                              % (DOMAIN, DOMAIN)]}},
        {'name': 'unbind', 'fleetgpu.passthrough.vfio_bind': {'devices': [VF], 'state': 'absent'}},
        dict({'name': 'remove mdevs'}, **remove[0]),
        dict({'name': 'remove vfs'}, **remove[1]),
        dict({'name': 'remove mdevs again'}, **remove[0]),
        dict({'name': 'remove vfs again'}, **remove[1]),
        state_task('removed', 'echo pfdriver $(basename $(readlink /sys/bus/pci/devices/%s/driver)); '
                   'echo rule $(ls %s 2>/dev/null); echo mdevctl_files $(find /etc/mdevctl.d -type f)' % (PF, RULE)),
    ], 'after-reboot')
    print('partition tasks after the reboot (s): %s' % ', '.join('%s %.1f' % (t['task'], t['seconds']) for t in doc['tasks']))
    assert _result(doc, 'bind')['status'] == 'ok', _result(doc, 'bind')
    there = _result(doc, 'still there')
    assert there['status'] == 'ok' and there['result']['power'] == 'started', there
    assert [d['action'] for d in there['result']['devices']] == ['unchanged', 'unchanged'], there
    assert not [w for w in there['result'].get('warnings', []) if 'does not exist' in w], there
    assert kernel_view(doc, 'running')['domstate'] == 'running', kernel_view(doc, 'running')

    assert _result(doc, 'unbind')['status'] == 'ok', _result(doc, 'unbind')
    mdevs, vfs = _result(doc, 'remove mdevs'), _result(doc, 'remove vfs')
    assert mdevs['status'] == 'ok' and mdevs['result']['changed'] is True, mdevs
    assert sorted(m['uuid'] for m in mdevs['result']['mdevs'] if m['state'] == 'removed') == sorted(uuids), mdevs
    assert vfs['status'] == 'ok' and vfs['result']['changed'] is True, vfs
    for name in ('remove mdevs again', 'remove vfs again'):
        again = _result(doc, name)
        assert again['status'] == 'ok' and again['result']['changed'] is False, again
    # nothing left: no VF, no mdev, no udev rule, no mdevctl definition; the PF keeps its driver
    view = kernel_view(doc, 'removed')
    assert view['numvfs'] == '0' and view['mdevs'] == '' and view['pfdriver'] == 'nvme', view
    assert view['rule'] == '' and view['mdevctl_files'] == '' and not [u for u in uuids if u in view['defined']], view
    assert domstate(host).startswith('error'), 'the domain is still defined'
    print('partition after the reboot: %.0f s (VFs and mdevs back, the domain started again, all removed)'
          % (time.monotonic() - started))
