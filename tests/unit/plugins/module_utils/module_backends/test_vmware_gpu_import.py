"""VMware import (module_utils/_vmware_import.py): real-shaped .vmx / .ovf files -> fleet VM requests."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import fleet_plan as fleet
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import vmware_gpu_import as vi

FIXTURES = Path(__file__).resolve().parents[3] / 'fixtures' / 'vmware'
GOOD = FIXTURES / 'good'
BAD = FIXTURES / 'bad'
MODELS = {
    'a100': {'vendor_id': '10de', 'device_id': '20b2'},
    't4': {'vendor_id': '10de', 'device_id': '1eb8'},
    'p4': {'name': 'GP104GL [Tesla P4]'},          # a model by name cannot match an imported id; ignored
}


def one(name: str, models: object = 'fleet') -> vi.ImportResult:
    return vi.import_paths([str(GOOD / name)], MODELS if models == 'fleet' else models)


def test_vmx_without_passthrough_gives_no_request() -> None:
    result = one('none.vmx')
    assert (result.vms, result.pending, result.skipped) == ([], [], [])
    assert result.sources == [{'vm': 'web01', 'file': str(GOOD / 'none.vmx'), 'devices': []}]


def test_vmx_with_one_gpu_by_identity_not_by_old_address() -> None:
    result = one('one-gpu.vmx')
    assert result.vms == [{'name': 'train01', 'gpus': [{'model': 'a100', 'count': 1}]}]
    device = result.sources[0]['devices'][0]
    # the old host's address and system id are kept as information, never in the request
    assert device['old_host_address'] == '00000:059:00.0'
    assert device['old_host_system_id'].startswith('5f3e9a21')
    assert device['line'] == 11
    assert '059' not in repr(result.vms)
    # what import gives is what fleet_plan takes
    requests = fleet.parse_vms(result.vms, fleet.parse_models(MODELS))
    assert [(r.name, r.describe()) for r in requests] == [('train01', '1 x a100')]


def test_vmx_with_two_gpus_counts_them_and_unescapes_the_name() -> None:
    result = one('two-gpus.vmx')
    assert result.vms == [{'name': 'render"A"', 'gpus': [{'model': 't4', 'count': 2}]}]
    assert [d['subsystem_device_id'] for d in result.sources[0]['devices']] == ['12a2', '12a2']


def test_subsystem_ids_pick_the_more_specific_model() -> None:
    models = dict(MODELS, t4_dell={'vendor_id': '10de', 'device_id': '1eb8', 'subsystem_vendor_id': '10de',
                                   'subsystem_device_id': '12a2'},
                  t4_other={'vendor_id': '10de', 'device_id': '1eb8', 'subsystem_device_id': '0001'})
    assert one('two-gpus.vmx', models).vms[0]['gpus'] == [{'model': 't4_dell', 'count': 2}]


def test_vgpu_profile_is_pending_never_dropped() -> None:
    result = one('vgpu.vmx')
    assert result.vms == []
    assert len(result.pending) == 1
    pending = result.pending[0]
    assert (pending['vm'], pending['kind'], pending['gpus']) == ('vdi07', 'vgpu', [{'profile': 'grid_t4-4q', 'count': 1}])
    assert 'mdev' in pending['reason'] and 'grid_t4-4q' in pending['reason']


def test_case_quoting_and_id_variants() -> None:
    result = one('variants.vmx')
    src = result.sources[0]
    assert src['vm'] == 'mixed case'                       # DISPLAYNAME in single quotes
    by_key = {d['key']: d for d in src['devices']}
    assert by_key['pciPassthru0']['vendor_id'] == '10de'   # bare decimal 4318
    assert by_key['pciPassthru0']['device_id'] == '20b2'   # '0x20B2'
    assert by_key['pciPassthru3']['device_id'] == '8c6f'   # signed 16-bit -0x7391, comment after the quote
    assert by_key['pciPassthru3']['line'] == 14
    skipped = {s['key']: s['reason'] for s in result.skipped}
    assert set(skipped) == {'pciPassthru1', 'pciPassthru2', 'pciPassthru4'}
    assert 'disabled' in skipped['pciPassthru1']
    assert 'Mellanox' in skipped['pciPassthru2'] and 'not a GPU' in skipped['pciPassthru2']
    assert "custom label 'gpu-pool-a'" in skipped['pciPassthru4']
    # one GPU of the VM has no fleet model: the whole VM waits (pending), it is not half-provisioned
    assert result.vms == []
    assert result.pending[0]['kind'] == 'no_model'
    assert 'variants.vmx:14 (pciPassthru3): 1002:8c6f has no model' in result.pending[0]['reason']
    assert result.pending[0]['whole_gpus'] == [{'model': 'a100', 'count': 1}]


def test_the_nic_keeps_its_old_address_as_information() -> None:
    nic = [s for s in one('variants.vmx').skipped if s['key'] == 'pciPassthru2'][0]
    assert (nic['old_host_address'], nic['file'], nic['line'], nic['vm']) == (
        '0000:81:00.0', str(GOOD / 'variants.vmx'), 10, 'mixed case')


def test_dynamic_directpath_by_allowed_devices() -> None:
    assert one('dynamic.vmx').vms == [{'name': 'dyn01', 'gpus': [{'model': 'a100', 'count': 1}]}]


def test_without_a_model_table_every_gpu_request_says_what_is_missing() -> None:
    result = one('one-gpu.vmx', None)
    assert result.vms == []
    assert result.pending[0]['kind'] == 'no_model'
    assert 'one-gpu.vmx:11 (pciPassthru0): 10de:20b2 has no model in the fleet model table (fleetgpu_models names: none)' \
        in result.pending[0]['reason']


def test_ovf_without_vgpu() -> None:
    result = one('no-vgpu.ovf')
    assert result.vms == [{'name': 'infer02', 'gpus': [{'model': 't4', 'count': 1}]}]
    assert result.sources[0]['devices'][0]['old_host_address'] == '0000:3b:00.0'
    assert result.sources[0]['devices'][0]['line'] == 18


def test_ovf_with_vgpu() -> None:
    result = one('with-vgpu.ovf')
    assert result.vms == []
    assert [(p['vm'], p['gpus'], p['devices'][0]['line']) for p in result.pending] == [
        ('vdi-template', [{'profile': 'grid_t4-4q', 'count': 1}], 20)]


def test_ovf_extra_config_and_several_systems() -> None:
    result = one('extraconfig.ovf')
    assert [s['vm'] for s in result.sources] == ['plain-vm', 'ec-gpu']
    assert result.vms == [{'name': 'ec-gpu', 'gpus': [{'model': 'a100', 'count': 1}]}]


def test_a_directory_is_read_recursively_and_sorted() -> None:
    result = vi.import_paths([str(GOOD)], MODELS)
    assert [Path(f).name for f in result.files] == sorted(p.name for p in GOOD.iterdir())
    assert sorted(v['name'] for v in result.vms) == ['dyn01', 'ec-gpu', 'infer02', 'render"A"', 'train01']
    assert sorted(p['vm'] for p in result.pending) == ['mixed case', 'vdi-template', 'vdi07']
    # every passthrough entry is accounted for: in a request, pending or skipped
    entries = sum(len(s['devices']) for s in result.sources)
    in_vms = sum(g['count'] for v in result.vms for g in v['gpus'])
    in_pending = sum(len(p['devices']) for p in result.pending)
    assert entries == in_vms + in_pending + len(result.skipped)


@pytest.mark.parametrize('name, line, fragment', [
    ('bad-noequals.vmx', 4, 'not a "key = value" line'),
    ('bad-quote.vmx', 3, 'has no closing quote'),
    ('bad-id.vmx', 4, "pciPassthru0.deviceId = '0xZZZZ' is not a PCI id"),
    ('bad-present.vmx', 2, "present = 'maybe' is neither TRUE nor FALSE"),
    ('bad-twice.vmx', 3, 'is set again with a different value (first at line 2'),
    ('bad-dtd.ovf', 2, 'DOCTYPE is refused'),
    ('bad-xml.ovf', 5, 'not well-formed XML'),
])
def test_bad_input_names_file_and_line(name: str, line: int, fragment: str) -> None:
    with pytest.raises(vi.VmwareImportError) as info:
        vi.import_paths([str(BAD / name)], MODELS)
    message = str(info.value)
    assert message.startswith('%s:%d' % (BAD / name, line)), message
    assert fragment in message
    assert 'Traceback' not in message


@pytest.mark.parametrize('text, fragment', [
    ('<?xml version="1.0"?>\n<!ENTITY x "y">\n<Envelope/>', 'ENTITY is refused'),
    ('<Project/>', 'not an OVF <Envelope>'),
    ('<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>', 'no VirtualSystem'),
    ('<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><VirtualSystem/></Envelope>', 'neither ovf:id nor <Name>'),
])
def test_bad_ovf_shapes(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / 'x.ovf'
    path.write_text(text)
    with pytest.raises(vi.VmwareImportError, match=re.escape(fragment)):
        vi.import_paths([str(path)])


def test_passthrough_item_with_wrong_resource_type(tmp_path: Path) -> None:
    text = (GOOD / 'no-vgpu.ovf').read_text()
    text = text.replace('<rasd:ResourceType>1</rasd:ResourceType>', '<rasd:ResourceType>17</rasd:ResourceType>')
    path = tmp_path / 'rt.ovf'
    path.write_text(text)
    with pytest.raises(vi.VmwareImportError, match=re.escape("%s:18: item 'PCI device 0'" % path)):
        vi.import_paths([str(path)])


@pytest.mark.parametrize('data, fragment', [
    (b'displayName = "x"\x00\n', 'binary data'),
    (b'displayName = "x"\npciPassthru0.present = "\xff"\n', ':2: not UTF-8 text'),
])
def test_binary_or_non_utf8_files(tmp_path: Path, data: bytes, fragment: str) -> None:
    path = tmp_path / 'x.vmx'
    path.write_bytes(data)
    with pytest.raises(vi.VmwareImportError, match=re.escape(fragment)):
        vi.import_paths([str(path)])


def test_paths_that_are_not_vm_files(tmp_path: Path) -> None:
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(vi.VmwareImportError, match='notes.txt: not a .vmx or .ovf file'):
        vi.import_paths([str(tmp_path / 'notes.txt')])
    with pytest.raises(vi.VmwareImportError, match='missing: no such file or directory'):
        vi.import_paths([str(tmp_path / 'missing')])
    # a directory with no VM file gives nothing, and says nothing is wrong
    assert vi.import_paths([str(tmp_path)]).as_dict()['vms'] == []


def test_the_same_vm_name_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / 'a.vmx').write_text('displayName = "dup"\n')
    (tmp_path / 'b.vmx').write_text('displayName = "dup"\n')
    with pytest.raises(vi.VmwareImportError, match=r"b\.vmx: VM name 'dup' is also given by .*a\.vmx"):
        vi.import_paths([str(tmp_path)])


def test_a_bad_model_table_names_the_model() -> None:
    with pytest.raises(vi.VmwareImportError, match=r'models: fleetgpu_models\.t4\.device_id'):
        vi.import_paths([str(GOOD / 'one-gpu.vmx')], {'t4': {'vendor_id': '10de', 'device_id': 'zz'}})


@pytest.mark.parametrize('line, fields', [
    ('pciPassthru0.vgpu = "grid_a100-3-20c"', {'kind': 'vgpu', 'profile': 'grid_a100-3-20c'}),
    ('pciPassthru0.vgpu = "not a profile"', {'kind': 'skip'}),
    ('pciPassthru0.vendorId = "0x8086"\npciPassthru0.deviceId = "0x1572"', {'kind': 'skip'}),    # Intel X710 NIC
    ('pciPassthru0.vendorId = "0x8086"\npciPassthru0.deviceId = "0x56c0"', {'kind': 'gpu'}),     # Intel Flex GPU
    ('pciPassthru0.vendorId = "0x10de"', {'kind': 'skip'}),                                       # no deviceId
])
def test_classify(line: str, fields: dict) -> None:
    src = vi.parse_vmx('displayName = "c"\npciPassthru0.present = "TRUE"\n%s\n' % line, 'c.vmx')
    dev = vi.classify(src.entries[0])
    for key, value in fields.items():
        assert getattr(dev, key) == value, (key, dev)
    if dev.kind == 'skip':
        assert dev.reason
