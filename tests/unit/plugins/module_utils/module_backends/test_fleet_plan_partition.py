"""Partitioned VM requests: ``mode: partition`` by model is refused with the reason (never placed as whole GPUs);
``profile`` asks are placed on mdev parents by capacity (issue 14)."""
from __future__ import annotations

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import fleet_plan as fleet
from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _fleet_report as report
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._partition import stable_mdev_uuid
from tests.unit.plugins.module_utils.module_backends.test_fleet_plan import MODELS, XML, dom, gpu, host, run, vm, where


def test_partition_on_gpus_without_sriov_or_mdev_is_refused_naming_the_request() -> None:
    hosts = [host('n1', [gpu('13:00.0'), gpu('14:00.0')])]
    p = run(hosts, [vm('whole1'), vm('split1', mode='partition')], strict=False)
    assert [pl.vm.name for pl in p.placements] == ['whole1']      # the whole-GPU request is placed as before
    assert [u.vm.name for u in p.unplaced] == ['split1']
    why = p.unplaced[0].why
    assert 'mode: partition' in why and 'no GPU of model(s) a100 offers SR-IOV' in why
    assert 'not placed as whole GPUs' in why
    message = p.failure_message()
    assert "VM 'split1' asks for 1 x a100 (partitioned)" in message


def test_partition_by_model_on_capable_gpus_points_at_profile() -> None:
    sriov = gpu('13:00.0')
    sriov['sriov'] = {'totalvfs': 16, 'numvfs': 0, 'is_vf': False, 'physfn': None, 'vfs': []}
    mdev = gpu('14:00.0')
    mdev['mdev_types'] = ['nvidia-222']
    p = run([host('n1', [sriov, mdev, gpu('15:00.0')])], [vm('split1', mode='partition')], strict=False)
    assert p.placements == []
    why = p.unplaced[0].why
    assert 'n1 0000:13:00.0 (SR-IOV)' in why and 'n1 0000:14:00.0 (mdev)' in why
    assert 'ask for them by profile' in why


def test_partition_count_above_the_whole_gpu_count_is_not_a_model_error() -> None:
    # partitions may outnumber whole GPUs: the strict "more than the fleet has" check is for whole GPUs
    p = run([host('n1', [gpu('13:00.0')])], [vm('split1', count=4, mode='partition')], strict=True)
    assert p.errors == [] and [u.vm.name for u in p.unplaced] == ['split1']


@pytest.mark.parametrize('mode', ['slice', True, None])
def test_bad_mode_names_the_request(mode: object) -> None:
    with pytest.raises(fleet.FleetInputError, match=r'fleetgpu_vms\[0\] \(x\)\.mode must be whole .* or partition'):
        fleet.parse_vms([vm('x', mode=mode)], fleet.parse_models({'a100': {'vendor_id': '10de', 'device_id': '20b2'}}))


def test_whole_is_the_default_and_can_be_written() -> None:
    models = fleet.parse_models({'a100': {'vendor_id': '10de', 'device_id': '20b2'}})
    assert [v.mode for v in fleet.parse_vms([vm('a'), vm('b', mode='whole')], models)] == ['whole', 'whole']


# --- profile asks: mediated devices placed by available_instances (issue 14) ---------------------------

def parent(name: str, types: dict[str, int], mdevs: list[dict] | None = None, names: dict[str, str] | None = None) -> dict:
    return {'parent': name,
            'types': [{'type': t, 'type_name': (names or {}).get(t, 'name of %s' % t), 'description': '',
                       'device_api': 'vfio-pci', 'available_instances': n} for t, n in types.items()],
            'mdevs': mdevs or []}


def phost(name: str, parents: list[dict], gpus: list[dict] | None = None, domains: list[dict] | None = None) -> fleet.HostInput:
    h = host(name, gpus or [], domains=domains)
    assert h.facts is not None
    h.facts['mdev_parents'] = parents
    return h


def pvm(name: str, profile: str = 'mbochs-2', count: int = 1, **kw: object) -> dict:
    out: dict = {'name': name, 'gpus': [{'profile': profile, 'count': count}], 'domain_xml': XML % name}
    out.update(kw)
    return out


def prun(hosts: list[fleet.HostInput], vms: list[dict], **kw: object) -> fleet.FleetPlan:
    kw.setdefault('models', {})
    return run(hosts, vms, **kw)  # type: ignore[arg-type]


def parts(p: fleet.FleetPlan) -> dict[str, tuple[str, list[tuple[str, str, str | None]]]]:
    return {pl.vm.name: (pl.host, [(x.parent, x.type, x.label) for x in pl.partitions]) for pl in p.placements}


def test_profile_is_placed_with_stable_uuids_and_published_to_the_host() -> None:
    p = prun([phost('n1', [parent('mbochs', {'mbochs-2': 3})])], [pvm('v1', count=2)])
    assert parts(p) == {'v1': ('n1', [('mbochs', 'mbochs-2', 'v1-1'), ('mbochs', 'mbochs-2', 'v1-2')])}
    entry = p.host_plan('n1')['libvirt_gpu_domains'][0]
    assert 'gpus' not in entry and entry['name'] == 'v1'
    assert entry['mdevs'] == [{'parent': 'mbochs', 'type': 'mbochs-2', 'name': 'v1-%d' % n,
                               'uuid': stable_mdev_uuid('mbochs', 'mbochs-2', 'v1-%d' % n)} for n in (1, 2)]
    assert p.host_plan('n1')['vfio_host_devices'] == []       # nothing to bind to vfio-pci for an mdev
    assert p.artifact() == [{'vm': 'v1', 'host': 'n1', 'profile': 'mbochs-2', 'devices': [m['uuid'] for m in entry['mdevs']],
                             'mdevs': entry['mdevs']}]


def test_profile_by_human_name_resolves_to_the_type_id() -> None:
    hosts = [phost('n1', [parent('0000:41:00.0', {'nvidia-222': 4}, names={'nvidia-222': 'GRID T4-4Q'})])]
    p = prun(hosts, [pvm('v1', profile='grid t4-4q')])
    assert parts(p) == {'v1': ('n1', [('0000:41:00.0', 'nvidia-222', 'v1-1')])}


def test_parent_is_never_overcommitted_across_vms_of_one_plan() -> None:
    hosts = [phost('n1', [parent('mbochs', {'mbochs-2': 3})])]
    p = prun(hosts, [pvm('v1', count=2), pvm('v2', count=1), pvm('v3', count=1)], strict=False)
    assert sorted(parts(p)) == ['v1', 'v2']
    [u] = p.unplaced
    assert u.vm.name == 'v3'
    [r] = u.rejections
    assert r.free == {'profile mbochs-2': 0}
    assert 'capacity: needs 1 x profile mbochs-2, 0 free (mbochs mbochs-2: 0)' in r.reason
    message = p.failure_message()
    assert "VM 'v3' asks for 1 x profile mbochs-2" in message and 'profile mbochs-2: 0' in message


def test_types_of_one_parent_share_it() -> None:
    # once the plan gives a parent one type, its other types count as none free there
    hosts = [phost('n1', [parent('mbochs', {'mbochs-1': 4, 'mbochs-2': 2})])]
    p = prun(hosts, [pvm('v1', profile='mbochs-1'), pvm('v2', profile='mbochs-2')], strict=False)
    assert list(parts(p)) == ['v1'] and p.unplaced[0].vm.name == 'v2'
    assert 'needs 1 x profile mbochs-2, 0 free' in p.unplaced[0].rejections[0].reason


@pytest.mark.parametrize('policy,expected', [
    ('spread', {'v1': 'n2', 'v2': 'n2', 'v3': 'n1'}),   # n2: 4 free, 3, then a tie (2, 2): the name
    ('pack', {'v1': 'n1', 'v2': 'n1', 'v3': 'n2'}),
])
def test_spread_and_pack_count_free_instances(policy: str, expected: dict[str, str]) -> None:
    hosts = [phost('n1', [parent('mbochs', {'mbochs-2': 2})]), phost('n2', [parent('mbochs', {'mbochs-2': 4})])]
    p = prun(hosts, [pvm('v1'), pvm('v2'), pvm('v3')], policy=policy)
    assert {v: h for v, (h, _x) in parts(p).items()} == expected


@pytest.mark.parametrize('policy,expected', [('spread', ['p1', 'p2']), ('pack', ['p1', 'p1'])])
def test_within_a_host_spread_and_pack_choose_parents(policy: str, expected: list[str]) -> None:
    hosts = [phost('n1', [parent('p1', {'t': 2}), parent('p2', {'t': 3})])]
    p = prun(hosts, [pvm('v1', profile='t', count=2)], policy=policy)
    assert sorted(par for par, _t, _l in parts(p)['v1'][1]) == expected


def test_second_run_keeps_the_vms_mdevs_and_changes_nothing() -> None:
    hosts = [phost('n1', [parent('mbochs', {'mbochs-2': 3})]), phost('n2', [parent('mbochs', {'mbochs-2': 3})])]
    first = prun(hosts, [pvm('v1', count=2)])
    h, created = first.placements[0].host, first.placements[0].partitions
    # the kernel after the converge: the two mdevs exist, one instance is left on that parent
    existing = [{'uuid': x.uuid, 'type': x.type, 'type_name': None, 'parent': x.parent, 'held_by': None,
                 'persistent': True, 'collection': True} for x in created]
    hosts = [phost(n, [parent('mbochs', {'mbochs-2': 1 if n == h else 3}, mdevs=existing if n == h else [])])
             for n in ('n1', 'n2')]
    second = prun(hosts, [pvm('v1', count=2)])
    assert second.host_plan(h) == first.host_plan(h)
    assert all(x.kept for x in second.placements[0].partitions)


def test_mdevs_on_same_named_parents_of_many_hosts_stay_with_their_vms() -> None:
    # the same parent name on every host (identical hosts): each VM's stable UUIDs are found on its own host only
    def made(vm: str, n: int) -> dict:
        return {'uuid': stable_mdev_uuid('mbochs', 'mbochs-2', '%s-%d' % (vm, n)), 'type': 'mbochs-2', 'type_name': None,
                'parent': 'mbochs', 'held_by': None, 'persistent': True, 'collection': True}
    hosts = [phost('n1', [parent('mbochs', {'mbochs-2': 0}, mdevs=[made('v2', 1), made('v2', 2)])]),
             phost('n2', [parent('mbochs', {'mbochs-2': 1}, mdevs=[made('v1', 1)])]),
             phost('n3', [parent('mbochs', {'mbochs-2': 8})])]
    p = prun(hosts, [pvm('v1', count=2), pvm('v2', count=2), pvm('v3', count=1)])
    got = {pl.vm.name: (pl.host, [(x.uuid, x.label, x.kept) for x in pl.partitions]) for pl in p.placements}
    assert got['v1'] == ('n2', [(made('v1', 1)['uuid'], 'v1-1', True),
                                (stable_mdev_uuid('mbochs', 'mbochs-2', 'v1-2'), 'v1-2', False)])
    assert got['v2'] == ('n1', [(made('v2', 1)['uuid'], 'v2-1', True), (made('v2', 2)['uuid'], 'v2-2', True)])
    assert got['v3'][0] == 'n3'


def test_mdev_held_by_the_domain_anchors_it_to_its_host() -> None:
    held = [{'uuid': '0d2c6a62-0000-4000-8000-000000000001', 'type': 'mbochs-2', 'type_name': None, 'parent': 'mbochs',
             'held_by': 'v1', 'persistent': False, 'collection': False}]
    hosts = [phost('n1', [parent('mbochs', {'mbochs-2': 0}, mdevs=held)]), phost('n2', [parent('mbochs', {'mbochs-2': 8})])]
    p = prun(hosts, [pvm('v1', count=2)], strict=False)
    assert p.placements == [] and 'already holds GPUs on n1' in p.unplaced[0].why
    p = prun(hosts, [pvm('v1', count=1)])
    assert p.placements[0].host == 'n1' and p.placements[0].partitions[0].uuid == held[0]['uuid']
    assert p.host_plan('n1')['libvirt_gpu_domains'][0]['mdevs'] == [{'parent': 'mbochs', 'type': 'mbochs-2',
                                                                    'uuid': held[0]['uuid']}]


def test_mdev_in_a_stopped_domains_definition_anchors_it_and_the_report_names_it() -> None:
    # a UUID the plan would not derive, held by no running process: only the definition of v1 (not running) names it
    uid = '0d2c6a62-0000-4000-8000-000000000002'
    defined = [{'uuid': uid, 'type': 'mbochs-2', 'type_name': None, 'parent': 'mbochs', 'held_by': None,
                'persistent': True, 'collection': False}]
    hosts = [phost('n1', [parent('mbochs', {'mbochs-2': 0}, mdevs=defined)], domains=[dom('v1')]),
             phost('n2', [parent('mbochs', {'mbochs-2': 8})])]
    # without libvirt's word the mdev is no one's: n1 has no free instance, and v1 is defined there only
    p = prun(hosts, [pvm('v1')], strict=False)
    assert p.placements == [] and 'capacity: needs 1 x profile mbochs-2, 0 free' in p.unplaced[0].rejections[0].reason
    assert hosts[0].libvirt is not None
    hosts[0].libvirt['mdev_assignments'] = {uid: ['v1']}
    p = prun(hosts, [pvm('v1')])
    assert p.placements[0].host == 'n1' and [x.uuid for x in p.placements[0].partitions] == [uid]
    assert p.placements[0].partitions[0].kept
    [row] = [h for h in report.build(p, 'place')['hosts'] if h['name'] == 'n1'][0]['partitions']
    assert (row['uuid'], row['vm'], row['status']) == (uid, 'v1', 'assigned')
    # another domain's definition names it: the report says whose, and v1 does not take it
    hosts[0].libvirt['mdev_assignments'] = {uid: ['other']}
    p = prun(hosts, [pvm('v1')], strict=False)
    assert p.placements == []
    [row] = [h for h in report.build(p, 'report')['hosts'] if h['name'] == 'n1'][0]['partitions']
    assert (row['vm'], row['status']) == ('other', 'assigned')


def test_whole_gpus_and_profiles_in_one_request_go_to_one_host() -> None:
    hosts = [phost('n1', [parent('mbochs', {'mbochs-2': 2})], gpus=[gpu('13:00.0')]),
             phost('n2', [parent('mbochs', {'mbochs-2': 2})])]
    req = {'name': 'mix', 'gpus': [{'model': 'a100', 'count': 1}, {'profile': 'mbochs-2', 'count': 1}],
           'domain_xml': XML % 'mix'}
    p = prun(hosts, [req], models=MODELS)
    assert where(p) == {'mix': ('n1', ['0000:13:00.0'])} and parts(p)['mix'][0] == 'n1'
    entry = p.host_plan('n1')['libvirt_gpu_domains'][0]
    assert entry['gpus'] == {'addresses': ['0000:13:00.0']} and len(entry['mdevs']) == 1


def test_unknown_profile_is_an_error_listing_the_types_offered() -> None:
    hosts = [phost('n1', [parent('mbochs', {'mbochs-2': 2})])]
    with pytest.raises(fleet.FleetInputError, match=r"VM 'v1' asks for profile 'nvidia-63', which no mdev parent of the "
                                                    r"fleet offers \(types offered: mbochs-2 \(name of mbochs-2\)\)"):
        prun(hosts, [pvm('v1', profile='nvidia-63')])
    p = prun(hosts, [pvm('v1', profile='nvidia-63')], strict=False)
    assert 'no mdev parent here offers it (types here: mbochs-2)' in p.unplaced[0].rejections[0].reason


@pytest.mark.parametrize('ask,needle', [
    ({'profile': 'x', 'model': 'a100'}, r'give either model \(whole GPUs\) or profile'),
    ({'profile': ''}, r'\.profile must be an mdev type id'),
    ({'profile': 'x', 'size': 2}, r"unknown key\(s\) size"),
    ({'count': 1}, r"unknown model None .*or give profile"),
])
def test_bad_profile_ask_names_the_input(ask: dict, needle: str) -> None:
    with pytest.raises(fleet.FleetInputError, match=r'fleetgpu_vms\[0\] \(x\)\.gpus\[0\].*' + needle):
        fleet.parse_vms([{'name': 'x', 'gpus': [ask]}], fleet.parse_models({'a100': {'vendor_id': '10de', 'device_id': '20b2'}}))


def test_profile_listed_twice_is_refused() -> None:
    with pytest.raises(fleet.FleetInputError, match=r"profile 'T' is listed twice"):
        fleet.parse_vms([{'name': 'x', 'gpus': [{'profile': 't'}, {'profile': 'T'}]}], {})


def test_mode_partition_with_profiles_is_placed() -> None:
    p = prun([phost('n1', [parent('mbochs', {'mbochs-2': 1})])], [pvm('v1', mode='partition')])
    assert list(parts(p)) == ['v1']


def test_report_lists_partitions_and_parent_capacity() -> None:
    existing = [{'uuid': 'aaaaaaaa-0000-4000-8000-000000000001', 'type': 'mbochs-2', 'type_name': 'MBOCHS medium',
                 'parent': 'mbochs', 'held_by': 'other', 'persistent': True, 'collection': False}]
    p = prun([phost('n1', [parent('mbochs', {'mbochs-2': 2}, mdevs=existing)])], [pvm('v1')])
    doc = report.build(p, 'place')
    [h] = doc['hosts']
    rows = {(r['uuid'], r['vm'], r['status']) for r in h['partitions']}
    assert rows == {(existing[0]['uuid'], 'other', 'assigned'),
                    (stable_mdev_uuid('mbochs', 'mbochs-2', 'v1-1'), 'v1', 'placed')}
    assert h['mdev_parents'] == [{'parent': 'mbochs', 'type': 'mbochs-2', 'type_name': 'name of mbochs-2',
                                  'available': 2, 'planned': 1}]
    page = report.render_html(doc)
    assert 'class="partition placed"' in page and stable_mdev_uuid('mbochs', 'mbochs-2', 'v1-1') in page
    assert '<td>profile mbochs-2</td>' in page
