"""Issue 14 through real ansible-playbook: VM requests by mdev profile over two simulated hosts.

Each host is ``connection: local`` with its own behaving simulated kernel (tests/sim fusekernel, topology
``partition``: an ``mbochs`` parent whose type ``mbochs-3`` holds 4 instances), its own root for the
files and its own private libvirtd. site.yml places the requests by capacity, role libvirt_gpu creates
the mediated devices with gpu_partition (persist false: no mdevctl in the test roots) and attaches them
as mdev hostdevs; restore.yml detaches and removes them.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from conftest import REPO, playbook_json
from tests.integration import libvirtd as private

pytestmark = [pytest.mark.skipif(private.available() is not None, reason=str(private.available())),
              pytest.mark.skipif(not os.path.exists('/dev/fuse'), reason='needs /dev/fuse for the behaving simulated kernel')]

SITE = REPO / 'playbooks' / 'site.yml'
RESTORE = REPO / 'playbooks' / 'restore.yml'
HOSTS = ('nodeA', 'nodeB')


def pvm(name: str, count: int, profile: str = 'mbochs-3') -> dict:
    return {'name': name, 'gpus': [{'profile': profile, 'count': count}], 'domain_xml': private.domain_xml(name)}


class PartitionFleet:
    def __init__(self, tmp: Path, stack: contextlib.ExitStack) -> None:
        from tests.sim import fusekernel  # pylint: disable=import-outside-toplevel

        self.tmp = tmp
        self.sysfs: dict[str, str] = {}
        self.roots: dict[str, Path] = {}
        self.daemons: dict[str, private.PrivateLibvirtd] = {}
        for name in HOSTS:
            self.sysfs[name] = stack.enter_context(fusekernel.simulated('partition', tmp / name / 'kernel'))
            # the host's root holds its /sys, as on a real host: gpu_facts reads the collection's record of the
            # mdevs it made where gpu_partition writes it (below the parent of the sysfs root)
            self.roots[name] = Path(self.sysfs[name]).parent
            daemon = private.PrivateLibvirtd()
            daemon.start()
            stack.callback(daemon.cleanup)
            self.daemons[name] = daemon
        self.report_dir = tmp / 'report'

    def inventory(self, vms: list[dict]) -> str:
        hosts = {name: {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                        'fleetgpu_sysfs_root': self.sysfs[name], 'vfio_host_root': str(self.roots[name]),
                        'libvirt_gpu_uri': self.daemons[name].uri, 'libvirt_gpu_mdev_persist': False}
                 for name in HOSTS}
        data = {'fleetgpu_report_dir': str(self.report_dir), 'fleetgpu_models': {}, 'fleetgpu_vms': vms,
                'fleetgpu_preflight_fail_on': []}
        path = self.tmp / 'inventory.json'
        path.write_text(json.dumps({'gpu_hosts': {'hosts': hosts, 'vars': data}}))
        return str(path)

    def mdevs(self, host: str) -> list[str]:
        """The mediated devices the simulated kernel of ``host`` holds."""
        base = os.path.join(self.sysfs[host], 'bus', 'mdev', 'devices')
        return sorted(os.listdir(base)) if os.path.isdir(base) else []

    def mdev_hostdevs(self, host: str) -> dict[str, list[str]]:
        conn = self.daemons[host].connect()
        try:
            out = {}
            for dom in conn.listAllDomains():
                root = ElementTree.fromstring(dom.XMLDesc(0))
                out[dom.name()] = sorted(a.get('uuid', '') for a in root.findall("devices/hostdev[@type='mdev']/source/address"))
            return out
        finally:
            conn.close()


@pytest.fixture(scope='module')
def pfleet(tmp_path_factory: pytest.TempPathFactory):
    with contextlib.ExitStack() as stack:
        yield PartitionFleet(tmp_path_factory.mktemp('pfleet'), stack)


def _run(run_playbook, fleet: PartitionFleet, playbook: Path, vms: list[dict], args: tuple = ()) -> tuple:
    proc = run_playbook(playbook, inventory=fleet.inventory(vms), args=args)
    return proc, playbook_json(proc)


def _changed(doc: dict) -> int:
    return sum(s['changed'] for s in doc['stats'].values())


def _changed_tasks(doc: dict) -> list:
    """(task name without its role, host, loop item) of every changed result, in order."""
    out = []
    for t in doc['tasks']:
        results = t['result']['results'] if isinstance(t['result'].get('results'), list) else [t['result']]
        out += [(t['task'].split(' : ')[-1], t['host'], json.dumps(r.get('item'), sort_keys=True))
                for r in results if isinstance(r, dict) and r.get('changed')]
    return out


def _plan(doc: dict) -> dict:
    return [t for t in doc['tasks'] if t['task'].startswith('Validate the GPU models')][0]['result']


def test_profiles_are_placed_created_attached_stable_and_restored(run_playbook, pfleet: PartitionFleet) -> None:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._partition import stable_mdev_uuid

    vms = [pvm('vdi1', 3), pvm('vdi2', 2)]
    # check mode: the plan, nothing created
    proc, doc = _run(run_playbook, pfleet, SITE, vms, ('--check',))
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert all(pfleet.mdevs(h) == [] for h in HOSTS)
    # spread: vdi1 to nodeA (a tie goes to the name), vdi2 to nodeB (4 free against 1)
    placement = {(p['vm'], p['host']): p['devices'] for p in _plan(doc)['placement']}
    want = {('vdi1', 'nodeA'): [stable_mdev_uuid('mbochs', 'mbochs-3', 'vdi1-%d' % n) for n in (1, 2, 3)],
            ('vdi2', 'nodeB'): [stable_mdev_uuid('mbochs', 'mbochs-3', 'vdi2-%d' % n) for n in (1, 2)]}
    assert placement == want

    proc, doc = _run(run_playbook, pfleet, SITE, vms)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert pfleet.mdevs('nodeA') == sorted(want[('vdi1', 'nodeA')])
    assert pfleet.mdevs('nodeB') == sorted(want[('vdi2', 'nodeB')])
    assert pfleet.mdev_hostdevs('nodeA') == {'vdi1': sorted(want[('vdi1', 'nodeA')])}
    assert pfleet.mdev_hostdevs('nodeB') == {'vdi2': sorted(want[('vdi2', 'nodeB')])}
    report = json.loads((pfleet.report_dir / 'fleet-report.json').read_text())
    rows = {h['name']: sorted((x['uuid'], x['vm'], x['status']) for x in h['partitions']) for h in report['hosts']}
    # the report of the end state (after the converge): the VM's mdevs exist and are kept
    assert rows['nodeB'] == sorted((u, 'vdi2', 'assigned') for u in want[('vdi2', 'nodeB')])

    # second run and second check run: nothing changes, the same UUIDs
    for args in ((), ('--check',)):
        proc, doc = _run(run_playbook, pfleet, SITE, vms, args)
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert _changed(doc) == 0, [t['task'] for t in doc['tasks'] if t['result'].get('changed')]
        assert {(p['vm'], p['host']): p['devices'] for p in _plan(doc)['placement']} == want

    # capacity exhaustion: 3 more of mbochs-3 fit on no host (1 free on nodeA, 2 on nodeB); nothing changes
    proc, doc = _run(run_playbook, pfleet, SITE, vms + [pvm('vdi3', 3)])
    assert proc.returncode != 0
    msg = _plan(doc)['msg']
    assert "VM 'vdi3' asks for 3 x profile mbochs-3" in msg, msg
    assert 'capacity: needs 3 x profile mbochs-3, 1 free (mbochs mbochs-3: 1)' in msg, msg
    assert 'capacity: needs 3 x profile mbochs-3, 2 free (mbochs mbochs-3: 2)' in msg, msg
    assert pfleet.mdevs('nodeA') == sorted(want[('vdi1', 'nodeA')])

    # one more mdev made by the collection on nodeA, for no VM of the plan (gpu_partition by hand): restore
    # removes it too, as one of "the other" mdevs; the record of what the collection made is where gpu_facts reads it
    orphan = stable_mdev_uuid('mbochs', 'mbochs-3', 'orphan')
    by_hand = [{'hosts': 'nodeA', 'gather_facts': False, 'tasks': [{'fleetgpu.passthrough.gpu_partition': {
        'parent': 'mbochs', 'mdevs': [{'type': 'mbochs-3', 'name': 'orphan'}], 'persist': False,
        'sysfs_root': pfleet.sysfs['nodeA'], 'root': str(pfleet.roots['nodeA'])}}]}]
    proc = run_playbook(json.dumps(by_hand), inventory=pfleet.inventory(vms))
    assert proc.returncode == 0, proc.stdout[-4000:]
    record = json.loads((pfleet.roots['nodeA'] / 'var/lib/fleetgpu-passthrough/partition.json').read_text())
    assert sorted(record['mdevs']) == sorted(want[('vdi1', 'nodeA')] + [orphan])

    # restore in check mode: names the changes, removes nothing
    proc, doc = _run(run_playbook, pfleet, RESTORE, vms, ('--check', '--diff'))
    assert proc.returncode == 0, proc.stdout[-4000:]
    predicted = _changed_tasks(doc)
    assert pfleet.mdevs('nodeA') == sorted(want[('vdi1', 'nodeA')] + [orphan])
    assert pfleet.mdev_hostdevs('nodeB') == {'vdi2': sorted(want[('vdi2', 'nodeB')])}
    # restore: the mdev hostdevs leave the domains, the mediated devices leave the hosts; exactly the
    # changes check mode named (the removal of the VMs' mdevs is not named twice)
    proc, doc = _run(run_playbook, pfleet, RESTORE, vms)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert _changed_tasks(doc) == predicted
    assert {(t, h) for t, h, _item in predicted} == {
        (task, host) for host in HOSTS for task in ('Attach or detach the mediated devices',
                                                    'Remove the mediated devices from the host (after they left the domains)')
    } | {('Remove the other mediated devices the collection created', 'nodeA')}
    assert not (pfleet.roots['nodeA'] / 'var/lib/fleetgpu-passthrough/partition.json').exists()
    assert all(pfleet.mdevs(h) == [] for h in HOSTS)
    assert pfleet.mdev_hostdevs('nodeA') == {'vdi1': []} and pfleet.mdev_hostdevs('nodeB') == {'vdi2': []}
    proc, doc = _run(run_playbook, pfleet, RESTORE, vms)
    assert proc.returncode == 0 and _changed(doc) == 0, proc.stdout[-4000:]
