"""Trust (issue 11), the preflight and role part, through ansible-playbook where users meet it.

What a reboot cannot fix is refused before anything is written or installed; interrupt remapping
off fails unless allowed by name; the guides' amd_iommu=on is reported, not fatal, and kept; a host
with nothing selected is skipped; the libvirt Python libraries are checked before any change; and a
check run of site.yml warns exactly as the real run does.

Hosts are simulated kernel trees (tests/sim) with a fake Debian root and logging stand-ins for the
host tools (see test_vfio_host_role.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import playbook_json
from tests.integration.test_vfio_host_role import GRUB, KERNEL, PLAY, Host, _changed, _facts, _run
from tests.sim import simkernel

REPO = Path(__file__).resolve().parents[2]
FUSE = pytest.mark.skipif(not os.path.exists('/dev/fuse'), reason='needs /dev/fuse for the behaving simulated kernel')


def _failed(proc) -> list[dict]:
    return [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']


def _host_from(tmp_path: Path, topology: dict) -> Host:
    """A Host whose kernel is a (changed) topology instead of a named one."""
    host = Host(tmp_path, 'identical_pair')
    host.sysfs = simkernel.materialize(topology, str(tmp_path / 'kernel2'))
    return host


def _site(run_playbook, host: Host, tmp_path: Path, args: tuple = (), env: dict | None = None, **extra: object):
    inventory = tmp_path / 'inventory.ini'
    inventory.write_text('[gpu_hosts]\nlocalhost ansible_connection=local\n')
    ev = host.vars(fleetgpu_serial=1, fleetgpu_max_fail_percentage=0, **extra)
    return run_playbook(REPO / 'playbooks' / 'site.yml', extra_vars=ev, inventory=str(inventory),
                        env=env or host.env(), args=args)


def _warnings(doc: dict) -> list[str]:
    out: list[str] = []
    for task in doc['tasks']:
        result = task['result']
        for res in [result] + list(result.get('results') or []):
            for warning in res.get('warnings') or []:
                out.append(json.dumps(warning, sort_keys=True))
    return out


# 1. a group no reboot can fix -----------------------------------------------------------------------
def test_shared_group_is_refused_before_anything_is_written(run_playbook, tmp_path: Path) -> None:
    """The GPU at 03:00.0 shares its group with a NIC (03:01.0); the IOMMU is on. Today the role wrote five
    files, ran update-initramfs and update-grub and asked for a reboot that cannot help."""
    host = Host(tmp_path, 'shared_group')
    before = host.snapshot()
    proc = run_playbook(PLAY, extra_vars=host.vars(vfio_host_devices=[{'address': '0000:03:00.0'}],
                                                   vfio_host_runtime_bind=True, vfio_host_reboot_ok=True),
                        env=host.env())
    assert proc.returncode != 0
    failed = _failed(proc)
    assert failed and failed[0]['task'].endswith('refuse what a reboot cannot fix, before anything is written')
    msg = failed[0]['result']['msg']
    for member in ('0000:03:00.0', '0000:03:00.1', '0000:03:01.0'):
        assert member in msg, msg
    assert 'Ethernet controller, driver e1000' in msg and 'vfio_host_include_group: true' in msg, msg
    assert 'nothing was written' in msg
    assert host.snapshot() == before
    assert host.commands() == []
    doc = playbook_json(proc)
    assert not [t for t in doc['tasks'] if t['action'] in ('fleetgpu.passthrough.kernel_cmdline',
                                                           'ansible.builtin.reboot', 'ansible.builtin.package')]


def test_shared_group_check_mode_refuses_too(run_playbook, tmp_path: Path) -> None:
    """The operator's check run says the same as the real run would: refused, not 'reboot needed'."""
    host = Host(tmp_path, 'shared_group')
    proc = run_playbook(PLAY, extra_vars=host.vars(vfio_host_devices=[{'address': '0000:03:00.0'}],
                                                   vfio_host_runtime_bind=True), env=host.env(), args=('--check',))
    assert proc.returncode != 0
    assert 'vfio_host_include_group' in _failed(proc)[0]['result']['msg']


def test_isolated_gpu_on_the_same_host_is_not_refused(run_playbook, tmp_path: Path) -> None:
    """The refusal is about the group, not the host: 01:00.0 has a group of its own."""
    host = Host(tmp_path, 'shared_group')
    doc = _run(run_playbook, host, (), vfio_host_devices=[{'address': '0000:01:00.0'}])
    assert _facts(doc)['selected'] == ['0000:01:00.0']


@FUSE
def test_include_group_gives_the_whole_group_and_needs_no_reboot(run_playbook, tmp_path: Path) -> None:
    from tests.sim import fusekernel

    host = Host(tmp_path / 'h', 'shared_group')
    (host.bin / 'modprobe').write_text('#!/bin/sh\necho "modprobe $*" >> "$FLEETGPU_TEST_LOG"\nexit 0\n')
    (host.bin / 'modprobe').chmod(0o755)
    topo = simkernel.load_topology('shared_group')
    topo['kernel']['loaded'] = ['vfio', 'vfio_iommu_type1', 'vfio_pci', 'nouveau', 'snd_hda_intel', 'e1000',
                                'i915', 'ahci']
    with fusekernel.simulated(topo, tmp_path / 'k') as sysfs_root:
        host.sysfs = sysfs_root
        devices = Path(sysfs_root) / 'bus/pci/devices'
        doc = _run(run_playbook, host, (), vfio_host_devices=[{'address': '0000:03:00.0'}],
                   vfio_host_runtime_bind=True, vfio_host_include_group=True)
        for addr in ('0000:03:00.0', '0000:03:00.1', '0000:03:01.0'):
            assert os.path.basename(os.readlink(devices / addr / 'driver')) == 'vfio-pci', addr
        assert _facts(doc)['reboot_required'] is False
        verify = [t for t in doc['tasks'] if t['task'].endswith('Fail with what is wrong')]
        assert verify and verify[0]['status'] == 'ok'


def test_sriov_refusal_of_the_bind_is_not_a_reboot_reason(run_playbook, tmp_path: Path) -> None:
    """vfio_bind refuses a physical function with live VFs; no reboot changes that. Before, the rescue turned
    the refusal into a reboot reason after writing the files; now the preflight asks vfio_bind in check
    mode and refuses with its reason before anything is written."""
    host = Host(tmp_path, 'sriov')
    before = host.snapshot()
    proc = run_playbook(PLAY, extra_vars=host.vars(vfio_host_devices=[{'address': '0000:01:00.0'}],
                                                   vfio_host_runtime_bind=True), env=host.env())
    doc = playbook_json(proc)
    assert proc.returncode != 0
    failed = _failed(proc)
    assert failed[-1]['task'].endswith('refuse what a reboot cannot fix, before anything is written')
    msg = failed[-1]['result']['msg']
    assert 'virtual functions' in msg and 'no reboot changes this' in msg, msg
    assert not [t for t in doc['tasks'] if t['task'].endswith('Say that a reboot is required') and t['status'] == 'ok']
    assert host.snapshot() == before and host.commands() == []


# 2. interrupt remapping ------------------------------------------------------------------------------
def _no_ir(tmp_path: Path) -> Host:
    topo = simkernel.load_topology('identical_pair')
    topo['iommu']['interrupt_remapping'] = False
    return _host_from(tmp_path, topo)


def test_interrupt_remapping_off_fails_with_the_remedy(run_playbook, tmp_path: Path) -> None:
    host = _no_ir(tmp_path)
    before = host.snapshot()
    proc = run_playbook(PLAY, extra_vars=host.vars(), env=host.env())
    assert proc.returncode != 0
    msg = _failed(proc)[0]['result']['msg']
    assert 'interrupt remapping is off' in msg and 'vfio_host_allow_unsafe_interrupts: true' in msg, msg
    assert 'x2APIC' in msg
    assert host.snapshot() == before and host.commands() == []


def test_interrupt_remapping_off_allowed_by_name_warns(run_playbook, tmp_path: Path) -> None:
    host = _no_ir(tmp_path)
    doc = _run(run_playbook, host, (), vfio_host_allow_unsafe_interrupts=True)
    assert _facts(doc)['selected'] == ['0000:01:00.0']
    assert any('inject interrupts' in w for w in _warnings(doc)), _warnings(doc)


# 3. amd_iommu=on from the guides ------------------------------------------------------------------------
def test_amd_iommu_on_is_reported_kept_and_not_fatal_in_site(run_playbook, tmp_path: Path) -> None:
    topo = simkernel.load_topology('amd_host')
    topo['kernel']['cmdline'] = 'BOOT_IMAGE=/boot/vmlinuz-%s root=/dev/md0 ro amd_iommu=on iommu=pt' % KERNEL
    host = _host_from(tmp_path, topo)
    grub = GRUB.replace('GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="amd_iommu=on"')
    (host.root / 'etc/default/grub').write_text(grub)
    proc = _site(run_playbook, host, tmp_path,
                 vfio_host_devices=[{'vendor_id': '10de', 'device_id': '2684', 'count': 'all'}])
    doc = playbook_json(proc)
    assert proc.returncode == 0, [t['result'].get('msg') for t in _failed(proc)]
    preflight = [t for t in doc['tasks'] if 'Preflight - check virtualization' in t['task'] and t['status'] != 'skipped'][0]
    found = [f for f in preflight['result']['findings'] if f['name'] == 'amd_iommu_on_ignored']
    assert found and found[0]['severity'] == 'info'
    assert (host.root / 'etc/default/grub').read_text() == grub
    dropin = (host.root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg').read_text()
    assert 'amd_iommu' not in dropin


# 4. nothing selected -------------------------------------------------------------------------------------
def test_host_with_nothing_selected_is_skipped_with_a_message(run_playbook, host_pair: Host, tmp_path: Path) -> None:
    before = host_pair.snapshot()
    proc = _site(run_playbook, host_pair, tmp_path, vfio_host_devices=[])
    doc = playbook_json(proc)
    assert proc.returncode == 0, [t['result'].get('msg') for t in _failed(proc)]
    # site.yml leaves such a host alone before the roles run (the fleet plan gives it nothing)
    said = [t['result'].get('msg', '') for t in doc['tasks'] if t['task'] == 'Say why nothing is done here']
    assert said and 'no VM is placed here and no pool GPU is here - left alone' in said[0], said
    assert _changed(doc) == 0
    assert host_pair.snapshot() == before and host_pair.commands() == []


@pytest.fixture()
def host_pair(tmp_path: Path) -> Host:
    return Host(tmp_path, 'identical_pair')


# 5. libvirt-python and lxml before any change -----------------------------------------------------------
def test_missing_lxml_fails_before_any_change_naming_the_packages(run_playbook, host_pair: Host,
                                                                  tmp_path: Path) -> None:
    shadow = tmp_path / 'shadow'
    shadow.mkdir()
    (shadow / 'lxml.py').write_text('raise ImportError("simulated: lxml is not installed")\n')
    env = host_pair.env(PYTHONPATH=str(shadow))
    before = host_pair.snapshot()
    proc = run_playbook(PLAY, extra_vars=host_pair.vars(libvirt_gpu_domains=[{'name': 'vm1', 'gpus': {'count': 1}}]),
                        env=env)
    assert proc.returncode != 0
    msg = _failed(proc)[0]['result']['msg']
    assert 'cannot import lxml' in msg and 'libvirt_gpu needs them' in msg, msg
    assert 'python3-lxml' in msg and 'family' in msg, msg
    # a prefix root is never the running host: the role installs nothing there, and says why
    assert 'the role installs packages only on the running host, vfio_host_root /' in msg, msg
    assert host_pair.snapshot() == before and host_pair.commands() == []
    # with the installation turned off, the refusal names the option
    proc = run_playbook(PLAY, extra_vars=host_pair.vars(libvirt_gpu_domains=[{'name': 'vm1', 'gpus': {'count': 1}}],
                                                        vfio_host_install_libvirt_python=False), env=env)
    msg = _failed(proc)[0]['result']['msg']
    assert proc.returncode != 0 and 'vfio_host_install_libvirt_python is false' in msg, msg
    assert host_pair.snapshot() == before and host_pair.commands() == []
    # without libvirt_gpu work the role does not ask for them
    proc = run_playbook(PLAY, extra_vars=host_pair.vars(), env=env)
    assert proc.returncode == 0, [t['result'].get('msg') for t in _failed(proc)]
    assert _facts(playbook_json(proc))['selected'] == ['0000:01:00.0']


def test_role_with_nothing_selected_is_skipped_with_a_message(run_playbook, host_pair: Host) -> None:
    """The role itself, used outside site.yml, says so and changes nothing."""
    before = host_pair.snapshot()
    proc = run_playbook(PLAY, extra_vars=host_pair.vars(vfio_host_devices=[]), env=host_pair.env())
    doc = playbook_json(proc)
    assert proc.returncode == 0, [t['result'].get('msg') for t in _failed(proc)]
    said = [t['result'].get('msg', '') for t in doc['tasks'] if t['task'].endswith('(nothing to do)')]
    assert said and 'no GPU selected for this host; nothing to do' in said[0], said
    assert _changed(doc) == 0
    assert host_pair.snapshot() == before and host_pair.commands() == []


# 6. the host's own extra kernel arguments (vfio_host_kernel_args) ----------------------------------
@pytest.mark.parametrize('arg', ['pcie_acs_override=downstream,multifunction', 'vfio_iommu_type1.allow_unsafe_interrupts=1'])
def test_kernel_args_may_not_carry_what_is_gated_by_a_named_option(run_playbook, tmp_path: Path, arg: str) -> None:
    host = Host(tmp_path, 'identical_pair')
    before = host.snapshot()
    proc = run_playbook(PLAY, extra_vars=host.vars(vfio_host_kernel_args=['video=efifb:off', arg]), env=host.env())
    assert proc.returncode != 0
    failed = _failed(proc)
    assert failed and failed[0]['task'].endswith('that the collection only sets behind a named option'), failed
    msg = failed[0]['result']['msg']
    assert arg in msg and 'video=efifb:off' not in msg and 'nothing was written' in msg, msg
    assert host.snapshot() == before and host.commands() == []


def test_kernel_args_are_added_with_the_iommu_ones_and_given_back(run_playbook, tmp_path: Path) -> None:
    host = Host(tmp_path, 'identical_pair')
    before = host.snapshot()
    _run(run_playbook, host, (), vfio_host_kernel_args=['video=efifb:off'])
    dropin = (host.root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg').read_text()
    assert 'video=efifb:off' in dropin and 'intel_iommu=on' in dropin, dropin
    # a prefix root is never rebooted, so there is no trial: the arguments are written as before
    assert not (host.root / 'etc/grub.d/42_fleetgpu-passthrough-trial').exists()
    again = _run(run_playbook, host, (), vfio_host_kernel_args=['video=efifb:off'])
    assert not _changed(again)
    _run(run_playbook, host, (), vfio_host_kernel_args=['video=efifb:off'], vfio_host_state='absent')
    # every file is as before (the directories the role created for its own files may stay, empty)
    after = host.snapshot()
    assert {k: v for k, v in after.items() if v != '<dir>'} == {k: v for k, v in before.items() if v != '<dir>'}
