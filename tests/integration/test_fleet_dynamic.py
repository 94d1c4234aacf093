"""site.yml and restore.yml with ``fleetgpu_vms[].binding: dynamic`` over the simulated fleet of
test_fleet_playbooks (identical_pair hosts: boot GPU 00:01.0 and 01:00.0 both 1234:1111, 01:00.1
audio in 01:00.0's group, 02:00.0 1002:5159; one private libvirtd per host)."""
from __future__ import annotations

from xml.etree import ElementTree

import pytest

from tests.integration import libvirtd as private
from tests.integration.test_fleet_playbooks import RESTORE, SITE, Fleet, changed, run, tasks, vm

pytestmark = pytest.mark.skipif(private.available() is not None, reason=str(private.available()))


@pytest.fixture(scope='module')
def fleet(tmp_path_factory: pytest.TempPathFactory):
    f = Fleet(tmp_path_factory.mktemp('fleet'))
    yield f
    f.stop()


def managed(fleet: Fleet, host: str) -> dict[str, dict[str, bool]]:
    """domain -> host address -> managed, from each domain's persistent definition."""
    conn = fleet.daemons[host].connect()
    try:
        out: dict[str, dict[str, bool]] = {}
        for dom in conn.listAllDomains():
            root = ElementTree.fromstring(dom.XMLDesc(0))
            out[dom.name()] = {
                '%s:%s:%s.%s' % tuple(int(h.find('source/address').get(k), 16) for k in ('domain', 'bus', 'slot', 'function')):
                h.get('managed') == 'yes' for h in root.findall('devices/hostdev')}
        return out
    finally:
        conn.close()


def test_site_keeps_a_dynamic_vms_gpu_off_vfio_host_and_attaches_its_group_managed(run_playbook, fleet: Fleet) -> None:
    vms = [vm('desk1', binding='dynamic', host='nodeA')]
    before = fleet.state()
    proc, doc = run(run_playbook, fleet, SITE, vms, ('--check',))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert fleet.state() == before

    proc, doc = run(run_playbook, fleet, SITE, vms)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # the GPU and its audio function, both managed: libvirt moves the group when desk1 starts
    assert managed(fleet, 'nodeA') == {'desk1': {'0:1:0.0': True, '0:1:0.1': True}}
    host = fleet.hosts['nodeA']
    # role vfio_host ran (the IOMMU arguments, the free pool GPU 02:00.0 by id) but left 01:00.0 alone
    files = host.snapshot()
    assert 'intel_iommu=on' in files['etc/default/grub.d/zz-fleetgpu-passthrough.cfg']
    assert 'options vfio-pci ids=1002:5159' in files['etc/modprobe.d/fleetgpu-passthrough.conf']
    assert '0000:01:00.0' not in files.get('etc/fleetgpu-passthrough/vfio-pci-addresses', '')
    config = [t for t in doc['tasks'] if t['host'] == 'nodeA' and t['action'].endswith('vfio_host_config')][-1]
    assert [g['address'] for g in config['result']['selected']] == ['0000:02:00.0'], config

    proc, doc = run(run_playbook, fleet, SITE, vms)
    assert proc.returncode == 0 and changed(doc) == 0, [
        (t['host'], t['task']) for t in doc['tasks'] if t['result'].get('changed')]

    proc, doc = run(run_playbook, fleet, RESTORE, vms)
    assert proc.returncode == 0, [(t['task'], t['result'].get('msg')) for t in doc['tasks'] if t['status'] == 'failed']
    assert managed(fleet, 'nodeA') == {'desk1': {}}
    assert not [f for f in host.snapshot() if 'fleetgpu' in f]
    assert tasks(doc, 'Detach the GPUs from the libvirt domains')
