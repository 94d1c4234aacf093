"""Fleet model, drift, placement and report (module_utils/_fleet.py, _fleet_report.py), table-driven."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import fleet_plan as fleet
from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _fleet_report as report

A100 = ('10de', '20b2', 'NVIDIA Corporation', 'GA100 [A100 SXM4 80GB]')
P4 = ('10de', '1bb3', 'NVIDIA Corporation', 'GP104GL [Tesla P4]')
ASPEED = ('1a03', '2000', 'ASPEED Technology, Inc.', 'ASPEED Graphics Family')


def gpu(addr: str, kind: tuple = A100, numa: int | None = 0, state: str = 'vfio-ready', boot: bool = False,
        reasons: list[str] | None = None, group: int | None = None, members: list[str] | None = None,
        subsys: tuple[str, str] = ('10de', '1463')) -> dict:
    vendor, device, vname, dname = kind
    addr = addr if addr.count(':') == 2 else '0000:' + addr
    grp_members = [{'address': a} for a in (members or [addr])]
    return {'address': addr, 'vendor_id': vendor, 'device_id': device, 'vendor_device': '%s:%s' % (vendor, device),
            'subsystem_vendor_id': subsys[0], 'subsystem_device_id': subsys[1],
            'vendor_name': vname, 'device_name': dname, 'subsystem_name': None,
            'driver': 'vfio-pci' if state == 'vfio-ready' else ('nvidia' if vendor == '10de' else 'ast'),
            'state': state, 'boot_vga': boot, 'numa_node': numa, 'iommu_group': group if group is not None else 1,
            'iommu_group_members': grp_members,
            'state_reasons': reasons if reasons is not None else ['%s reason' % state]}


def host(name: str, gpus: list[dict], domains: list[dict] | None = None, libvirt: bool = True,
         status: str = 'ok', allow_boot_vga: bool = False) -> fleet.HostInput:
    return fleet.HostInput(
        name=name, status=status, message='' if status == 'ok' else 'boom',
        facts={'host': {'iommu_enabled': True, 'iommu_type': 'intel'}, 'gpus': gpus} if status == 'ok' else None,
        libvirt={'available': libvirt, 'error': None if libvirt else 'no libvirt at qemu:///system: nope',
                 'domains': domains or []},
        allow_boot_vga=allow_boot_vga)


def dom(name: str, hostdevs: list[str] = (), active: bool = False) -> dict:
    return {'name': name, 'state': 'running' if active else 'shut off', 'active': active, 'persistent': True,
            'hostdevs': list(hostdevs), 'numa_nodes': []}


XML = '<domain type="kvm"><name>%s</name><memory>1</memory></domain>'
MODELS = {'a100': {'vendor_id': '10de', 'device_id': '20b2'}}
WITH_P4 = {'a100': MODELS['a100'], 'p4': {'name': 'GP104GL [Tesla P4]'}}


def vm(name: str, count: int = 1, model: str = 'a100', **kw) -> dict:
    out = {'name': name, 'gpus': [{'model': model, 'count': count}], 'domain_xml': XML % name}
    out.update(kw)
    return out


def run(hosts: list[fleet.HostInput], vms: list[dict], models: dict | None = None, policy: str = 'spread',
        strict: bool = True) -> fleet.FleetPlan:
    inv = {h.name for h in hosts}
    m = fleet.parse_models(MODELS if models is None else models, inv)
    return fleet.plan({h.name: h for h in hosts}, m, fleet.parse_vms(vms, m, inv), policy, strict=strict)


def where(p: fleet.FleetPlan) -> dict[str, tuple[str, list[str]]]:
    return {pl.vm.name: (pl.host, sorted(a for ads in pl.devices.values() for a in ads)) for pl in p.placements}


def two_hosts() -> list[fleet.HostInput]:
    return [host('n1', [gpu('13:00.0'), gpu('14:00.0'), gpu('83:00.0', numa=1)]),
            host('n2', [gpu('13:00.0'), gpu('14:00.0', numa=1)])]


# --- bad input: each a clear error naming the input ---------------------------------------------------

@pytest.mark.parametrize('models,vms,needle', [
    (MODELS, [vm('x', model='h100')], "fleetgpu_vms[0] (x).gpus[0]: unknown model 'h100'"),
    (MODELS, [vm('x', count=0)], 'fleetgpu_vms[0] (x).gpus[0].count must be 1 or more, got 0'),
    (MODELS, [vm('x', count=-2)], 'count must be 1 or more, got -2'),
    (MODELS, [vm('x', count='two')], "count 'two' is not a number"),
    (MODELS, [vm('x'), vm('x')], "VM name 'x' is used twice (entries 0 and 1)"),
    (MODELS, [vm('x', host='nowhere')], "fleetgpu_vms[0] (x).host: 'nowhere' is not a host in the inventory"),
    (MODELS, [vm('x', numa='one')], "fleetgpu_vms[0] (x).numa must be one of required, preferred, any, got 'one'"),
    (MODELS, [vm('x', domain_xml='<domain><name>x</name>')], 'fleetgpu_vms[0] (x).domain_xml is not well-formed XML'),
    (MODELS, [vm('x', domain_xml=XML % 'y')], "domain_xml names the domain 'y', not 'x'"),
    (MODELS, [vm('x', start='yes')], 'fleetgpu_vms[0] (x).start must be true or false'),
    (MODELS, [vm('x', colour='red')], 'fleetgpu_vms[0] (x): unknown key(s) colour'),
    (MODELS, {'name': 'x'}, 'fleetgpu_vms must be a list of VM requests, got a dict'),
    (MODELS, ['x'], 'fleetgpu_vms[0] must be a mapping with name and gpus, got a str'),
    (MODELS, [{'name': 'x', 'gpus': {'model': 'a100'}}], 'fleetgpu_vms[0] (x).gpus must be a non-empty list'),
    ([{'name': 'a100'}], [], 'fleetgpu_models must be a mapping of model name to identity, got a list'),
    ({'a100': ['10de']}, [], 'fleetgpu_models.a100 must be a mapping'),
    ({'a100': {'vendor_id': '10de'}}, [], 'fleetgpu_models.a100: vendor_id needs device_id too'),
    ({'a100': {'vendor_id': 'nvidia', 'device_id': '20b2'}}, [], "fleetgpu_models.a100.vendor_id: 'nvidia' is not four hex"),
    ({'a100': {'name': 'x', 'name_regex': 'y'}}, [], 'fleetgpu_models.a100 needs exactly one identity'),
    ({'a100': {'name_regex': '(['}}, [], "fleetgpu_models.a100.name_regex '([' is not a regular expression"),
    ({'a100': {'vendor_id': '10de', 'device_id': '20b2', 'hosts': ['n1']}}, [], 'fleetgpu_models.a100.hosts must be a mapping'),
    ({'a100': {'vendor_id': '10de', 'device_id': '20b2', 'hosts': {'n9': ['13:00.0']}}}, [],
     'fleetgpu_models.a100.hosts.n9: n9 is not a host in the inventory'),
    ({'a100': {'vendor_id': '10de', 'device_id': '20b2', 'hosts': {'n1': ['13:00']}}}, [],
     "fleetgpu_models.a100.hosts.n1[0]: '13:00' is not a PCI address"),
    ({'a100': {'vendor_id': '10de', 'device_id': '20b2', 'colour': 1}}, [], 'fleetgpu_models.a100: unknown key(s) colour'),
])
def test_bad_input_names_the_input(models, vms, needle: str) -> None:
    with pytest.raises(fleet.FleetInputError) as err:
        run(two_hosts(), vms, models)
    assert needle in str(err.value)


@pytest.mark.parametrize('models,vms,needle', [
    (MODELS, [vm('x', count=6)], "VM 'x' asks for 6 x a100 but the fleet has only 5 GPU(s) of that model"),
    (WITH_P4, [], 'model p4 (name \'GP104GL [Tesla P4]\') matches no GPU on any host'),
    ({'a100': MODELS['a100'], 'nv': {'name_regex': 'nvidia'}}, [], 'matches more than one model: a100, nv'),
])
def test_fleet_wide_model_errors(models, vms, needle: str) -> None:
    hosts = two_hosts()
    hosts[0].facts['gpus'].append(gpu('20:00.0', P4))
    if needle.startswith('model p4'):
        hosts[0].facts['gpus'].pop()
    with pytest.raises(fleet.FleetInputError) as err:
        run(hosts, vms, models)
    assert needle in str(err.value)
    # facts.yml (strict=False) reports the same problem instead of failing
    assert any(needle in e for e in run(hosts, vms, models, strict=False).errors)


# --- identity ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('identity,expect', [
    ({'name': 'GP104GL [Tesla P4]'}, ['0000:20:00.0']),               # brackets are literal
    ({'name': 'gp104gl [tesla p4]'}, ['0000:20:00.0']),               # case-insensitive
    ({'name': 'NVIDIA Corporation GP104GL [Tesla P4]'}, ['0000:20:00.0']),
    ({'name': 'GP104GL'}, []),                                        # exact, not a substring
    ({'name_regex': r'Tesla P\d'}, ['0000:20:00.0']),
    ({'vendor_id': '0x10DE', 'device_id': '1BB3'}, ['0000:20:00.0']),
    ({'vendor_id': '10de', 'device_id': '20b2', 'subsystem_device_id': '147f'}, ['0000:14:00.0']),
])
def test_identity_forms(identity: dict, expect: list[str]) -> None:
    gpus = [gpu('13:00.0'), gpu('14:00.0', subsys=('10de', '147f')), gpu('20:00.0', P4)]
    p = run([host('n1', gpus)], [], {'m': identity}, strict=False)
    assert [g.address for g in p.gpus['n1'] if g.model == 'm'] == expect


# --- placement --------------------------------------------------------------------------------------

def test_spread_and_pack() -> None:
    hosts = [host('n1', [gpu('13:00.0'), gpu('14:00.0'), gpu('15:00.0')]), host('n2', [gpu('13:00.0'), gpu('14:00.0')])]
    spread = where(run(hosts, [vm('a'), vm('b'), vm('c')], policy='spread'))
    assert [spread[v][0] for v in 'abc'] == ['n1', 'n1', 'n2']  # 3 free vs 2 -> n1; then 2 vs 2 -> n1 (name); then n2
    pack = where(run(hosts, [vm('a'), vm('b'), vm('c')], policy='pack'))
    assert [pack[v][0] for v in 'abc'] == ['n2', 'n2', 'n1']


def test_same_inputs_same_plan_and_adding_a_vm_moves_nothing() -> None:
    vms = [vm('a', 2), vm('b', 1)]
    first = where(run(two_hosts(), vms))
    assert first == where(run(two_hosts(), vms))
    bigger = where(run(two_hosts(), vms + [vm('c', 1)]))
    assert {k: bigger[k] for k in first} == first and 'c' in bigger


def test_existing_assignments_are_kept_even_against_the_policy() -> None:
    hosts = two_hosts()
    hosts[1].libvirt['domains'] = [dom('a', ['0000:14:00.0'], active=True)]
    hosts[1].facts['gpus'][1]['state'] = 'in-use'   # QEMU holds it
    got = where(run(hosts, [vm('a', 1), vm('b', 1)], policy='pack'))
    assert got['a'] == ('n2', ['0000:14:00.0'])
    assert got['b'] == ('n2', ['0000:13:00.0'])  # pack: n2 has fewer free GPUs


def test_anchored_vm_tops_up_on_its_own_host_or_fails_without_moving() -> None:
    hosts = two_hosts()
    hosts[1].libvirt['domains'] = [dom('a', ['0000:13:00.0'])]
    got = run(hosts, [vm('a', 2, numa='any')])
    assert where(got)['a'] == ('n2', ['0000:13:00.0', '0000:14:00.0'])
    assert got.placements[0].kept == ['0000:13:00.0'] and got.placements[0].added == ['0000:14:00.0']
    fail = run(hosts, [vm('a', 3, numa='any')])
    assert not fail.placements
    msg = fail.failure_message()
    assert "already holds GPUs on n2 and does not move" in msg and 'capacity: needs 2 x a100, 1 free' in msg


@pytest.mark.parametrize('numa,expect', [
    ('required', ('n1', ['0000:13:00.0', '0000:14:00.0'])),
    ('preferred', ('n1', ['0000:13:00.0', '0000:14:00.0'])),
])
def test_numa_on_one_node(numa: str, expect: tuple) -> None:
    hosts = [host('n1', [gpu('13:00.0', numa=0), gpu('14:00.0', numa=0), gpu('83:00.0', numa=1), gpu('84:00.0', numa=1),
                         gpu('85:00.0', numa=1)])]
    # spread within the host: the node with most free GPUs is node 1 (3 free)
    got = where(run(hosts, [vm('a', 2, numa=numa)]))
    assert got['a'][0] == 'n1' and got['a'][1] == ['0000:83:00.0', '0000:84:00.0']
    pack = where(run(hosts, [vm('a', 2, numa=numa)], policy='pack'))
    assert pack['a'] == expect


def test_numa_required_rejects_a_host_whose_gpus_straddle_nodes() -> None:
    hosts = [host('n1', [gpu('13:00.0', numa=0), gpu('83:00.0', numa=1)])]
    req = run(hosts, [vm('a', 2, numa='required')])
    assert not req.placements
    assert 'numa: enough free GPUs, but not on one NUMA node (node 0: 1 a100; node 1: 1 a100)' in req.failure_message()
    assert where(run(hosts, [vm('a', 2, numa='preferred')]))['a'][1] == ['0000:13:00.0', '0000:83:00.0']


def test_prefers_vfio_ready_over_host_driver() -> None:
    hosts = [host('n1', [gpu('13:00.0', state='available'), gpu('14:00.0', state='vfio-ready')])]
    assert where(run(hosts, [vm('a', 1)]))['a'][1] == ['0000:14:00.0']


@pytest.mark.parametrize('g,allow,placed', [
    (gpu('03:00.0', ASPEED, state='boot-vga', boot=True, reasons=['boot']), False, False),
    (gpu('03:00.0', ASPEED, state='boot-vga', boot=True, reasons=['boot']), True, True),
    (gpu('03:00.0', ASPEED, state='boot-vga', boot=True, reasons=['boot', 'open by Xorg']), True, False),
    (gpu('03:00.0', ASPEED, state='in-use'), True, False),
    (gpu('03:00.0', ASPEED, state='unusable'), True, False),
])
def test_boot_gpu_and_unusable_states(g: dict, allow: bool, placed: bool) -> None:
    models = {'vga': {'vendor_id': '1a03', 'device_id': '2000'}}
    p = run([host('n1', [g], allow_boot_vga=allow)], [vm('a', 1, model='vga')], models)
    assert bool(p.placements) is placed
    if not placed:
        assert 'capacity: needs 1 x vga, 0 free' in p.failure_message()


def test_held_by_another_domain_is_not_free() -> None:
    hosts = [host('n1', [gpu('13:00.0'), gpu('14:00.0')], domains=[dom('other', ['0000:13:00.0'])])]
    assert where(run(hosts, [vm('a', 1)]))['a'][1] == ['0000:14:00.0']


def test_failure_table_lists_every_host_and_its_reason() -> None:
    hosts = [host('n1', [gpu('13:00.0')]), host('n2', [gpu('13:00.0'), gpu('14:00.0')], libvirt=False),
             host('n3', [], status='unreachable'), host('n4', [gpu('13:00.0', numa=0), gpu('83:00.0', numa=1)])]
    p = run(hosts, [vm('big', 2, numa='required'), vm('pinned', 1, host='n2'), vm('ghost', 1, domain_xml=None)])
    msg = p.failure_message()
    assert 'no host was changed: 3 of 3 VM request(s) cannot be placed' in msg
    table = msg.split("VM 'pinned'", maxsplit=1)[0]
    assert re.search(r'n1 +a100: 1 +capacity', table) and 'capacity: needs 2 x a100, 1 free' in table
    assert 'no libvirt: no libvirt at qemu:///system: nope' in table
    assert 'unreachable: boom' in table
    assert 'numa: enough free GPUs, but not on one NUMA node' in table
    assert 'pin: the VM is pinned to n2' in msg
    assert "VM 'ghost'" in msg and 'not defined on any reachable host and it has no domain_xml' in msg


def test_vm_without_domain_xml_goes_where_its_domain_is_defined() -> None:
    hosts = two_hosts()
    hosts[1].libvirt['domains'] = [dom('a')]
    assert where(run(hosts, [vm('a', 1, domain_xml=None)]))['a'][0] == 'n2'


def test_pin_conflicting_with_existing_assignment() -> None:
    hosts = two_hosts()
    hosts[1].libvirt['domains'] = [dom('a', ['0000:13:00.0'])]
    p = run(hosts, [vm('a', 1, host='n1')])
    assert 'pinned to n1 but already holds GPUs on n2' in p.failure_message()


# --- drift ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('mapped,g,needle', [
    (['13:00.0', '15:00.0'], gpu('13:00.0'), 'model a100: 0000:15:00.0 is mapped on n1 but the host has no GPU there'),
    (['13:00.0'], gpu('13:00.0', P4), 'model a100: 0000:13:00.0 on n1 is now 10de:1bb3'),
    (['13:00.0'], gpu('13:00.0', members=['0000:13:00.0', '0000:13:00.1', '0000:12:00.0']),
     'the IOMMU group of 0000:13:00.0 on n1 now also holds 0000:12:00.0'),
])
def test_drift_is_reported_and_refuses_the_model_on_that_host(mapped, g, needle: str) -> None:
    models = {'a100': {'vendor_id': '10de', 'device_id': '20b2', 'hosts': {'n1': mapped, 'n2': ['13:00.0']}}}
    hosts = [host('n1', [g]), host('n2', [gpu('13:00.0')])]
    p = run(hosts, [vm('a', 1, host='n1')], models)
    assert any(needle in d for d in p.drift['n1'])
    assert 'n2' not in p.drift
    assert not p.placements and 'drift: model a100: ' in p.failure_message() and needle in p.failure_message()
    assert where(run(hosts, [vm('a', 1)], models))['a'][0] == 'n2'


def test_mapping_limits_the_model_to_the_mapped_addresses() -> None:
    models = {'a100': {'vendor_id': '10de', 'device_id': '20b2', 'hosts': {'n1': ['14:00.0']}}}
    p = run(two_hosts(), [], models)
    assert [(g.host, g.address) for gs in p.gpus.values() for g in gs if g.model] == [('n1', '0000:14:00.0')]


# --- outputs ----------------------------------------------------------------------------------------

def test_host_plan_and_artifact() -> None:
    hosts = two_hosts() + [host('lab', [])]
    b = {'name': 'b', 'gpus': [{'model': 'a100', 'count': 1}], 'domain_xml': XML % 'b'}
    p = run(hosts, [vm('a', 2, numa='required', start=True), b])
    assert p.artifact() == [{'vm': 'a', 'host': 'n1', 'model': 'a100', 'devices': ['0000:13:00.0', '0000:14:00.0']},
                            {'vm': 'b', 'host': 'n2', 'model': 'a100', 'devices': ['0000:13:00.0']}]
    n1 = p.host_plan('n1')
    assert n1['vfio_host_devices'] == [{'address': '0000:13:00.0'}, {'address': '0000:14:00.0'}, {'address': '0000:83:00.0'}]
    assert n1['libvirt_gpu_domains'] == [{'name': 'a', 'gpus': {'addresses': ['0000:13:00.0', '0000:14:00.0']},
                                          'start': True, 'domain_xml': XML % 'a'}]
    assert p.host_plan('lab') == {'vfio_host_devices': [], 'libvirt_gpu_domains': [], 'vms': []}


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str]] = []
        self.sections: list[tuple[str, str]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == 'tr' and 'gpu' in (a.get('class') or '').split():
            self.rows.append((a['data-host'], a['data-address']))
        if tag == 'section':
            self.sections.append((a['data-host'], a['data-status']))
        if tag in ('script', 'link', 'img', 'iframe') or a.get('src') or (a.get('href') or '').startswith('http'):
            self.external.append(tag)


def test_report_json_and_html(tmp_path: Path) -> None:
    hosts = two_hosts() + [host('dead', [], status='unreachable'), host('broken', [], status='failed')]
    hosts[0].facts['gpus'].append(gpu('20:00.0', ('10de', '9999', 'NVIDIA <b>Corp</b>', 'X & Y')))
    p = run(hosts, [vm('a', 2)], {'a100': MODELS['a100']})
    doc = report.build(p, 'place')
    assert doc['summary']['hosts_unreachable'] == ['dead'] and doc['summary']['hosts_failed'] == ['broken']
    assert doc['models'] == [{'name': 'a100', 'identity': '10de:20b2', 'total': 5, 'free': 3, 'assigned': 2,
                              'unusable': 0, 'hosts': {'n1': 3, 'n2': 2}}]
    n1 = [h for h in doc['hosts'] if h['name'] == 'n1'][0]
    assert [(g['address'], g['vm'], g['status']) for g in n1['gpus']] == [
        ('0000:13:00.0', 'a', 'placed'), ('0000:14:00.0', 'a', 'placed'), ('0000:20:00.0', None, 'not in a pool'),
        ('0000:83:00.0', None, 'free')]
    paths, changed = report.write(doc, str(tmp_path / 'r'))
    assert changed and json.loads(Path(paths['json']).read_text()) == doc
    again, changed = report.write(doc, str(tmp_path / 'r'))
    assert not changed
    text = Path(paths['html']).read_text()
    assert '<b>Corp</b>' not in text and 'NVIDIA &lt;b&gt;Corp&lt;/b&gt; X &amp; Y' in text
    parsed = _Rows()
    parsed.feed(text)
    assert sorted(parsed.sections) == [('broken', 'failed'), ('dead', 'unreachable'), ('n1', 'ok'), ('n2', 'ok')]
    assert len(parsed.rows) == 6 and ('n2', '0000:14:00.0') in parsed.rows
    assert parsed.external == []


def test_report_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / 'file').write_text('x')
    with pytest.raises(report.ReportError) as err:
        report.write({'x': 1}, str(tmp_path / 'file' / 'sub'))
    assert 'fleetgpu_report_dir' in str(err.value) and 'file/sub' in str(err.value)


def test_placement_policy_is_checked() -> None:
    with pytest.raises(fleet.FleetInputError) as err:
        run(two_hosts(), [], policy='random')
    assert "fleetgpu_placement_policy must be spread or pack, got 'random'" in str(err.value)


def test_pin_to_a_host_outside_the_play_and_pin_where_the_domain_is_not() -> None:
    hosts = two_hosts()
    inv = {'n1', 'n2', 'n3'}
    m = fleet.parse_models(MODELS, inv)
    p = fleet.plan({h.name: h for h in hosts}, m, fleet.parse_vms([vm('a', host='n3')], m, inv))
    assert 'it is pinned to n3, which is not a host of this play' in p.failure_message()
    hosts[1].libvirt['domains'] = [dom('b')]
    p = run(hosts, [vm('b', host='n1', domain_xml=None)])
    assert "domain: 'b' is defined on n2 only" in p.failure_message() and 'pin: the VM is pinned to n1' in p.failure_message()
    assert not p.placements


def test_wiring_rides_with_the_vm_to_its_host_and_bad_keys_are_named() -> None:
    wiring = {'numa_mode': 'strict', 'hugepages': '1G'}
    p = run(two_hosts(), [vm('a', 1, numa='required', wiring=wiring)])
    placed = [d for h in ('n1', 'n2') for d in p.host_plan(h)['libvirt_gpu_domains']]
    assert [(d['name'], d['wiring']) for d in placed] == [('a', wiring)]
    with pytest.raises(fleet.FleetInputError, match=r'fleetgpu_vms\[0\] \(x\).wiring: unknown key\(s\) huge'):
        run(two_hosts(), [vm('x', wiring={'huge': '1G'})])
    with pytest.raises(fleet.FleetInputError, match=r'fleetgpu_vms\[0\] \(x\).wiring must be a mapping'):
        run(two_hosts(), [vm('x', wiring='fast')])


def test_binding_dynamic_keeps_the_vms_gpus_out_of_the_vfio_host_pool() -> None:
    p = run(two_hosts(), [vm('a', 1, numa='required', binding='dynamic'), vm('b', 1, binding='static')])
    placed = {d['name']: d for h in ('n1', 'n2') for d in p.host_plan(h)['libvirt_gpu_domains']}
    assert placed['a']['binding'] == 'dynamic' and 'binding' not in placed['b']
    for name in ('n1', 'n2'):
        plan = p.host_plan(name)
        pool = [d['address'] for d in plan['vfio_host_devices']]
        mine = list(plan['libvirt_gpu_domains'])
        dynamic = [a for d in mine if d.get('binding') == 'dynamic' for a in d['gpus']['addresses']]
        static = [a for d in mine if 'binding' not in d for a in d['gpus']['addresses']]
        # the dynamic VM's GPU stays on its host driver; the static one and the free GPUs are the pool
        assert not set(dynamic) & set(pool) and set(static) <= set(pool), plan
    assert sum(len(p.host_plan(h)['vfio_host_devices']) for h in ('n1', 'n2')) == 4


def test_an_unknown_binding_names_the_vm() -> None:
    with pytest.raises(fleet.FleetInputError, match=r"fleetgpu_vms\[0\] \(x\)\.binding must be static .* or dynamic .*, "
                                                    r"got 'sometimes'"):
        run(two_hosts(), [vm('x', binding='sometimes')])


def test_host_plan_names_the_dynamic_gpus_for_vfio_host() -> None:
    p = run(two_hosts(), [vm('a', 2, numa='required', binding='dynamic', host='n1')])
    n1 = p.host_plan('n1')
    assert n1['vfio_host_dynamic_devices'] == ['0000:13:00.0', '0000:14:00.0']
    assert n1['vfio_host_devices'] == [{'address': '0000:83:00.0'}]
    assert 'vfio_host_dynamic_devices' not in p.host_plan('n2')
