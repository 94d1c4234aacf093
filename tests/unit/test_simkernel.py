"""The simulated kernel trees are shaped like the kernel's own."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from tests.sim import simkernel

ALL = simkernel.topology_names()


@pytest.fixture(scope='module')
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = {}
    for name in ALL:
        dest = tmp_path_factory.mktemp(name)
        out[name] = simkernel.materialize(name, str(dest))
    return out


def test_every_required_topology_exists() -> None:
    for name in ('workstation', 'hgx8', 'amd_gpu', 'shared_group', 'sriov', 'iommu_off', 'amd_host',
                 'stuck', 'in_use', 'identical_pair', 'generated16'):
        assert name in ALL


@pytest.mark.parametrize('name', ALL)
def test_bus_links_are_relative_and_resolve(trees: dict, name: str) -> None:
    sys_root = trees[name]
    devices = os.path.join(sys_root, 'bus', 'pci', 'devices')
    entries = os.listdir(devices)
    assert entries
    for addr in entries:
        link = os.path.join(devices, addr)
        target = os.readlink(link)
        assert target.startswith('../../../devices/pci'), target
        assert target.endswith('/' + addr)
        real = os.path.realpath(link)
        assert os.path.isdir(real)
        assert real.startswith(os.path.join(os.path.realpath(sys_root), 'devices') + os.sep)
        for attr in ('vendor', 'device', 'class', 'subsystem_vendor', 'subsystem_device', 'numa_node'):
            assert os.path.isfile(os.path.join(real, attr)), (addr, attr)
        with open(os.path.join(real, 'vendor')) as handle:
            assert len(handle.read()) == 7  # "0x10de\n"
        with open(os.path.join(real, 'class')) as handle:
            assert len(handle.read()) == 9  # "0x030000\n"
        assert os.readlink(os.path.join(real, 'subsystem')).endswith('bus/pci')
        assert os.path.realpath(os.path.join(real, 'subsystem')) == os.path.realpath(os.path.join(sys_root, 'bus', 'pci'))


@pytest.mark.parametrize('name', ALL)
def test_driver_links_have_the_right_depth(trees: dict, name: str) -> None:
    sys_root = trees[name]
    devices = os.path.join(sys_root, 'bus', 'pci', 'devices')
    drivers = os.path.join(sys_root, 'bus', 'pci', 'drivers')
    for addr in os.listdir(devices):
        drv = os.path.join(devices, addr, 'driver')
        if not os.path.lexists(drv):
            continue
        target = os.readlink(drv)
        assert not target.startswith('/')
        assert '/bus/pci/drivers/' in '/' + target
        name_ = os.path.basename(target)
        assert os.path.realpath(drv) == os.path.realpath(os.path.join(drivers, name_))
        back = os.path.join(drivers, name_, addr)
        assert os.readlink(back).startswith('../../../../devices/pci')
        assert os.path.realpath(back) == os.path.realpath(os.path.join(devices, addr))
    for name_ in os.listdir(drivers):
        for attr in ('bind', 'unbind', 'new_id', 'remove_id'):
            assert os.path.isfile(os.path.join(drivers, name_, attr))
    assert os.path.isfile(os.path.join(sys_root, 'bus', 'pci', 'drivers_probe'))


@pytest.mark.parametrize('name', [n for n in ALL if n != 'iommu_off'])
def test_iommu_groups_are_consistent(trees: dict, name: str) -> None:
    sys_root = trees[name]
    groups = os.path.join(sys_root, 'kernel', 'iommu_groups')
    assert os.listdir(groups)
    members = {}
    for group in os.listdir(groups):
        for addr in os.listdir(os.path.join(groups, group, 'devices')):
            link = os.path.join(groups, group, 'devices', addr)
            assert os.readlink(link).startswith('../../../../devices/pci')
            members[addr] = group
    for addr in os.listdir(os.path.join(sys_root, 'bus', 'pci', 'devices')):
        dev = os.path.join(sys_root, 'bus', 'pci', 'devices', addr)
        link = os.path.join(dev, 'iommu_group')
        assert os.readlink(link).split('/')[-2:] == ['iommu_groups', members[addr]]
        assert os.path.realpath(link) == os.path.realpath(os.path.join(groups, members[addr]))
    units = os.listdir(os.path.join(sys_root, 'class', 'iommu'))
    assert units and all(u.startswith(('dmar', 'ivhd')) for u in units)


def test_iommu_off_has_no_groups(trees: dict) -> None:
    sys_root = trees['iommu_off']
    assert os.listdir(os.path.join(sys_root, 'kernel', 'iommu_groups')) == []
    assert os.listdir(os.path.join(sys_root, 'class', 'iommu')) == []
    assert not os.path.lexists(os.path.join(sys_root, 'bus', 'pci', 'devices', '0000:01:00.0', 'iommu_group'))


def _group_of(sys_root: str, addr: str) -> str:
    return os.path.basename(os.readlink(os.path.join(sys_root, 'bus', 'pci', 'devices', addr, 'iommu_group')))


def test_workstation_shape(trees: dict) -> None:
    root = trees['workstation']
    dev = os.path.join(root, 'bus', 'pci', 'devices')
    assert os.readlink(os.path.join(dev, '0000:01:00.0')) == '../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0'
    assert os.readlink(os.path.join(dev, '0000:01:00.0', 'driver')) == '../../../../bus/pci/drivers/nvidia'
    assert os.readlink(os.path.join(dev, '0000:00:02.0', 'driver')) == '../../../bus/pci/drivers/i915'
    assert os.readlink(os.path.join(dev, '0000:01:00.0', 'iommu_group')) == '../../../../kernel/iommu_groups/%s' % _group_of(root, '0000:01:00.0')
    assert _group_of(root, '0000:01:00.0') == _group_of(root, '0000:01:00.1')
    assert _group_of(root, '0000:01:00.0') != _group_of(root, '0000:00:01.0')
    with open(os.path.join(dev, '0000:00:02.0', 'boot_vga')) as h:
        assert h.read() == '1\n'
    with open(os.path.join(dev, '0000:01:00.0', 'boot_vga')) as h:
        assert h.read() == '0\n'
    with open(os.path.join(dev, '0000:01:00.0', 'vendor')) as h:
        assert h.read() == '0x10de\n'
    with open(os.path.join(dev, '0000:01:00.0', 'driver_override')) as h:
        assert h.read() == '(null)\n'
    assert not os.path.exists(os.path.join(dev, '0000:01:00.1', 'boot_vga'))  # only VGA-class devices have it
    assert os.path.isdir(os.path.join(dev, '0000:00:02.0', 'drm', 'card0'))
    base = os.path.dirname(root)
    with open(os.path.join(base, 'proc', 'cpuinfo')) as h:
        info = h.read()
    assert 'GenuineIntel' in info and ' vmx' in info
    with open(os.path.join(base, 'proc', 'sys', 'kernel', 'osrelease')) as h:
        assert h.read() == '6.1.0-27-amd64\n'
    with open(os.path.join(base, 'proc', 'cmdline')) as h:
        assert 'intel_iommu=on' in h.read()
    assert os.path.isfile(os.path.join(base, 'lib', 'modules', '6.1.0-27-amd64', 'modules.builtin'))
    assert os.path.isfile(os.path.join(base, 'lib', 'modules', '6.1.0-27-amd64', 'kernel', 'drivers', 'vfio', 'pci', 'vfio-pci.ko'))
    assert os.path.isfile(os.path.join(root, 'class', 'iommu', 'dmar0', 'intel-iommu', 'ecap'))
    assert os.path.isfile(os.path.join(base, 'dev', 'dri', 'card0'))


def test_shared_group_behind_pci_bridge(trees: dict) -> None:
    root = trees['shared_group']
    gpu = _group_of(root, '0000:03:00.0')
    assert gpu == _group_of(root, '0000:03:01.0') == _group_of(root, '0000:02:00.0') == _group_of(root, '0000:03:00.1')
    assert _group_of(root, '0000:01:00.0') != gpu


def test_sriov_links(trees: dict) -> None:
    root = trees['sriov']
    dev = os.path.join(root, 'bus', 'pci', 'devices')
    pf = os.path.join(dev, '0000:01:00.0')
    with open(os.path.join(pf, 'sriov_totalvfs')) as h:
        assert h.read() == '32\n'
    with open(os.path.join(pf, 'sriov_numvfs')) as h:
        assert h.read() == '4\n'
    vfs = sorted(n for n in os.listdir(pf) if n.startswith('virtfn'))
    assert vfs == ['virtfn0', 'virtfn1', 'virtfn2', 'virtfn3']
    assert os.readlink(os.path.join(pf, 'virtfn0')) == '../0000:01:00.4'
    assert os.readlink(os.path.join(dev, '0000:01:00.4', 'physfn')) == '../0000:01:00.0'
    assert sorted(os.listdir(os.path.join(pf, 'mdev_supported_types'))) == ['nvidia-592', 'nvidia-593', 'nvidia-594']
    assert os.path.isfile(os.path.join(dev, '0000:00:02.0', 'mdev_supported_types', 'i915-GVTg_V5_4', 'available_instances'))


def test_stuck_device_has_fifos(trees: dict) -> None:
    root = trees['stuck']
    dev = os.path.join(root, 'bus', 'pci', 'devices', '0000:01:00.0')
    assert stat.S_ISFIFO(os.stat(os.path.join(dev, 'driver_override')).st_mode)
    assert stat.S_ISFIFO(os.stat(os.path.join(dev, 'sriov_numvfs')).st_mode)
    with open(os.path.join(dev, 'vendor')) as h:
        assert h.read() == '0x1002\n'
    assert os.readlink(os.path.join(dev, 'driver')) == '../../../../bus/pci/drivers/radeon'
    assert not os.path.exists(os.path.join(dev, 'drm'))
    other = os.path.join(root, 'bus', 'pci', 'devices', '0000:02:00.0', 'driver_override')
    assert stat.S_ISREG(os.stat(other).st_mode)


def test_in_use_processes(trees: dict) -> None:
    base = os.path.dirname(trees['in_use'])
    assert os.readlink(os.path.join(base, 'proc', '1342', 'fd', '14')) == '/dev/dri/card1'
    with open(os.path.join(base, 'proc', '1342', 'comm')) as h:
        assert h.read() == 'Xorg\n'
    assert os.path.isfile(os.path.join(base, 'dev', 'vfio', '20'))
    assert os.path.isfile(os.path.join(base, 'dev', 'vfio', 'vfio'))
    with open(os.path.join(base, 'proc', 'driver', 'nvidia', 'gpus', '0000:02:00.0', 'information')) as h:
        assert 'Device Minor: \t 0' in h.read()
    with open(os.path.join(base, 'proc', 'modules')) as h:
        assert 'vfio_pci ' in h.read()
    assert os.path.isdir(os.path.join(trees['in_use'], 'module', 'vfio_pci'))


def test_identical_pair_matches_the_test_host(trees: dict) -> None:
    root = trees['identical_pair']
    record = json.load(open(os.path.join(os.path.dirname(root), '.sim', 'devices.json')))
    assert record['0000:00:01.0']['vendor'] + ':' + record['0000:00:01.0']['device'] == '1234:1111'
    assert record['0000:01:00.0']['class'] == '0x038000'
    assert record['0000:01:00.0']['iommu_group'] == record['0000:01:00.1']['iommu_group']
    assert record['0000:02:00.0']['driver'] is None
    assert record['0000:00:01.0']['boot_vga'] is True
    assert record['0000:01:00.1']['default_driver'] == 'snd_hda_intel'


def test_amd_host(trees: dict) -> None:
    root = trees['amd_host']
    assert sorted(os.listdir(os.path.join(root, 'class', 'iommu'))) == ['ivhd0', 'ivhd1']
    with open(os.path.join(os.path.dirname(root), 'proc', 'cpuinfo')) as h:
        text = h.read()
    assert 'AuthenticAMD' in text and ' svm' in text
    assert os.path.isfile(os.path.join(os.path.dirname(root), 'dev', 'vfio', _group_of(root, '0000:41:00.0')))


def test_big_generated_host(trees: dict) -> None:
    root = trees['generated16']
    devs = os.listdir(os.path.join(root, 'bus', 'pci', 'devices'))
    assert 280 <= len(devs) <= 320
    gpus = 0
    for addr in devs:
        with open(os.path.join(root, 'bus', 'pci', 'devices', addr, 'class')) as h:
            if h.read().startswith('0x0302'):
                gpus += 1
    assert gpus == 16


def test_hgx8(trees: dict) -> None:
    record = json.load(open(os.path.join(os.path.dirname(trees['hgx8']), '.sim', 'devices.json')))
    assert sum(1 for r in record.values() if r['class'] == '0x030200') == 8
    assert sum(1 for r in record.values() if r['class'] == '0x068000') == 6
    groups = [r['iommu_group'] for r in record.values() if r['class'] == '0x030200']
    assert len(set(groups)) == 8


def test_secure_boot_efivar(trees: dict) -> None:
    path = os.path.join(trees['iommu_off'], 'firmware', 'efi', 'efivars', 'SecureBoot-' + simkernel.EFI_GLOBAL_GUID)
    with open(path, 'rb') as h:
        assert h.read()[-1] == 1
    assert not os.path.exists(os.path.join(trees['identical_pair'], 'firmware', 'efi', 'efivars'))


def test_cli(tmp_path) -> None:
    out = subprocess.run([sys.executable, os.path.join(simkernel.HERE, 'simkernel.py'), 'materialize', 'workstation',
                          str(tmp_path / 't')], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / 't' / 'sys')
    bad = subprocess.run([sys.executable, os.path.join(simkernel.HERE, 'simkernel.py'), 'materialize', 'nosuch',
                          str(tmp_path / 'u')], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and 'nosuch' in bad.stderr


def test_duplicate_address_is_refused(tmp_path) -> None:
    topo = {'pci': [{'address': '00:01.0'}, {'address': '0000:00:01.0'}]}
    with pytest.raises(simkernel.TopologyError, match='0000:00:01.0'):
        simkernel.materialize(topo, str(tmp_path))
