"""The gpu_partition engine against the behaving simulated kernel: plans, capacity, refusals, persistence."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / 'sim'))
import fusekernel  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import Runner  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._partition import (  # noqa: E402
    MDEV_RULE,
    mdev_rule_parents,
    PartitionError,
    stable_mdev_uuid,
    udev_rule_count,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_gpu_info import (  # noqa: E402
    running_hostdevs,
    running_mdevs,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_partition import (  # noqa: E402
    Partitioner,
)

PF, NVME, T4 = '0000:03:00.0', '0000:00:05.0', '0000:04:00.0'
RULE = 'etc/udev/rules.d/70-fleetgpu-passthrough-sriov-0000:03:00.0.rules'


class FakeMdevctl(Runner):
    """mdevctl as far as the module uses it: definitions under ROOT/etc/mdevctl.d, start/stop through sysfs."""

    def __init__(self, sysfs: Sysfs, root: str, installed: bool = True) -> None:
        self.sysfs = sysfs
        self.root = root
        self.installed = installed
        self.calls: list[list[str]] = []

    def have(self, program: str) -> bool:
        return self.installed and program == 'mdevctl'

    def _definitions(self) -> dict[str, tuple[str, dict]]:
        out = {}
        base = os.path.join(self.root, 'etc/mdevctl.d')
        for parent in os.listdir(base) if os.path.isdir(base) else []:
            for uid in os.listdir(os.path.join(base, parent)):
                with open(os.path.join(base, parent, uid), encoding='utf-8') as handle:
                    out[uid] = (parent, json.load(handle))
        return out

    def run(self, argv: list[str], check: bool = True) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        args = dict(zip(argv[2::2], argv[3::2]))
        uid = args['--uuid']
        if argv[1] == 'define':
            path = os.path.join(self.root, 'etc/mdevctl.d', args['--parent'], uid)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w', encoding='utf-8') as handle:
                json.dump({'mdev_type': args['--type'], 'start': 'auto', 'attrs': []}, handle)
        elif argv[1] == 'start':
            parent, conf = self._definitions()[uid]
            tdir = os.path.join(self.sysfs.sys('class/mdev_bus', parent), 'mdev_supported_types', conf['mdev_type'])
            self.sysfs.write(os.path.join(tdir, 'create'), uid)
        elif argv[1] == 'stop':
            self.sysfs.write(self.sysfs.sys('bus/mdev/devices', uid, 'remove'), '1')
        elif argv[1] == 'undefine':
            parent, _conf = self._definitions()[uid]
            os.unlink(os.path.join(self.root, 'etc/mdevctl.d', parent, uid))
        return 0, '', ''


@pytest.fixture()
def kernel(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with fusekernel.simulated('partition', tmp_path / 'k') as root:
        sysfs = Sysfs(root, timeout=3.0)
        host = str(tmp_path / 'root')
        os.makedirs(host)
        yield {'sysfs': sysfs, 'root': host, 'backing': fusekernel.backing_of(root), 'runner': FakeMdevctl(sysfs, host)}


def part(k: dict[str, Any], **kw: Any) -> Partitioner:
    return Partitioner(k['sysfs'], root=k['root'], runner=kw.pop('runner', k['runner']), libvirt_check=False, **kw)


def vfs_of(sysfs: Sysfs, pf: str) -> list[str]:
    d = sysfs.sys('bus/pci/devices', pf)
    return sorted(os.path.basename(os.readlink(os.path.join(d, n))) for n in os.listdir(d) if n.startswith('virtfn'))


def test_stable_uuid_is_uuid5_of_parent_type_and_label() -> None:
    a = stable_mdev_uuid('0000:04:00.0', 'nvidia-224', 'vm1-0')
    assert a == stable_mdev_uuid('0000:04:00.0', 'nvidia-224', 'vm1-0')
    assert a != stable_mdev_uuid('0000:04:00.0', 'nvidia-224', 'vm1-1')
    assert a[14] == '5'   # version 5


def test_running_domains_name_the_mdevs_and_pci_devices_they_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The holders a removal names: the running domains' live XML read once (a domain whose XML does not
    parse is left out), UUIDs in lower case, PCI sources as addresses."""
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import libvirt_gpu_info

    xml = ("<domain><name>vdi01</name><devices><hostdev mode='subsystem' type='mdev' model='vfio-pci'><source>"
           "<address uuid='0F3E6B8A-3C1E-4D52-9A53-7A6C1D2E4F10'/></source></hostdev>"
           "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' slot='0' function='0'/></source>"
           "</hostdev></devices></domain>")
    monkeypatch.setattr(libvirt_gpu_info, 'running_live_xml', lambda uri: [('vdi01', xml), ('broken', '<not xml')])
    assert running_mdevs('qemu:///system') == {'0f3e6b8a-3c1e-4d52-9a53-7a6c1d2e4f10': ['vdi01']}
    assert {str(k): v for k, v in running_hostdevs('qemu:///system').items()} == {'0000:01:00.0': ['vdi01']}


def test_sriov_check_apply_repeat_change_and_absent(kernel: dict[str, Any]) -> None:
    s, root = kernel['sysfs'], kernel['root']
    before = fusekernel.snapshot(kernel['backing'])
    plan = part(kernel).plan('03:00.0', sriov_numvfs=4)
    assert plan.changed and [st.value for st in plan.sriov_steps] == ['4']
    # check mode: the predicted VF addresses, nothing written
    p = part(kernel)
    plan = p.plan(PF, sriov_numvfs=4)
    res = p.result(plan, check_mode=True)
    assert [v['address'] for v in res['vfs']] == ['0000:03:00.1', '0000:03:00.2', '0000:03:00.3', '0000:03:00.4']
    assert fusekernel.snapshot(kernel['backing']) == before and not os.path.exists(os.path.join(root, RULE))
    diff = plan.diff()
    assert 'sriov_numvfs: 0' in diff[0]['before'] and 'sriov_numvfs: 4' in diff[0]['after']
    assert 'ATTR{sriov_numvfs}="4"' in diff[1]['after']
    # the change
    p = part(kernel)
    plan = p.plan(PF, sriov_numvfs=4)
    p.apply(plan)
    res = p.result(plan, check_mode=False)
    assert vfs_of(s, PF) == [v['address'] for v in res['vfs']]
    assert all(v['driver'] == 'vfio-pci' for v in res['vfs'])     # sriov_drivers_autoprobe with the VF driver
    with open(os.path.join(root, RULE), encoding='utf-8') as handle:
        rule = handle.read()
    assert udev_rule_count(rule) == 4 and 'ACTION=="add|bind"' in rule and 'DRIVER=="?*"' in rule and 'KERNEL=="0000:03:00.0"' in rule
    # idempotent
    assert not part(kernel).plan(PF, sriov_numvfs=4).changed
    # 4 -> 2 goes through 0
    p = part(kernel)
    plan = p.plan(PF, sriov_numvfs=2)
    assert [st.value for st in plan.sriov_steps] == ['0', '2']
    p.apply(plan)
    assert len(vfs_of(s, PF)) == 2
    # absent: back to 0 and the rule removed, because the collection set it
    p = part(kernel)
    plan = p.plan(PF, state='absent')
    p.apply(plan)
    assert vfs_of(s, PF) == [] and not os.path.exists(os.path.join(root, RULE))
    assert not part(kernel).plan(PF, state='absent').changed


def test_sriov_absent_leaves_a_count_the_collection_did_not_set(kernel: dict[str, Any]) -> None:
    kernel['sysfs'].write(kernel['sysfs'].sys('bus/pci/devices', NVME, 'sriov_numvfs'), '2')
    plan = part(kernel).plan(NVME, state='absent')
    assert not plan.changed and plan.numvfs_after == 2


def test_sriov_refusals_change_nothing(kernel: dict[str, Any]) -> None:
    before = fusekernel.snapshot(kernel['backing'])
    with pytest.raises(PartitionError, match=r'sriov_numvfs 9 is over the capacity of 0000:03:00.0: sriov_totalvfs is 8'):
        part(kernel).plan(PF, sriov_numvfs=9)
    with pytest.raises(PartitionError, match=r'0000:04:00.0 is not SR-IOV capable'):
        part(kernel).plan(T4, sriov_numvfs=1)
    with pytest.raises(PartitionError, match=r'mbochs is not SR-IOV capable'):
        part(kernel).plan('mbochs', sriov_numvfs=1)
    with pytest.raises(PartitionError, match=r"parent 'nosuch' is neither a PCI address nor an mdev parent"):
        part(kernel).plan('nosuch', sriov_numvfs=1)
    with pytest.raises(PartitionError, match=r'no PCI device at that address'):
        part(kernel).plan('0000:09:00.0', sriov_numvfs=1)
    assert fusekernel.snapshot(kernel['backing']) == before


def test_sriov_change_refused_while_a_vf_is_open(kernel: dict[str, Any]) -> None:
    s = kernel['sysfs']
    p = part(kernel)
    p.apply(p.plan(PF, sriov_numvfs=2))
    vf = vfs_of(s, PF)[0]
    group = os.path.basename(os.readlink(s.sys('bus/pci/devices', vf, 'iommu_group')))
    fd_dir = os.path.join(kernel['backing'], 'proc', '4242', 'fd')
    os.makedirs(fd_dir)
    os.symlink('/dev/vfio/%s' % group, os.path.join(fd_dir, '17'))
    with open(os.path.join(kernel['backing'], 'proc', '4242', 'comm'), 'w', encoding='utf-8') as handle:
        handle.write('qemu-system-x86\n')
    with open(os.path.join(kernel['backing'], 'proc', '4242', 'cmdline'), 'w', encoding='utf-8') as handle:
        handle.write('qemu-system-x86_64\0-name\0guest=vm7,debug-threads=on\0')
    with pytest.raises(PartitionError) as info:
        part(kernel).plan(PF, sriov_numvfs=4)
    assert 'while a VF is in use' in str(info.value) and vf in str(info.value) and '4242' in str(info.value)
    assert len(vfs_of(s, PF)) == 2


def test_sriov_without_pf_driver_is_refused_before_writing(kernel: dict[str, Any]) -> None:
    s = kernel['sysfs']
    s.write(s.sys('bus/pci/drivers/i915/unbind'), PF)
    with pytest.raises(PartitionError, match='has no driver bound'):
        part(kernel).plan(PF, sriov_numvfs=2)


def test_mdev_by_human_name_persisted_through_mdevctl(kernel: dict[str, Any]) -> None:
    s, runner = kernel['sysfs'], kernel['runner']
    wanted = [{'type': 'GRID T4-4Q', 'name': 'vdi01-0'}, {'type': 'nvidia-224', 'name': 'vdi02-0'}]
    p = part(kernel)
    plan = p.plan(T4, mdevs=wanted)
    uids = [stable_mdev_uuid(T4, 'nvidia-224', 'vdi01-0'), stable_mdev_uuid(T4, 'nvidia-224', 'vdi02-0')]
    assert [m['uuid'] for m in plan.mdevs] == uids and {m['state'] for m in plan.mdevs} == {'created'}
    assert plan.commands() == [
        ['mdevctl', 'define', '--uuid', uids[0], '--parent', T4, '--type', 'nvidia-224', '--auto'],
        ['mdevctl', 'start', '--uuid', uids[0]],
        ['mdevctl', 'define', '--uuid', uids[1], '--parent', T4, '--type', 'nvidia-224', '--auto'],
        ['mdevctl', 'start', '--uuid', uids[1]]]
    assert runner.calls == []
    p.apply(plan)
    assert sorted(s.listdir(s.sys('bus/mdev/devices'))) == sorted(uids)
    avail = s.sys('class/mdev_bus', T4, 'mdev_supported_types/nvidia-224/available_instances')
    assert s.read(avail) == '2'
    again = part(kernel).plan(T4, mdevs=wanted)
    assert not again.changed and {m['state'] for m in again.mdevs} == {'kept'}
    assert all(m['persistent'] for m in again.mdevs)
    with open(os.path.join(kernel['root'], 'var/lib/fleetgpu-passthrough/partition.json'), encoding='utf-8') as handle:
        record = json.load(handle)
    assert set(record['mdevs']) == set(uids)
    # the collection's udev rule starts them at boot (mdevctl's own rule in Debian 12 names a path that is not there)
    mdev_rule = os.path.join(kernel['root'], MDEV_RULE.lstrip('/'))
    with open(mdev_rule, encoding='utf-8') as handle:
        text = handle.read()
    assert mdev_rule_parents(text) == [T4], text
    assert ('ACTION=="change", ENV{MDEV_STATE}=="registered", KERNEL=="%s", RUN+="/usr/bin/mdevctl start-parent-mdevs '
            '$kernel"' % T4) in text
    assert 'ACTION=="add", KERNEL=="%s", TEST=="mdev_supported_types"' % T4 in text
    # absent without a list: the collection's devices are stopped and undefined, and the rule goes with them
    p = part(kernel)
    plan = p.plan(T4, state='absent')
    assert [c[1] for c in plan.commands()] == ['stop', 'undefine', 'stop', 'undefine']
    p.apply(plan)
    assert s.listdir(s.sys('bus/mdev/devices')) == [] and s.read(avail) == '4'
    assert not os.path.exists(mdev_rule)
    assert not os.path.exists(os.path.join(kernel['root'], 'var/lib/fleetgpu-passthrough/partition.json'))
    assert not part(kernel).plan(T4, state='absent').changed


def test_mdev_capacity_unknown_type_and_missing_mdevctl(kernel: dict[str, Any]) -> None:
    before = fusekernel.snapshot(kernel['backing'])
    with pytest.raises(PartitionError) as info:
        part(kernel).plan(T4, mdevs=[{'type': 'GRID T4-8Q', 'name': str(i)} for i in range(3)])
    assert 'over its capacity' in str(info.value) and 'available_instances is 2' in str(info.value)
    assert 'nvidia-225 (GRID T4-8Q)' in str(info.value)
    with pytest.raises(PartitionError) as info:
        part(kernel).plan(T4, mdevs=[{'type': 'GRID A100-4C'}])
    assert "type 'GRID A100-4C' is not offered by 0000:04:00.0" in str(info.value)
    assert 'nvidia-222 (GRID T4-1Q)' in str(info.value) and 'nvidia-226 (GRID T4-16Q)' in str(info.value)
    with pytest.raises(PartitionError, match=r'0000:03:00.0 is not mdev capable'):
        part(kernel).plan(PF, mdevs=[{'type': 'x'}])
    with pytest.raises(PartitionError, match=r'install the package mdevctl'):
        part(kernel, runner=FakeMdevctl(kernel['sysfs'], kernel['root'], installed=False)).plan(
            'mbochs', mdevs=[{'type': 'mbochs-1'}])
    with pytest.raises(PartitionError, match=r"mdevs\[0\].uuid 'nope' is not a UUID"):
        part(kernel).plan('mbochs', mdevs=[{'type': 'mbochs-1', 'uuid': 'nope'}])
    assert fusekernel.snapshot(kernel['backing']) == before


def test_mdev_sysfs_only_and_removal_refused_while_used(kernel: dict[str, Any]) -> None:
    s = kernel['sysfs']
    uid = '0f3e6b8a-3c1e-4d52-9a53-7a6c1d2e4f10'
    p = part(kernel, runner=None)
    plan = p.plan('mbochs', mdevs=[{'type': 'mbochs-small', 'uuid': uid.upper()}], persist=False)
    assert plan.commands() == [] and plan.mdev_steps[0].value == uid
    p.apply(plan)
    assert s.listdir(s.sys('bus/mdev/devices')) == [uid]
    group = os.path.basename(os.readlink(s.sys('bus/mdev/devices', uid, 'iommu_group')))
    fd_dir = os.path.join(kernel['backing'], 'proc', '5151', 'fd')
    os.makedirs(fd_dir)
    os.symlink('/dev/vfio/%s' % group, os.path.join(fd_dir, '20'))
    for name, text in (('comm', 'qemu-system-x86\n'), ('cmdline', 'qemu-system-x86_64\0-name\0guest=desk3,x=y\0')):
        with open(os.path.join(kernel['backing'], 'proc', '5151', name), 'w', encoding='utf-8') as handle:
            handle.write(text)
    with pytest.raises(PartitionError) as info:
        part(kernel, runner=None).plan('mbochs', mdevs=[{'type': 'mbochs-1', 'uuid': uid}], state='absent')
    assert 'desk3' in str(info.value) and uid in str(info.value)
    os.unlink(os.path.join(fd_dir, '20'))
    p = part(kernel, runner=None)
    plan = p.plan('mbochs', mdevs=[{'type': 'mbochs-1', 'uuid': uid}], state='absent')
    assert [st.value for st in plan.mdev_steps] == ['1']
    p.apply(plan)
    assert s.listdir(s.sys('bus/mdev/devices')) == []


def test_simulated_kernel_refuses_like_the_kernel(kernel: dict[str, Any]) -> None:
    s = kernel['sysfs']
    numvfs = s.sys('bus/pci/devices', PF, 'sriov_numvfs')
    for value, err in (('9', 'Numerical result out of range'), ('x', 'Invalid argument')):
        with pytest.raises(Exception, match=err):
            s.write(numvfs, value)
    s.write(numvfs, '2')
    with pytest.raises(Exception, match='busy'):
        s.write(numvfs, '3')
    create = s.sys('class/mdev_bus/mbochs/mdev_supported_types/mbochs-3/create')
    uids = ['00000000-0000-4000-8000-00000000000%d' % i for i in range(5)]
    for uid in uids[:4]:
        s.write(create, uid)
    with pytest.raises(Exception, match='No space left'):
        s.write(create, uids[4])
    with pytest.raises(Exception, match='File exists'):
        s.write(s.sys('class/mdev_bus/mbochs/mdev_supported_types/mbochs-1/create'), uids[0])


def test_mdevctl_never_runs_on_the_live_root_for_a_simulated_kernel(kernel: dict[str, Any]) -> None:
    p = Partitioner(kernel['sysfs'], root='/', runner=kernel['runner'], libvirt_check=False)
    with pytest.raises(PartitionError) as info:
        p.plan('mbochs', mdevs=[{'type': 'mbochs-1'}])
    assert "running host's kernel" in str(info.value) and kernel['runner'].calls == []


def test_a_failed_create_keeps_the_record_of_what_was_made(kernel: dict[str, Any]) -> None:
    s = kernel['sysfs']
    fusekernel.set_faults(kernel['backing'], [{'op': 'mdev_create', 'error': 'EIO', 'skip': 1}])
    p = part(kernel, runner=None)
    plan = p.plan('mbochs', mdevs=[{'type': 'mbochs-1', 'name': 'a'}, {'type': 'mbochs-1', 'name': 'b'}], persist=False)
    with pytest.raises(PartitionError) as info:
        p.apply(plan)
    assert 'create %s failed' % plan.mdevs[1]['uuid'] in str(info.value)
    made = s.listdir(s.sys('bus/mdev/devices'))
    assert made == [plan.mdevs[0]['uuid']]
    with open(os.path.join(kernel['root'], 'var/lib/fleetgpu-passthrough/partition.json'), encoding='utf-8') as handle:
        assert list(json.load(handle)['mdevs']) == made
