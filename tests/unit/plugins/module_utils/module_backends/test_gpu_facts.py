"""gpu_facts engine over the simulated topologies: every field, every state."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import FactsError, gather
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciIds
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from tests.sim import simkernel

REPO = Path(__file__).resolve().parents[5]
TOPOLOGIES = ['workstation', 'hgx8', 'amd_gpu', 'shared_group', 'sriov', 'iommu_off', 'amd_host', 'stuck',
              'in_use', 'identical_pair', 'generated16']


@pytest.fixture(scope='module')
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {name: simkernel.materialize(name, str(tmp_path_factory.mktemp(name))) for name in TOPOLOGIES}


@pytest.fixture(scope='module')
def facts(roots: dict) -> dict:
    out = {}
    for name, root in roots.items():
        if name == 'stuck':
            continue
        out[name] = gather(Sysfs(root), timeout=2.0)
    return out


def gpu(doc: dict, address: str) -> dict:
    for entry in doc['gpus']:
        if entry['address'] == address:
            return entry
    raise AssertionError('no GPU %s in %s' % (address, [g['address'] for g in doc['gpus']]))


CONTRACT_KEYS = {'address', 'vendor_id', 'device_id', 'vendor_device', 'subsystem_vendor_id', 'subsystem_device_id',
                 'class', 'class_name', 'vendor_name', 'device_name', 'subsystem_name', 'driver', 'iommu_group',
                 'iommu_group_members', 'companions', 'boot_vga', 'numa_node', 'reset_method', 'sriov', 'mdev_types',
                 'state', 'state_reasons', 'stuck', 'quarantined'}
HOST_KEYS = {'cpu_vendor', 'cpu_vendor_id', 'virtualization', 'iommu_enabled', 'iommu_type', 'interrupt_remapping',
             'cmdline', 'kernel_release', 'vfio_pci_builtin'}


@pytest.mark.parametrize('name', [t for t in TOPOLOGIES if t != 'stuck'])
def test_contract_shape(facts: dict, name: str) -> None:
    doc = facts[name]
    assert set(doc) == {'host', 'gpus', 'mdev_parents', 'sriov_parents'}
    assert HOST_KEYS <= set(doc['host'])
    addresses = [g['address'] for g in doc['gpus']]
    assert addresses == sorted(addresses) and addresses
    for entry in doc['gpus']:
        assert CONTRACT_KEYS <= set(entry), CONTRACT_KEYS - set(entry)
        assert entry['vendor_device'] == '%s:%s' % (entry['vendor_id'], entry['device_id'])
        assert entry['state'] in ('available', 'vfio-ready', 'boot-vga', 'in-use', 'unusable')
        assert entry['state_reasons'] and all(isinstance(r, str) for r in entry['state_reasons'])
        assert set(entry['sriov']) == {'totalvfs', 'numvfs', 'is_vf', 'physfn', 'vfs'}
        assert entry['stuck'] == []
        for member in entry['iommu_group_members']:
            assert set(member) == {'address', 'vendor_id', 'device_id', 'class', 'class_name', 'driver', 'is_bridge'}
        for comp in entry['companions']:
            assert set(comp) == {'address', 'vendor_id', 'device_id', 'class', 'class_name', 'driver', 'kind'}
        json.dumps(entry)


# topology, address, field, expected
FIELDS = [
    ('workstation', '0000:01:00.0', 'vendor_id', '10de'),
    ('workstation', '0000:01:00.0', 'device_id', '2204'),
    ('workstation', '0000:01:00.0', 'subsystem_vendor_id', '1458'),
    ('workstation', '0000:01:00.0', 'subsystem_device_id', '403b'),
    ('workstation', '0000:01:00.0', 'class', '0x030000'),
    ('workstation', '0000:01:00.0', 'class_name', 'VGA compatible controller'),
    ('workstation', '0000:01:00.0', 'driver', 'nvidia'),
    ('workstation', '0000:01:00.0', 'boot_vga', False),
    ('workstation', '0000:01:00.0', 'numa_node', None),
    ('workstation', '0000:01:00.0', 'reset_method', ['bus']),
    ('workstation', '0000:01:00.0', 'mdev_types', []),
    ('workstation', '0000:01:00.0', 'state', 'available'),
    ('workstation', '0000:00:02.0', 'boot_vga', True),
    ('workstation', '0000:00:02.0', 'state', 'boot-vga'),
    ('workstation', '0000:00:02.0', 'reset_method', ['flr', 'bus']),
    ('hgx8', '0000:13:00.0', 'class', '0x030200'),
    ('hgx8', '0000:13:00.0', 'class_name', '3D controller'),
    ('hgx8', '0000:13:00.0', 'numa_node', 0),
    ('hgx8', '0000:a3:00.0', 'numa_node', 1),
    ('hgx8', '0000:13:00.0', 'state', 'available'),
    ('hgx8', '0000:03:00.0', 'state', 'boot-vga'),
    ('amd_gpu', '0000:0d:00.0', 'driver', 'amdgpu'),
    ('amd_gpu', '0000:0d:00.0', 'state', 'available'),
    ('shared_group', '0000:03:00.0', 'state', 'unusable'),
    ('shared_group', '0000:01:00.0', 'state', 'available'),
    ('sriov', '0000:01:00.0', 'mdev_types', ['nvidia-592', 'nvidia-593', 'nvidia-594']),
    ('sriov', '0000:00:02.0', 'mdev_types', ['i915-GVTg_V5_4', 'i915-GVTg_V5_8']),
    ('iommu_off', '0000:01:00.0', 'state', 'unusable'),
    ('iommu_off', '0000:01:00.0', 'iommu_group', None),
    ('iommu_off', '0000:01:00.0', 'iommu_group_members', []),
    ('amd_host', '0000:41:00.0', 'state', 'vfio-ready'),
    ('amd_host', '0000:41:00.0', 'driver', 'vfio-pci'),
    ('amd_host', '0000:81:00.0', 'state', 'available'),
    ('amd_host', '0000:81:00.0', 'numa_node', 1),
    ('in_use', '0000:01:00.0', 'state', 'in-use'),
    ('in_use', '0000:02:00.0', 'state', 'in-use'),
    ('in_use', '0000:03:00.0', 'state', 'in-use'),
    ('in_use', '0000:03:00.0', 'iommu_group', 20),
    ('in_use', '0000:00:02.0', 'state', 'boot-vga'),
    ('identical_pair', '0000:00:01.0', 'state', 'boot-vga'),
    ('identical_pair', '0000:01:00.0', 'state', 'available'),
    ('identical_pair', '0000:01:00.0', 'class', '0x038000'),
    ('identical_pair', '0000:01:00.0', 'class_name', 'Display controller'),
    ('identical_pair', '0000:02:00.0', 'driver', None),
    ('identical_pair', '0000:02:00.0', 'state', 'available'),
]


@pytest.mark.parametrize('name,address,field,expected', FIELDS)
def test_field(facts: dict, name: str, address: str, field: str, expected: object) -> None:
    assert gpu(facts[name], address)[field] == expected


# topology, host field, expected
HOST_FIELDS = [
    ('workstation', 'cpu_vendor', 'intel'),
    ('workstation', 'cpu_vendor_id', 'GenuineIntel'),
    ('workstation', 'virtualization', 'vmx'),
    ('workstation', 'iommu_enabled', True),
    ('workstation', 'iommu_type', 'intel'),
    ('workstation', 'interrupt_remapping', True),
    ('workstation', 'kernel_release', '6.1.0-27-amd64'),
    ('workstation', 'vfio_pci_builtin', False),
    ('amd_host', 'cpu_vendor', 'amd'),
    ('amd_host', 'virtualization', 'svm'),
    ('amd_host', 'iommu_type', 'amd'),
    ('amd_host', 'interrupt_remapping', True),
    ('amd_gpu', 'iommu_type', 'amd'),
    ('iommu_off', 'iommu_enabled', False),
    ('iommu_off', 'iommu_type', None),
    ('iommu_off', 'interrupt_remapping', None),
]


@pytest.mark.parametrize('name,field,expected', HOST_FIELDS)
def test_host_field(facts: dict, name: str, field: str, expected: object) -> None:
    assert facts[name]['host'][field] == expected


def test_cmdline_is_reported(facts: dict) -> None:
    assert facts['workstation']['host']['cmdline'].endswith('quiet intel_iommu=on')


def test_group_and_companions(facts: dict) -> None:
    entry = gpu(facts['workstation'], '0000:01:00.0')
    assert [m['address'] for m in entry['iommu_group_members']] == ['0000:01:00.0', '0000:01:00.1']
    assert entry['companions'] == [{'address': '0000:01:00.1', 'vendor_id': '10de', 'device_id': '1aef',
                                    'class': '0x040300', 'class_name': 'Audio device', 'driver': 'snd_hda_intel',
                                    'kind': 'audio'}]
    amd = gpu(facts['amd_gpu'], '0000:0d:00.0')
    assert [(c['address'], c['kind']) for c in amd['companions']] == [
        ('0000:0d:00.1', 'audio'), ('0000:0d:00.2', 'usb'), ('0000:0d:00.3', 'ucsi')]


def test_shared_group_reason_names_the_nic(facts: dict) -> None:
    entry = gpu(facts['shared_group'], '0000:03:00.0')
    members = {m['address']: m for m in entry['iommu_group_members']}
    assert members['0000:02:00.0']['is_bridge'] is True
    assert members['0000:03:01.0']['is_bridge'] is False
    assert any('0000:03:01.0' in r and 'Ethernet controller' in r for r in entry['state_reasons'])
    assert not any('0000:03:00.1' in r for r in entry['state_reasons'])  # the GPU's own audio is fine


def test_sriov_fields(facts: dict) -> None:
    pf = gpu(facts['sriov'], '0000:01:00.0')
    assert pf['sriov'] == {'totalvfs': 32, 'numvfs': 4, 'is_vf': False, 'physfn': None,
                           'vfs': ['0000:01:00.4', '0000:01:00.5', '0000:01:00.6', '0000:01:00.7']}
    vf = gpu(facts['sriov'], '0000:01:00.5')
    assert vf['sriov']['is_vf'] is True and vf['sriov']['physfn'] == '0000:01:00.0'
    assert pf['companions'] == []  # VFs are not companions
    plain = gpu(facts['workstation'], '0000:01:00.0')
    assert plain['sriov'] == {'totalvfs': None, 'numvfs': None, 'is_vf': False, 'physfn': None, 'vfs': []}


def test_in_use_reasons_name_the_process(facts: dict) -> None:
    reasons = {g['address']: g['state_reasons'] for g in facts['in_use']['gpus']}
    assert any('/dev/dri/card1' in r and 'Xorg' in r and '1342' in r for r in reasons['0000:01:00.0'])
    assert any('/dev/nvidia0' in r and 'python3' in r for r in reasons['0000:02:00.0'])
    assert any('/dev/vfio/20' in r and 'qemu-system-x86' in r for r in reasons['0000:03:00.0'])


def test_hgx8_selection(facts: dict) -> None:
    doc = facts['hgx8']
    gpus = [g for g in doc['gpus'] if g['class'] == '0x030200']
    assert len(gpus) == 8
    assert len(set(g['iommu_group'] for g in gpus)) == 8
    # NVSwitch bridges (0x0680) are not GPUs and not bridges for grouping
    assert all(not g['class'].startswith('0x0680') for g in doc['gpus'])


def test_generated_host(facts: dict) -> None:
    gpus = [g for g in facts['generated16']['gpus'] if g['class'] == '0x030200']
    assert len(gpus) == 16
    assert all(g['state'] == 'available' for g in gpus)


def test_names_from_pci_ids(roots: dict, tmp_path: Path) -> None:
    ids = tmp_path / 'pci.ids'
    ids.write_text('# test ids\n10de  NVIDIA Corporation\n\t2204  GA102 [GeForce RTX 3090]\n'
                   '\t\t1458 403b  GeForce RTX 3090 Gaming OC\n\t2206  GA102\n1002  AMD\n')
    doc = gather(Sysfs(roots['workstation']), pci_ids=PciIds(str(ids)))
    entry = gpu(doc, '0000:01:00.0')
    assert entry['vendor_name'] == 'NVIDIA Corporation'
    assert entry['device_name'] == 'GA102 [GeForce RTX 3090]'
    assert entry['subsystem_name'] == 'GeForce RTX 3090 Gaming OC'
    intel = gpu(doc, '0000:00:02.0')
    assert intel['vendor_name'] is None and intel['device_name'] is None


def test_names_without_pci_ids(roots: dict, tmp_path: Path) -> None:
    doc = gather(Sysfs(roots['workstation']), pci_ids=PciIds(str(tmp_path / 'absent')))
    assert all(g['vendor_name'] is None and g['device_name'] is None for g in doc['gpus'])


# options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs,expected', [
    ({'vendors': ['10de']}, ['0000:01:00.0']),
    ({'vendors': ['0x8086']}, ['0000:00:02.0']),
    ({'vendors': ['10DE', '8086']}, ['0000:00:02.0', '0000:01:00.0']),
    ({'vendors': ['1002']}, []),
    ({'addresses': ['01:00.0']}, ['0000:01:00.0']),
    ({'addresses': ['0000:01:00.1']}, ['0000:01:00.1']),  # an explicit address is reported whatever its class
    ({'addresses': ['0000:01:00.0', '00:02.0'], 'vendors': ['8086']}, ['0000:00:02.0']),
])
def test_selection_options(roots: dict, kwargs: dict, expected: list) -> None:
    doc = gather(Sysfs(roots['workstation']), **kwargs)
    assert [g['address'] for g in doc['gpus']] == expected


def test_include_accelerators(tmp_path: Path) -> None:
    topo = simkernel.load_topology('workstation')
    topo['pci'].append({'address': '00:1d.0', 'vendor': '8086', 'device': '1901', 'class': 0x060400,
                        'driver': 'pcieport', 'children': [
                            {'address': '05:00.0', 'vendor': '1da3', 'device': '1020', 'class': 0x120000,
                             'driver': 'habanalabs'}]})
    root = simkernel.materialize(topo, str(tmp_path))
    assert '0000:05:00.0' not in [g['address'] for g in gather(Sysfs(root))['gpus']]
    doc = gather(Sysfs(root), include_accelerators=True)
    assert gpu(doc, '0000:05:00.0')['class_name'] == 'Processing accelerators'


@pytest.mark.parametrize('kwargs,needle', [
    ({'addresses': ['0000:01:00.8']}, "'0000:01:00.8'"),
    ({'addresses': ['../../etc']}, "'../../etc'"),
    ({'addresses': ['zz:00.0']}, "'zz:00.0'"),
    ({'addresses': ['0000:09:00.0']}, '0000:09:00.0'),
    ({'vendors': ['nvidia']}, "'nvidia'"),
    ({'vendors': ['10de0']}, "'10de0'"),
])
def test_bad_input_names_the_input(roots: dict, kwargs: dict, needle: str) -> None:
    with pytest.raises(FactsError) as info:
        gather(Sysfs(roots['workstation']), **kwargs)
    assert needle in str(info.value)


def test_not_a_sysfs_tree(tmp_path: Path) -> None:
    with pytest.raises(FactsError, match='sysfs_root'):
        gather(Sysfs(str(tmp_path / 'sys')))


# stuck device -------------------------------------------------------------------------------------
def test_stuck_device_is_reported_within_the_bound(roots: dict) -> None:
    start = time.monotonic()
    doc = gather(Sysfs(roots['stuck']), timeout=0.5)
    elapsed = time.monotonic() - start
    entry = gpu(doc, '0000:01:00.0')
    assert entry['stuck'] == ['driver_override', 'sriov_numvfs', 'reset_method']
    assert entry['state'] == 'unusable'
    assert any('did not answer' in r for r in entry['state_reasons'])
    assert entry['vendor_id'] == '1002' and entry['reset_method'] is None
    healthy = gpu(doc, '0000:02:00.0')
    assert healthy['stuck'] == [] and healthy['reset_method'] == ['flr', 'bus'] and healthy['state'] == 'available'
    # one bound for the stuck device (its other locked attributes are not tried), not three
    assert elapsed < 0.5 * 3, elapsed


# the module itself --------------------------------------------------------------------------------
def run_module(name: str, args: dict, tmp_path: Path) -> tuple[int, dict]:
    argfile = tmp_path / 'args.json'
    argfile.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': args}))
    env = dict(os.environ, PYTHONPATH='%s:%s' % (REPO / '.cache' / 'pyroot', os.environ.get('PYTHONPATH', '')))
    proc = subprocess.run([sys.executable, str(REPO / 'plugins' / 'modules' / ('%s.py' % name)), str(argfile)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert 'Traceback' not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_module_returns_facts(roots: dict, tmp_path: Path) -> None:
    rc, out = run_module('gpu_facts', {'sysfs_root': roots['workstation']}, tmp_path)
    assert rc == 0 and out['changed'] is False
    assert [g['address'] for g in out['ansible_facts']['gpu_passthrough']['gpus']] == ['0000:00:02.0', '0000:01:00.0']


@pytest.mark.parametrize('args,needle', [
    ({'addresses': ['0000:01:00.9']}, '0000:01:00.9'),
    ({'addresses': ['0000:77:00.0']}, '0000:77:00.0'),
    ({'vendors': ['xyz']}, 'xyz'),
    ({'timeout': 0}, 'timeout'),
])
def test_module_bad_input(roots: dict, tmp_path: Path, args: dict, needle: str) -> None:
    args = dict(args, sysfs_root=roots['workstation'])
    rc, out = run_module('gpu_facts', args, tmp_path)
    assert rc != 0 and out['failed'] is True
    assert needle in out['msg']


def test_unreadable_attribute_fails_naming_it(tmp_path: Path) -> None:
    root = simkernel.materialize('workstation', str(tmp_path / 'w'))
    vendor = os.path.join(root, 'bus', 'pci', 'devices', '0000:01:00.0', 'vendor')
    os.unlink(vendor)
    os.mkdir(vendor)  # a read now fails with EISDIR, as an attribute the kernel refuses would
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import SysfsError
    with pytest.raises(SysfsError) as info:
        gather(Sysfs(root))
    assert 'vendor' in str(info.value) and '0000:01:00.0' in str(info.value)
    rc, out = run_module('gpu_facts', {'sysfs_root': root}, tmp_path)
    assert rc != 0 and '0000:01:00.0/vendor' in out['msg']


def test_unusable_lists_every_obstacle(facts: dict) -> None:
    reasons = gpu(facts['iommu_off'], '0000:01:00.0')['state_reasons']
    assert 'IOMMU is off' in reasons[0] and 'intel_iommu=on' in reasons[0]
    assert any('boot VGA' in r for r in reasons[1:])


# ----------------------------------------------------------------------------- partitioned devices (issue 14)
def test_sriov_parents_list_every_sr_iov_function_not_only_gpus(tmp_path: Path) -> None:
    root = simkernel.materialize('partition', str(tmp_path / 'k'))
    rules = tmp_path / 'k' / 'etc' / 'udev' / 'rules.d'
    rules.mkdir(parents=True)
    (rules / '70-fleetgpu-passthrough-sriov-0000:03:00.0.rules').write_text(
        'ACTION=="bind", SUBSYSTEM=="pci", KERNEL=="0000:03:00.0", ATTR{sriov_numvfs}="3"\n')
    doc = gather(Sysfs(root), timeout=2.0)
    assert [(p['address'], p['totalvfs'], p['numvfs'], p['driver'], p['persisted']) for p in doc['sriov_parents']] == [
        ('0000:00:05.0', 4, 0, 'nvme', None), ('0000:03:00.0', 8, 0, 'i915', 3)]


def test_sriov_parents_vfs_with_their_groups_and_holders(roots: dict, facts: dict) -> None:
    entry = [p for p in facts['sriov']['sriov_parents'] if p['address'] == '0000:01:00.0'][0]
    assert entry['numvfs'] == 4 and len(entry['vfs']) == 4
    assert all(v['driver'] == 'nvidia' and isinstance(v['iommu_group'], int) and v['held_by'] is None
               for v in entry['vfs'])


def test_a_stuck_pf_is_listed_with_numvfs_null(roots: dict) -> None:
    doc = gather(Sysfs(roots['stuck']), timeout=0.5)
    assert all(p['numvfs'] is None for p in doc['sriov_parents'] if p['address'] in
               [g['address'] for g in doc['gpus'] if g['stuck']])


def test_mdev_parents_types_names_and_mdevs(tmp_path: Path) -> None:
    root = simkernel.materialize('partition', str(tmp_path / 'k'))
    doc = gather(Sysfs(root), timeout=2.0)
    parents = {p['parent']: p for p in doc['mdev_parents']}
    assert sorted(parents) == ['0000:04:00.0', 'mbochs']
    t4 = {t['type']: t for t in parents['0000:04:00.0']['types']}
    assert t4['nvidia-224'] == {'type': 'nvidia-224', 'type_name': 'GRID T4-4Q', 'description':
                                'num_heads=4, frl_config=60, framebuffer=4096M', 'device_api': 'vfio-pci',
                                'available_instances': 4}
    assert [t['type_name'] for t in parents['mbochs']['types']] == ['mbochs-small', 'mbochs-medium', 'mbochs-large']
    assert parents['mbochs']['mdevs'] == []
