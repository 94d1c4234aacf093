"""The binding backend (plugins/module_utils/module_backends/vfio_bind.py): plan rules, refusals, journal, modprobe."""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / 'sim'))
import fusekernel  # noqa: E402  pylint: disable=wrong-import-position
import simkernel  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.vfio_bind import (  # noqa: E402
    Binder,
    BindingApplyError,
    BindingInputError,
    BindingRefused,
    Journal,
    JournalError,
    validate_driver,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import Runner  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs  # noqa: E402


def static(tmp_path: Path, name: Any, **kernel: Any) -> Sysfs:
    topo = simkernel.load_topology(name) if isinstance(name, str) else name
    if kernel:
        topo.setdefault('kernel', {}).update(kernel)
    return Sysfs(simkernel.materialize(topo, str(tmp_path / 'static')), timeout=1.0)


def binder(sysfs: Sysfs, tmp_path: Path, **kw: Any) -> Binder:
    kw.setdefault('journal_path', str(tmp_path / 'journal' / 'vfio_bind.json'))
    return Binder(sysfs, **kw)


@pytest.mark.parametrize('name', ['vfio-pci', 'vfio_pci', 'nvgrace_gpu_vfio_pci', 'pci-stub', 'mlx5_vfio_pci'])
def test_driver_names_accepted(name: str) -> None:
    assert validate_driver(name) == name


@pytest.mark.parametrize('name', ['', 'vfio pci', 'vfio-pci;reboot', '`id`', '$(id)', 'a/b', '..', 'VFIO', 'vfio\n',
                                  None, 3])
def test_driver_names_rejected(name: Any) -> None:
    with pytest.raises(BindingInputError) as info:
        validate_driver(name)
    assert repr(name) in str(info.value)


def test_plan_orders_companions_first_and_skips_bridges(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'shared_group', loaded=['nouveau', 'snd_hda_intel', 'e1000', 'i915', 'ahci', 'vfio_pci'])
    plan = binder(sysfs, tmp_path, include_group=True).plan(['0000:03:00.0'])
    addresses = [str(s.address) for s in plan.steps]
    assert addresses == ['0000:03:01.0', '0000:03:00.1', '0000:03:00.0']  # the bridge 02:00.0 is not there
    assert plan.changed and all(s.driver_after == 'vfio-pci' for s in plan.steps)


def test_plan_of_an_already_bound_group_is_empty(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'in_use')
    plan = binder(sysfs, tmp_path, allow_in_use=False).plan(['0000:03:00.0'])
    assert not plan.changed and plan.steps[0].driver_before == 'vfio-pci'


def test_sriov_pf_with_vfs_refused(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'sriov')
    with pytest.raises(BindingRefused) as info:
        binder(sysfs, tmp_path, include_group=True).plan(['0000:01:00.0'])
    assert 'SR-IOV physical function with 4 virtual functions' in str(info.value) and 'sriov_numvfs' in str(info.value)


def test_mdev_parent_with_live_mdevs_refused(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'sriov')
    live = sysfs.sys('bus/pci/devices/0000:00:02.0/mdev_supported_types/i915-GVTg_V5_4/devices',
                     '0d3c7a24-3c2b-4b8e-9d0a-1f2e3d4c5b6a')
    os.makedirs(live)
    with pytest.raises(BindingRefused) as info:
        binder(sysfs, tmp_path, allow_boot_vga=True).plan(['0000:00:02.0'])
    assert 'live mediated devices' in str(info.value) and '0d3c7a24' in str(info.value)
    os.rmdir(live)
    plan = binder(sysfs, tmp_path, allow_boot_vga=True).plan(['0000:00:02.0'])
    assert plan.changed and plan.warnings


@pytest.mark.parametrize('address,holder', [
    ('0000:01:00.0', '1342 (Xorg) /dev/dri/card1'),
    ('0000:02:00.0', '2201 (python3) /dev/nvidia0'),
])
def test_holders_named_in_the_refusal(tmp_path: Path, address: str, holder: str) -> None:
    sysfs = static(tmp_path, 'in_use')
    with pytest.raises(BindingRefused) as info:
        binder(sysfs, tmp_path, include_group=True).plan([address])
    assert holder in str(info.value) and 'allow_in_use' in str(info.value)


def test_sound_server_holding_the_audio_function_is_a_holder(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'workstation')
    card = sysfs.sys('bus/pci/devices/0000:01:00.1/sound/card1')
    for node in ('controlC1', 'pcmC1D3p', 'hwC1D0'):
        os.makedirs(os.path.join(card, node))
    fd_dir = sysfs.proc('2718', 'fd')
    os.makedirs(fd_dir)
    with open(sysfs.proc('2718', 'comm'), 'w', encoding='utf-8') as fh:
        fh.write('pipewire\n')
    os.symlink('/dev/snd/pcmC1D3p', os.path.join(fd_dir, '30'))
    os.symlink('/dev/snd/pcmC0D0p', os.path.join(fd_dir, '31'))  # another card: not a holder
    with pytest.raises(BindingRefused) as info:
        binder(sysfs, tmp_path).plan(['0000:01:00.0', '0000:01:00.1'])
    assert '0000:01:00.1 is in use: 2718 (pipewire) /dev/snd/pcmC1D3p' in str(info.value)
    assert 'pcmC0D0p' not in str(info.value)


def test_restore_of_a_group_a_vm_holds_is_refused(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'in_use')
    with pytest.raises(BindingRefused) as info:
        binder(sysfs, tmp_path, state='absent').plan(['0000:03:00.0'])
    assert '3107 (qemu-system-x86) /dev/vfio/20' in str(info.value)


def test_libvirt_is_not_asked_about_a_simulated_root(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'workstation')
    assert binder(sysfs, tmp_path).libvirt_check is False
    assert Binder(Sysfs('/sys'), journal_path=str(tmp_path / 'j')).libvirt_check is True


def test_running_libvirt_domain_using_the_device_is_a_holder(tmp_path: Path) -> None:
    libvirt = pytest.importorskip('libvirt')
    conn = libvirt.open('test:///default')
    dom = conn.createXML(
        "<domain type='test'><name>gpuvm</name><memory>1048576</memory><os><type>hvm</type></os><devices>"
        "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
        "<address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices></domain>", 0)
    try:
        sysfs = static(tmp_path, 'workstation')
        with pytest.raises(BindingRefused) as info:
            binder(sysfs, tmp_path, libvirt_check=True, libvirt_uri='test:///default').plan(
                ['0000:01:00.0', '0000:01:00.1'])
        assert 'libvirt domain gpuvm' in str(info.value)
        # a libvirt that does not answer is no reason to fail
        plan = binder(sysfs, tmp_path, libvirt_check=True, libvirt_uri='qemu+unix:///system?socket=/nonexistent').plan(
            ['0000:01:00.0', '0000:01:00.1'])
        assert plan.changed
    finally:
        dom.destroy()
        conn.close()


def test_stuck_topology_device_is_reported_not_waited_for(tmp_path: Path) -> None:
    """Opening the stuck GPU's driver_override blocks (as under a held device lock)."""
    sysfs = static(tmp_path, 'stuck')
    with pytest.raises(BindingApplyError) as info:
        binder(sysfs, tmp_path).plan(['0000:01:00.0'])
    assert '0000:01:00.0 does not answer' in str(info.value) and 'within 1s' in str(info.value)
    assert info.value.details['stuck'] == ['0000:01:00.0']
    # the healthy GPU beside it plans normally
    assert binder(sysfs, tmp_path).plan(['0000:02:00.0']).changed


def test_no_iommu_group_refused(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'iommu_off')
    with pytest.raises(BindingRefused) as info:
        binder(sysfs, tmp_path).plan(['0000:01:00.0'])
    assert 'no IOMMU group' in str(info.value) and 'kernel_cmdline' in str(info.value)


def test_match_selects_by_ids_and_subsystem(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'workstation')
    b = binder(sysfs, tmp_path)
    assert [str(d.address) for d in b.resolve(match={'vendor_id': '10DE', 'device_id': '0x2204'})] == ['0000:01:00.0']
    assert b.resolve(match={'vendor_id': '10de', 'device_id': '2204', 'subsystem_vendor_id': '1458'})
    with pytest.raises(BindingInputError):
        b.resolve(match={'vendor_id': '10de', 'device_id': '2204', 'subsystem_vendor_id': '1043'})


# ----------------------------------------------------------------------------- journal
def test_journal_is_root_only_and_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / 'var' / 'lib' / 'x' / 'vfio_bind.json'
    j = Journal(str(path)).load()
    j.entries['0000:01:00.0'] = {'driver_before': 'nvidia', 'override_before': None}
    j.save()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert sorted(os.listdir(path.parent)) == ['vfio_bind.json']  # no temporary file left
    assert Journal(str(path)).load().entries == j.entries
    j.entries.clear()
    j.save()
    assert not path.exists()


@pytest.mark.parametrize('content,needle', [
    ('{not json', 'cannot read the journal'),
    ('[]', 'no "devices" mapping'),
    ('{"devices": {"0000:01:00.0": {"driver_before": "nv; reboot"}}}', "invalid driver 'nv; reboot'"),
    ('{"devices": {"0000:01:00.0": 5}}', 'malformed entry'),
    ('{"devices": {"zz:bad": {"driver_before": "nvidia"}}}', "entry with an invalid address: invalid PCI address 'zz:bad'"),
])
def test_damaged_journal_is_a_clear_error(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / 'j.json'
    path.write_text(content)
    with pytest.raises(JournalError) as info:
        Journal(str(path)).load()
    assert needle in str(info.value) and str(path) in str(info.value)


def test_unwritable_journal_fails_before_any_kernel_write(tmp_path: Path) -> None:
    (tmp_path / 'blocker').write_text('a file where a directory should be')
    topo = simkernel.load_topology('workstation')
    topo['kernel']['loaded'] = ['nvidia', 'snd_hda_intel', 'i915', 'vfio_pci']
    with fusekernel.simulated(topo, tmp_path / 'k') as root:
        b = Binder(Sysfs(root, timeout=2.0), journal_path=str(tmp_path / 'blocker' / 'j.json'))
        with pytest.raises(JournalError) as info:
            b.apply(b.plan(['0000:01:00.0', '0000:01:00.1']))
        assert 'blocker' in str(info.value)
        assert fusekernel.ops(fusekernel.backing_of(root)) == []


# ----------------------------------------------------------------------------- driver loading
class FakeRunner(Runner):
    """A host-command runner that hands each argument list to ``call`` (every program is there)."""

    def __init__(self, call: Callable[[list], tuple]) -> None:
        self.call = call

    def have(self, program: str) -> bool:
        return True

    def run(self, argv: list[str], check: bool = True) -> tuple[int, str, str]:
        return self.call(argv)


def test_modprobe_loads_a_missing_driver(tmp_path: Path) -> None:
    topo = simkernel.load_topology('workstation')  # vfio_pci not loaded: no drivers/vfio-pci
    calls: list = []
    with fusekernel.simulated(topo, tmp_path / 'k') as root:
        drivers = os.path.join(root, 'bus', 'pci', 'drivers')
        assert not os.path.isdir(os.path.join(drivers, 'vfio-pci'))

        def runner(cmd: list) -> tuple:
            calls.append(cmd)
            os.mkdir(os.path.join(drivers, 'vfio-pci'))
            for attr in ('bind', 'unbind', 'new_id', 'remove_id'):
                open(os.path.join(drivers, 'vfio-pci', attr), 'w').close()
            return 0, '', ''

        b = Binder(Sysfs(root, timeout=2.0), journal_path=str(tmp_path / 'j.json'), runner=FakeRunner(runner),
                   modprobe='/sbin/modprobe')
        b.apply(b.plan(['0000:01:00.0', '0000:01:00.1']))
        assert calls == [['/sbin/modprobe', 'vfio-pci']]
        assert os.path.basename(os.readlink(os.path.join(root, 'bus/pci/devices/0000:01:00.0/driver'))) == 'vfio-pci'
        # loaded now: no second modprobe
        b2 = Binder(Sysfs(root, timeout=2.0), journal_path=str(tmp_path / 'j.json'), runner=FakeRunner(runner),
                    modprobe='/sbin/modprobe', state='absent')
        b2.apply(b2.plan(['0000:01:00.0', '0000:01:00.1']))
        assert len(calls) == 1


def test_failing_modprobe_is_reported_and_nothing_moves(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'workstation')
    b = binder(sysfs, tmp_path, runner=FakeRunner(lambda cmd: (1, '', 'modprobe: FATAL: Module vfio-pci not found.')),
               modprobe='/sbin/modprobe')
    plan = b.plan(['0000:01:00.0', '0000:01:00.1'])
    with pytest.raises(BindingApplyError) as info:
        b.apply(plan)
    assert 'modprobe vfio-pci failed (rc=1)' in str(info.value) and 'not found' in str(info.value)
    assert not os.path.exists(b.journal.path)


def test_check_mode_plan_writes_no_journal(tmp_path: Path) -> None:
    sysfs = static(tmp_path, 'workstation', loaded=['vfio_pci', 'nvidia', 'snd_hda_intel'])
    b = binder(sysfs, tmp_path)
    plan = b.plan(['0000:01:00.0', '0000:01:00.1'])
    assert plan.changed
    diff = plan.diff()
    group = plan.steps[0].group
    assert diff['before'] == ('0000:01:00.0 group %d driver: nvidia\n0000:01:00.1 group %d driver: snd_hda_intel\n'
                              % (group, group))
    assert diff['after'].count('vfio-pci') == 2
    assert not os.path.exists(b.journal.path)
    assert json.dumps([s.as_result() for s in plan.steps])
