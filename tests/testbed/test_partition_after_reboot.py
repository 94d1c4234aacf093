"""Partitioned devices after a real reboot (issue 14), then their removal, on the runtime phase's
intel test host.

Runs AFTER test_awx_runner.py, whose real job rebooted the host once; test_partition.py had,
before that reboot, enabled two VFs of the emulated NVMe controller (03:00.0) and created two
``mbochs`` mediated devices with gpu_partition (persisted: a udev rule applied when the PF's
driver binds, mdevctl definitions started automatically), and defined the domain
``fleetgpu-partition`` holding a VF and an mdev. Here:

* the VFs and the mdevs came back by themselves at boot (the kernel's sysfs, mdevctl);
* the domain's hostdevs still resolve: libvirt_hostdev finds both in the definition (no change),
  and the domain starts again with the VF on vfio-pci and the mdev; then it stops, still defined, and
  its VF (the test's own attachment) is detached and given back;
* playbooks/restore.yml, run as a user runs it with the fleet request of that VM (2 x profile
  ``mbochs-medium``: the mdevs carry the fleet's names for it, so their UUIDs are the VM's), first
  in check mode (it names the changes and writes nothing), then for real: the mdev leaves the
  domain, both mdevs and their mdevctl definitions are removed, the VF count the collection set
  goes back to 0 and its udev rule goes; the changed tasks are exactly those check mode named, and
  a second run changes nothing. The PF keeps its driver.

The domain is undefined and mbochs unloaded at the end, whatever happens.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator
from xml.etree import ElementTree

import pytest

from conftest import REPO, playbook_json
from test_partition import (
    DOMAIN,
    MODULES_LOAD,
    PF,
    TYPE,
    VF,
    VFS,
    domstate,
    driver,
    kernel_view,
    mdevctl_defined,
    mdevs_on,
    numvfs,
    sh,
    stable_uuids,
    state_task,
)
from test_real_kernel import _play, _playbook, _result  # one play and playbook runner for the runtime tests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402

TESTBED_HOSTS = ('intel',)
RULE = '/etc/udev/rules.d/70-fleetgpu-passthrough-sriov-%s.rules' % PF
RESTORE = REPO / 'playbooks' / 'restore.yml'

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

    # the domain's hostdevs still resolve, and it starts again; then it stops (still defined, as a fleet VM
    # is) and gives its VF back (the VF was the test's own attachment, not the fleet's)
    doc = _play(host, tmp_path, [
        {'name': 'bind', 'fleetgpu.passthrough.vfio_bind': {'devices': [VF]}},
        {'name': 'still there', 'fleetgpu.passthrough.libvirt_hostdev': {
            'domain': DOMAIN, 'devices': [VF, 'mdev:%s' % uuids[0]], 'start': True}},
        state_task('running', 'echo domstate $(virsh -q domstate %s)' % DOMAIN),
        {'name': 'stop', 'ansible.builtin.command': {'argv': ['virsh', '-q', 'destroy', DOMAIN]}},
        {'name': 'detach the VF', 'fleetgpu.passthrough.libvirt_hostdev': {
            'domain': DOMAIN, 'devices': [VF], 'state': 'absent'}},
        {'name': 'unbind', 'fleetgpu.passthrough.vfio_bind': {'devices': [VF], 'state': 'absent'}},
    ], 'after-reboot')
    print('partition tasks after the reboot (s): %s' % ', '.join('%s %.1f' % (t['task'], t['seconds']) for t in doc['tasks']))
    assert _result(doc, 'bind')['status'] == 'ok', _result(doc, 'bind')
    there = _result(doc, 'still there')
    assert there['status'] == 'ok' and there['result']['power'] == 'started', there
    assert [d['action'] for d in there['result']['devices']] == ['unchanged', 'unchanged'], there
    assert not [w for w in there['result'].get('warnings', []) if 'does not exist' in w], there
    assert kernel_view(doc, 'running')['domstate'] == 'running', kernel_view(doc, 'running')
    assert _result(doc, 'detach the VF')['result']['changed'] is True, _result(doc, 'detach the VF')
    assert _result(doc, 'unbind')['status'] == 'ok', _result(doc, 'unbind')
    assert hostdevs(host) == ['mdev %s' % uuids[0]], hostdevs(host)

    # playbooks/restore.yml, as a user runs it, with the fleet request of the VM (2 x profile mbochs-medium:
    # the fleet's names for the two mdevs, so their UUIDs are the VM's): check mode first, then for real, then again
    fleet = {'fleetgpu_models': {}, 'fleetgpu_report_dir': str(tmp_path / 'report'),
             'fleetgpu_vms': [{'name': DOMAIN, 'gpus': [{'profile': TYPE, 'count': len(uuids)}]}]}
    runs, reports = {}, {}
    for name, args in (('restore-check', ('--check', '--diff')), ('restore', ()), ('restore-again', ())):
        began = time.monotonic()
        proc = _playbook(host, tmp_path, RESTORE, fleet, args, name)
        runs[name] = (proc, playbook_json(proc))
        if name == 'restore':
            reports[name] = host_partitions(tmp_path, host.name)
        print('%s: %.0f s' % (name, time.monotonic() - began))
        assert proc.returncode == 0, (name, proc.stdout[-6000:], proc.stderr[-2000:])
        if name == 'restore-check':
            # predicted, nothing written: the VFs, the mdevs, their definitions, the rule and the attachment stay
            assert numvfs(host) == len(VFS) and mdevs_on(host) == sorted(uuids), name
            assert hostdevs(host) == ['mdev %s' % uuids[0]] and sh(host, 'ls %s' % RULE).strip() == RULE, name
            assert all(u in mdevctl_defined(host) for u in uuids), name
    predicted, done, again = (changed_tasks(runs[n][1]) for n in ('restore-check', 'restore', 'restore-again'))
    # the fleet report (written on the controller from what play 1 read): the real run's showed both mdevs as
    # the VM's; the last run's has none left (only what site.yml would place again for the request)
    last = host_partitions(tmp_path, host.name)
    assert [x for x in last if x['status'] != 'placed'] == [], last
    assert sorted((x['uuid'], x['type'], x['vm'], x['status']) for x in reports['restore']) == sorted(
        (u, TYPE, DOMAIN, 'assigned') for u in uuids), reports['restore']
    # what restore did: detached the mdev from the VM, removed both mdevs, set the VF count back to 0
    assert {t for t, _item in done} >= {
        'Attach or detach the mediated devices', 'Remove the mediated devices from the host (after they left the domains)',
        'Set the SR-IOV VF counts the collection set back to 0 (and remove their boot-time rule)'}, done
    assert predicted == done, (predicted, done)
    assert again == [], again
    removed = [r for t in runs['restore'][1]['tasks'] if t['task'].split(' : ')[-1].startswith('Remove the mediated devices from the host')
               for r in t['result'].get('results', [t['result']]) if r.get('mdevs')]
    assert sorted(m['uuid'] for r in removed for m in r['mdevs'] if m['state'] == 'removed') == sorted(uuids), removed

    # nothing left: no VF, no mdev, no udev rule, no mdevctl definition, no mdev in the VM; the PF keeps its driver
    assert numvfs(host) == 0 and mdevs_on(host) == [], sh(host, 'ls /sys/bus/mdev/devices; mdevctl list --defined', check=False)
    assert driver(host, PF) == 'nvme'
    assert sh(host, 'ls %s 2>/dev/null; find /etc/mdevctl.d -type f' % RULE, check=False).strip() == ''
    assert not [u for u in uuids if u in mdevctl_defined(host)]
    assert hostdevs(host) == [] and domstate(host) == 'shut off'
    print('partition after the reboot: %.0f s (VFs and mdevs back, the domain started again, restore.yml removed all)'
          % (time.monotonic() - started))


def hostdevs(host: launch.TestHost) -> list:
    """The domain's definition's hostdevs: 'mdev UUID' or 'pci DOMAIN:BUS:SLOT.FN'."""
    xml = sh(host, 'virsh -q -c qemu:///system dumpxml --inactive %s' % DOMAIN)
    out = []
    for dev in ElementTree.fromstring(xml).findall('devices/hostdev'):
        addr = dev.find('source/address')
        if dev.get('type') == 'mdev':
            out.append('mdev %s' % addr.get('uuid'))
        else:
            out.append('pci %04x:%02x:%02x.%x' % tuple(int(addr.get(k), 16) for k in ('domain', 'bus', 'slot', 'function')))
    return out


def host_partitions(tmp_path: Path, name: str) -> list:
    """The mediated devices of host ``name`` in the fleet report that restore.yml's plan wrote on the controller."""
    hosts = json.loads((tmp_path / 'report' / 'fleet-report.json').read_text())['hosts']
    assert [h['name'] for h in hosts] == [name], hosts
    return hosts[0]['partitions']


def changed_tasks(doc: dict) -> list:
    """(task, loop item label) of every changed result of a run, in order."""
    out = []
    for t in doc['tasks']:
        results = t['result'].get('results') if isinstance(t['result'].get('results'), list) else [t['result']]
        out += [(t['task'].split(' : ')[-1], str(r.get('item', ''))) for r in results if isinstance(r, dict) and r.get('changed')]
    return out
