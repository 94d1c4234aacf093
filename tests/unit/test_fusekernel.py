"""The simulated kernel (tests/sim/fusekernel.py) against the kernel's PCI binding semantics."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'sim'))
import fusekernel  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import (  # noqa: E402
    Sysfs,
    SysfsError,
    SysfsTimeout,
)

GPU, AUDIO, TWIN = '0000:01:00.0', '0000:01:00.1', '0000:02:00.0'

TOPOLOGY = {
    'kernel': {'loaded': ['i915', 'nvidia', 'nouveau', 'snd_hda_intel', 'vfio', 'vfio_pci']},
    'iommu': {'type': 'intel'},
    'pci': [
        {'address': '00:02.0', 'vendor': '8086', 'device': '3e98', 'class': 0x030000, 'driver': 'i915', 'boot_vga': True},
        {'address': '00:01.0', 'vendor': '8086', 'device': '1901', 'class': 0x060400, 'driver': 'pcieport',
         'children': [
             {'address': '01:00.0', 'vendor': '10de', 'device': '2204', 'class': 0x030000, 'driver': 'nvidia',
              'multifunction': True},
             {'address': '01:00.1', 'vendor': '10de', 'device': '1aef', 'class': 0x040300,
              'driver': 'snd_hda_intel'}]},
        {'address': '00:03.0', 'vendor': '8086', 'device': '1901', 'class': 0x060400, 'driver': 'pcieport',
         'children': [
             {'address': '02:00.0', 'vendor': '10de', 'device': '2204', 'class': 0x030000, 'driver': None,
              'default_driver': 'nouveau'}]},
    ],
}


class K:
    def __init__(self, root: str) -> None:
        self.root = root
        self.backing = fusekernel.backing_of(root)
        self.sysfs = Sysfs(root, timeout=1.0)

    def p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def dev(self, addr: str, attr: str = '') -> str:
        return self.p('bus', 'pci', 'devices', addr, attr) if attr else self.p('bus', 'pci', 'devices', addr)

    def write(self, path: str, value: str) -> None:
        """One write(2), as echo does; errors come back as OSError."""
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def driver(self, addr: str) -> str | None:
        link = self.dev(addr, 'driver')
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def read(self, path: str) -> str:
        with open(path, encoding='utf-8') as handle:
            return handle.read().strip()

    def vfio(self, name: str) -> bool:
        return os.path.exists(os.path.join(os.path.dirname(self.root), 'dev', 'vfio', name))

    def group(self, addr: str) -> str:
        return os.path.basename(os.readlink(self.dev(addr, 'iommu_group')))


@pytest.fixture()
def k(tmp_path: Path) -> Iterator[K]:
    with fusekernel.simulated(TOPOLOGY, tmp_path) as root:
        yield K(root)


def errno_of(func, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        func(*args)
    return info.value.errno


def test_tree_is_served_with_the_kernels_links(k: K) -> None:
    assert os.path.realpath(k.dev(GPU)).startswith(k.p('devices'))
    assert k.driver(GPU) == 'nvidia'
    assert os.path.realpath(k.p('bus/pci/drivers/nvidia', GPU)) == os.path.realpath(k.dev(GPU))
    assert k.read(k.dev(GPU, 'driver_override')) == '(null)'
    assert k.read(k.dev(GPU, 'vendor')) == '0x10de'


def test_unbind_removes_both_links_and_rejects_the_wrong_driver(k: K) -> None:
    assert errno_of(k.write, k.p('bus/pci/drivers/snd_hda_intel/unbind'), GPU) == errno.ENODEV
    assert k.driver(GPU) == 'nvidia'
    k.write(k.p('bus/pci/drivers/nvidia/unbind'), GPU)
    assert k.driver(GPU) is None
    assert not os.path.lexists(k.p('bus/pci/drivers/nvidia', GPU))


def test_bind_is_busy_on_a_bound_device_and_needs_a_match(k: K) -> None:
    assert errno_of(k.write, k.p('bus/pci/drivers/vfio-pci/bind'), GPU) == errno.EBUSY
    k.write(k.p('bus/pci/drivers/nvidia/unbind'), GPU)
    # vfio-pci has no id for this device and no override names it
    assert errno_of(k.write, k.p('bus/pci/drivers/vfio-pci/bind'), GPU) == errno.ENODEV
    k.write(k.dev(GPU, 'driver_override'), 'vfio-pci\n')
    assert errno_of(k.write, k.p('bus/pci/drivers/nvidia/bind'), GPU) == errno.ENODEV  # override excludes others
    k.write(k.p('bus/pci/drivers/vfio-pci/bind'), GPU)
    assert k.driver(GPU) == 'vfio-pci'


def test_driver_override_stores_and_clears(k: K) -> None:
    k.write(k.dev(GPU, 'driver_override'), 'vfio-pci\nrest')
    assert k.read(k.dev(GPU, 'driver_override')) == 'vfio-pci'
    k.write(k.dev(GPU, 'driver_override'), '\n')
    assert k.read(k.dev(GPU, 'driver_override')) == '(null)'
    k.write(k.dev(GPU, 'driver_override'), 'x')
    k.write(k.dev(GPU, 'driver_override'), ' \n')
    assert k.read(k.dev(GPU, 'driver_override')) == '(null)'


def test_drivers_probe_prefers_the_override_then_the_default(k: K) -> None:
    k.write(k.p('bus/pci/drivers_probe'), GPU)  # bound: nothing happens
    assert k.driver(GPU) == 'nvidia'
    k.write(k.dev(GPU, 'driver_override'), 'vfio-pci')
    k.write(k.p('bus/pci/drivers/nvidia/unbind'), GPU)
    k.write(k.p('bus/pci/drivers_probe'), GPU)
    assert k.driver(GPU) == 'vfio-pci'
    k.write(k.dev(GPU, 'driver_override'), '\n')
    k.write(k.p('bus/pci/drivers/vfio-pci/unbind'), GPU)
    k.write(k.p('bus/pci/drivers_probe'), GPU)
    assert k.driver(GPU) == 'nvidia'
    assert errno_of(k.write, k.p('bus/pci/drivers_probe'), '0000:7f:00.0') == errno.EINVAL


def test_override_naming_a_missing_driver_leaves_the_device_unbound(k: K) -> None:
    k.write(k.dev(GPU, 'driver_override'), 'not_loaded')
    k.write(k.p('bus/pci/drivers/nvidia/unbind'), GPU)
    k.write(k.p('bus/pci/drivers_probe'), GPU)
    assert k.driver(GPU) is None


def test_first_vfio_bind_creates_the_group_node_last_unbind_removes_it(k: K) -> None:
    group = k.group(GPU)
    assert not k.vfio(group)
    for addr, drv in ((AUDIO, 'snd_hda_intel'), (GPU, 'nvidia')):
        k.write(k.dev(addr, 'driver_override'), 'vfio-pci')
        k.write(k.p('bus/pci/drivers', drv, 'unbind'), addr)
        k.write(k.p('bus/pci/drivers_probe'), addr)
        assert k.vfio(group) and k.vfio('vfio')
    k.write(k.p('bus/pci/drivers/vfio-pci/unbind'), AUDIO)
    assert k.vfio(group)  # the GPU still holds it
    k.write(k.p('bus/pci/drivers/vfio-pci/unbind'), GPU)
    assert not k.vfio(group)


def test_new_id_captures_every_unbound_identical_device(k: K) -> None:
    """Why vfio_bind never writes new_id: the twin GPU is taken too."""
    k.write(k.p('bus/pci/drivers/nvidia/unbind'), GPU)
    assert k.driver(TWIN) is None
    k.write(k.p('bus/pci/drivers/vfio-pci/new_id'), '10de 2204')
    assert k.driver(GPU) == 'vfio-pci' and k.driver(TWIN) == 'vfio-pci'
    assert errno_of(k.write, k.p('bus/pci/drivers/vfio-pci/new_id'), '10de 2204') == errno.EEXIST
    k.write(k.p('bus/pci/drivers/vfio-pci/remove_id'), '10de 2204')
    assert errno_of(k.write, k.p('bus/pci/drivers/vfio-pci/remove_id'), '10de 2204') == errno.ENODEV
    assert [o['op'] for o in fusekernel.ops(k.backing)][-4:] == ['new_id', 'new_id', 'remove_id', 'remove_id']


def test_every_control_write_is_logged(k: K) -> None:
    k.write(k.dev(GPU, 'driver_override'), 'vfio-pci')
    k.write(k.p('bus/pci/drivers/nvidia/unbind'), GPU)
    log = fusekernel.ops(k.backing)
    assert [(o['op'], o['device'], o['result']) for o in log] == [
        ('driver_override', GPU, 'ok'), ('unbind', GPU, 'ok')]


# ----------------------------------------------------------------------------- faults
@pytest.mark.parametrize('name,code', [('EBUSY', errno.EBUSY), ('EIO', errno.EIO), ('ENODEV', errno.ENODEV)])
def test_fault_error_on_unbind(k: K, name: str, code: int) -> None:
    fusekernel.set_faults(k.backing, [{'op': 'unbind', 'device': GPU, 'error': name}])
    assert errno_of(k.write, k.p('bus/pci/drivers/nvidia/unbind'), GPU) == code
    assert k.driver(GPU) == 'nvidia'
    k.write(k.p('bus/pci/drivers/snd_hda_intel/unbind'), AUDIO)  # other devices unaffected
    assert k.driver(AUDIO) is None


def test_fault_skip_and_times_count_matching_operations(k: K) -> None:
    fusekernel.set_faults(k.backing, [{'op': 'driver_override', 'device': GPU, 'error': 'EBUSY', 'skip': 1, 'times': 1}])
    k.write(k.dev(GPU, 'driver_override'), 'a')        # skipped
    assert errno_of(k.write, k.dev(GPU, 'driver_override'), 'b') == errno.EBUSY  # fires once
    k.write(k.dev(GPU, 'driver_override'), 'c')        # spent
    assert k.read(k.dev(GPU, 'driver_override')) == 'c'


def test_fault_faults_file_is_reread_on_every_operation(k: K) -> None:
    fusekernel.set_faults(k.backing, [{'op': 'bind', 'error': 'EBUSY'}])
    k.write(k.p('bus/pci/drivers/nvidia/unbind'), GPU)
    assert errno_of(k.write, k.p('bus/pci/drivers/nvidia/bind'), GPU) == errno.EBUSY
    fusekernel.set_faults(k.backing, [])
    k.write(k.p('bus/pci/drivers/nvidia/bind'), GPU)
    assert k.driver(GPU) == 'nvidia'


def test_fault_wrong_driver_on_probe(k: K) -> None:
    fusekernel.set_faults(k.backing, [{'op': 'drivers_probe', 'device': GPU, 'wrong_driver': 'nouveau'}])
    k.write(k.dev(GPU, 'driver_override'), 'vfio-pci')
    k.write(k.p('bus/pci/drivers/nvidia/unbind'), GPU)
    k.write(k.p('bus/pci/drivers_probe'), GPU)
    assert k.driver(GPU) == 'nouveau'


def test_fault_vanish_removes_the_device_everywhere(k: K) -> None:
    group = k.group(AUDIO)
    fusekernel.set_faults(k.backing, [{'op': 'unbind', 'device': AUDIO, 'vanish': True}])
    assert errno_of(k.write, k.p('bus/pci/drivers/snd_hda_intel/unbind'), AUDIO) == errno.ENODEV
    assert not os.path.lexists(k.dev(AUDIO))
    assert not os.path.lexists(k.p('bus/pci/drivers/snd_hda_intel', AUDIO))
    assert not os.path.lexists(k.p('kernel/iommu_groups', group, 'devices', AUDIO))
    assert AUDIO not in os.listdir(os.path.dirname(os.path.realpath(k.dev(GPU))))
    assert k.driver(GPU) == 'nvidia'


def test_fault_hang_does_not_return_and_the_seam_times_out(k: K) -> None:
    fusekernel.set_faults(k.backing, [{'op': 'unbind', 'device': GPU, 'hang': True}])
    with pytest.raises(SysfsTimeout):
        k.sysfs.write(k.p('bus/pci/drivers/nvidia/unbind'), GPU, timeout=0.5)
    assert k.driver(GPU) == 'nvidia'
    # the rest of the file system keeps answering
    k.sysfs.write(k.p('bus/pci/drivers/snd_hda_intel/unbind'), AUDIO)
    assert k.driver(AUDIO) is None
    with pytest.raises(SysfsError) as info:
        k.sysfs.write(k.p('bus/pci/drivers/snd_hda_intel/unbind'), AUDIO)
    assert info.value.errno == errno.ENODEV


def test_fault_hang_on_read_of_one_attribute(k: K) -> None:
    fusekernel.set_faults(k.backing, [{'op': 'read', 'device': GPU, 'attr': 'driver_override', 'hang': True}])
    values, stuck = k.sysfs.read_bounded([k.dev(GPU, 'driver_override'), k.dev(AUDIO, 'driver_override')], timeout=0.5)
    assert stuck == [k.dev(GPU, 'driver_override')]
    assert values[k.dev(AUDIO, 'driver_override')] == '(null)'
    assert k.read(k.dev(GPU, 'vendor')) == '0x10de'


# ----------------------------------------------------------------------------- mount lifecycle
def test_unmounts_even_when_the_block_fails_and_a_writer_hangs(tmp_path: Path) -> None:
    mnt = tmp_path / 'mnt'
    with pytest.raises(RuntimeError):
        with fusekernel.simulated(TOPOLOGY, tmp_path) as root:
            fusekernel.set_faults(fusekernel.backing_of(root), [{'op': 'unbind', 'hang': True}])
            with pytest.raises(SysfsTimeout):
                Sysfs(root).write(os.path.join(root, 'bus/pci/drivers/nvidia/unbind'), GPU, timeout=0.3)
            raise RuntimeError('test body failed')
    assert not fusekernel.is_mounted(str(mnt))
    assert os.listdir(mnt) == []


def test_mounted_refuses_a_backing_without_a_tree(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        with fusekernel.mounted(str(tmp_path / 'missing'), str(tmp_path / 'mnt')):
            pass
    assert 'missing' in str(info.value)
    assert not fusekernel.is_mounted(str(tmp_path / 'mnt'))


# ----------------------------------------------------------------------------- SR-IOV and mediated devices
PF, NVME = '0000:03:00.0', '0000:00:05.0'


@pytest.fixture()
def part(tmp_path: Path) -> Iterator[K]:
    with fusekernel.simulated('partition', tmp_path) as root:
        yield K(root)


def test_sriov_numvfs_creates_and_removes_vfs_like_the_kernel(part: K) -> None:
    numvfs = part.dev(PF, 'sriov_numvfs')
    for value, err in (('9', errno.ERANGE), ('two', errno.EINVAL)):
        with pytest.raises(OSError) as info:
            part.write(numvfs, value)
        assert info.value.errno == err
    part.write(numvfs, '3')
    vfs = ['0000:03:00.1', '0000:03:00.2', '0000:03:00.3']
    assert [os.path.basename(os.readlink(part.dev(PF, 'virtfn%d' % i))) for i in range(3)] == vfs
    assert all(os.path.basename(os.readlink(part.dev(v, 'physfn'))) == PF for v in vfs)
    assert [part.driver(v) for v in vfs] == ['vfio-pci'] * 3          # autoprobe with the PF's VF driver
    groups = [part.group(v) for v in vfs]
    assert len(set(groups)) == 3 and all(part.vfio(g) for g in groups)
    assert part.read(part.dev(PF, 'sriov_numvfs')) == '3' and part.read(part.dev(vfs[0], 'device')) == '0x56c0'
    with pytest.raises(OSError) as info:
        part.write(numvfs, '4')
    assert info.value.errno == errno.EBUSY
    part.write(numvfs, '3')                                               # the same count: nothing to do
    part.write(numvfs, '0')
    assert not any(os.path.lexists(part.dev(v)) for v in vfs) and not any(part.vfio(g) for g in groups)
    assert not any(n.startswith('virtfn') for n in os.listdir(part.dev(PF)))
    assert not any(os.path.exists(part.p('kernel/iommu_groups', g)) for g in groups)


def test_sriov_numvfs_without_a_pf_driver_is_enoent(part: K) -> None:
    part.write(part.p('bus/pci/drivers/nvme/unbind'), NVME)
    with pytest.raises(OSError) as info:
        part.write(part.dev(NVME, 'sriov_numvfs'), '1')
    assert info.value.errno == errno.ENOENT


def test_mdev_create_and_remove_count_instances(part: K) -> None:
    tdir = part.p('class/mdev_bus/mbochs/mdev_supported_types/mbochs-3')
    uids = ['00000000-0000-4000-8000-00000000000%d' % i for i in range(5)]
    with pytest.raises(OSError) as info:
        part.write(os.path.join(tdir, 'create'), 'not-a-uuid')
    assert info.value.errno == errno.EINVAL
    for uid in uids[:4]:
        part.write(os.path.join(tdir, 'create'), uid)
    assert part.read(os.path.join(tdir, 'available_instances')) == '0'
    with pytest.raises(OSError) as info:
        part.write(os.path.join(tdir, 'create'), uids[4])
    assert info.value.errno == errno.ENOSPC
    mdev = part.p('bus/mdev/devices', uids[0])
    assert os.path.basename(os.path.realpath(os.path.join(mdev, 'mdev_type'))) == 'mbochs-3'
    assert os.path.basename(os.path.dirname(os.path.realpath(mdev))) == 'mbochs'
    group = os.path.basename(os.readlink(os.path.join(mdev, 'iommu_group')))
    assert part.vfio(group) and sorted(os.listdir(os.path.join(tdir, 'devices'))) == uids[:4]
    part.write(os.path.join(mdev, 'remove'), '1')
    assert not os.path.lexists(mdev) and not part.vfio(group)
    assert part.read(os.path.join(tdir, 'available_instances')) == '1'
    assert [o['op'] for o in fusekernel.ops(part.backing)][-1] == 'mdev_remove'
