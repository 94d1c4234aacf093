"""iommu_check engine and module over simulated hosts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.iommu_check import (
    FINDINGS,
    CheckError,
    check,
    cmdline_findings,
    failure_message,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from tests.sim import simkernel

REPO = Path(__file__).resolve().parents[5]


@pytest.fixture(scope='module')
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict:
    names = ['workstation', 'shared_group', 'iommu_off', 'amd_host', 'amd_gpu', 'identical_pair', 'in_use', 'sriov']
    return {n: simkernel.materialize(n, str(tmp_path_factory.mktemp(n))) for n in names}


def names(result: dict) -> list[str]:
    return [f['name'] for f in result['findings']]


def variant(tmp_path: Path, base: str, **changes: object) -> str:
    topo = simkernel.load_topology(base)
    for key, value in changes.items():
        section, _sep, field = key.partition('__')
        if field:
            topo.setdefault(section, {})[field] = value
        else:
            topo[section] = value
    return simkernel.materialize(topo, str(tmp_path / 'v'))


@pytest.mark.parametrize('name,devices,expected,ready', [
    ('workstation', ['0000:01:00.0', '0000:01:00.1'], ['vfio_not_loaded'], True),
    ('workstation', ['01:00.0'], ['vfio_not_loaded'], True),  # the audio function of the slot goes along
    ('workstation', ['0000:00:02.0'], ['vfio_not_loaded', 'boot_vga'], True),
    ('shared_group', ['0000:03:00.0'], ['vfio_not_loaded', 'group_not_viable'], False),
    ('shared_group', ['0000:03:00.0', '0000:03:01.0'], ['vfio_not_loaded'], True),
    ('iommu_off', [], ['iommu_off', 'vfio_not_loaded', 'secure_boot_enabled'], False),
    ('iommu_off', ['0000:01:00.0'], ['iommu_off', 'vfio_not_loaded', 'secure_boot_enabled', 'boot_vga'], False),
    ('amd_host', ['0000:41:00.0'], [], True),
    ('amd_host', ['0000:42:00.0'], ['device_not_found'], False),
    ('identical_pair', ['0000:01:00.0', '0000:02:00.0'], ['vfio_not_loaded'], True),
    ('in_use', [], [], True),
])
def test_findings_table(roots: dict, name: str, devices: list, expected: list, ready: bool) -> None:
    result = check(Sysfs(roots[name]), devices)
    assert names(result) == expected
    assert result['ready'] is ready
    for f in result['findings']:
        assert set(f) == {'name', 'severity', 'message', 'remedy'}
        assert f['severity'] == FINDINGS[f['name']] and f['message'] and f['remedy']
    json.dumps(result)


def test_offending_members_are_named(roots: dict) -> None:
    result = check(Sysfs(roots['shared_group']), ['0000:03:00.0'])
    dev = result['devices'][0]
    assert dev['viable'] is False and dev['iommu_group'] is not None
    assert dev['offending_members'] == [{'address': '0000:03:01.0', 'class_name': 'Ethernet controller',
                                         'driver': 'e1000'}]
    finding = [f for f in result['findings'] if f['name'] == 'group_not_viable'][0]
    assert '0000:03:01.0' in finding['message'] and 'Ethernet controller' in finding['message']


def test_member_on_vfio_pci_is_fine(tmp_path: Path) -> None:
    topo = simkernel.load_topology('shared_group')
    for node in simkernel.iter_nodes(topo['pci']):
        if node['address'] == '03:01.0':
            node['driver'] = 'vfio-pci'
    root = simkernel.materialize(topo, str(tmp_path))
    assert check(Sysfs(root), ['0000:03:00.0'])['devices'][0]['viable'] is True


@pytest.mark.parametrize('name,field,expected', [
    ('workstation', 'virtualization', 'vmx'),
    ('workstation', 'iommu_type', 'intel'),
    ('workstation', 'vfio_pci_available', True),
    ('workstation', 'vfio_pci_loaded', False),
    ('workstation', 'dev_vfio', False),
    ('workstation', 'secure_boot', False),
    ('workstation', 'iommu_units', ['dmar0']),
    ('iommu_off', 'iommu_enabled', False),
    ('iommu_off', 'secure_boot', True),
    ('identical_pair', 'secure_boot', None),
    ('amd_host', 'vfio_pci_loaded', True),
    ('amd_host', 'dev_vfio', True),
    ('amd_host', 'iommu_units', ['ivhd0', 'ivhd1']),
    ('amd_host', 'interrupt_remapping', True),
])
def test_host_fields(roots: dict, name: str, field: str, expected: object) -> None:
    assert check(Sysfs(roots[name]))['host'][field] == expected


def test_no_interrupt_remapping_intel(tmp_path: Path) -> None:
    root = variant(tmp_path, 'workstation', iommu__interrupt_remapping=False)
    result = check(Sysfs(root))
    assert 'no_interrupt_remapping' in names(result) and result['ready'] is False
    assert result['host']['interrupt_remapping'] is False


def test_intremap_off_on_amd(tmp_path: Path) -> None:
    root = variant(tmp_path, 'amd_host', kernel__cmdline='root=/dev/md0 ro intremap=off')
    assert check(Sysfs(root))['host']['interrupt_remapping'] is False


def test_no_virtualization(tmp_path: Path) -> None:
    root = variant(tmp_path, 'workstation', cpu__virtualization=False)
    result = check(Sysfs(root))
    assert 'no_virtualization' in names(result) and not result['ready']


def test_vfio_builtin(tmp_path: Path) -> None:
    root = variant(tmp_path, 'workstation', kernel__builtin=['kernel/drivers/vfio/vfio.ko',
                                                             'kernel/drivers/vfio/pci/vfio-pci.ko'])
    result = check(Sysfs(root))
    assert result['host']['vfio_pci_builtin'] is True and result['host']['vfio_pci_loaded'] is True
    assert 'vfio_not_loaded' not in names(result)


def test_vfio_unavailable(tmp_path: Path) -> None:
    root = variant(tmp_path, 'workstation', kernel__available=[])
    result = check(Sysfs(root))
    assert 'vfio_unavailable' in names(result) and not result['ready']


@pytest.mark.parametrize('cmdline,vendor,expected', [
    ('quiet intel_iommu=on', 'intel', []),
    ('quiet intel_iommu=off', 'intel', ['iommu_disabled_on_cmdline']),
    ('quiet iommu=off', 'amd', ['iommu_disabled_on_cmdline']),
    ('quiet amd_iommu=off', 'amd', ['iommu_disabled_on_cmdline']),
    ('intel_iommu=on amd_iommu=on', 'intel',
     ['cmdline_contradiction', 'cmdline_wrong_vendor', 'amd_iommu_on_ignored']),
    # the guides' amd_iommu=on is ignored by the kernel: reported (info), not an invalid value
    ('amd_iommu=on', 'amd', ['amd_iommu_on_ignored']),
    ('amd_iommu=on,bogus', 'amd', ['amd_iommu_on_ignored', 'amd_iommu_invalid_value']),
    ('amd_iommu=bogus', 'amd', ['amd_iommu_invalid_value']),
    ('amd_iommu=force_isolation iommu=pt', 'amd', []),
    ('intel_iommu=on intel_iommu=off', 'intel', ['iommu_disabled_on_cmdline', 'cmdline_contradiction']),
    ('intel_iommu=on,sm_on', 'amd', ['cmdline_wrong_vendor']),
])
def test_cmdline_findings(cmdline: str, vendor: str, expected: list) -> None:
    assert [f.name for f in cmdline_findings(cmdline, vendor)] == expected


def test_failure_message_lists_each_problem() -> None:
    findings = [{'name': 'iommu_off', 'message': 'the IOMMU is off', 'remedy': 'turn it on'},
                {'name': 'boot_vga', 'message': 'x is boot VGA', 'remedy': 'pick another'},
                {'name': 'vfio_not_loaded', 'message': 'not loaded', 'remedy': 'load it'}]
    msg = failure_message(findings, ['iommu_off', 'boot_vga'])
    assert msg is not None
    assert '- iommu_off: the IOMMU is off. To do: turn it on.' in msg
    assert '- boot_vga: x is boot VGA. To do: pick another.' in msg
    assert 'vfio_not_loaded' not in msg
    assert failure_message(findings, ['group_not_viable']) is None


@pytest.mark.parametrize('devices', [['0000:01:00.8'], ['1:0.0'], [''], ['0000:01:00.0/../..']])
def test_bad_device_address(roots: dict, devices: list) -> None:
    with pytest.raises(CheckError) as info:
        check(Sysfs(roots['workstation']), devices)
    assert repr(devices[0]) in str(info.value) and 'devices' in str(info.value)


# the module ---------------------------------------------------------------------------------------
def run_module(args: dict, tmp_path: Path) -> tuple[int, dict]:
    argfile = tmp_path / 'args.json'
    argfile.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': args}))
    env = dict(os.environ, PYTHONPATH='%s:%s' % (REPO / '.cache' / 'pyroot', os.environ.get('PYTHONPATH', '')))
    proc = subprocess.run([sys.executable, str(REPO / 'plugins' / 'modules' / 'iommu_check.py'), str(argfile)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert 'Traceback' not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_module_fail_on(roots: dict, tmp_path: Path) -> None:
    rc, out = run_module({'sysfs_root': roots['shared_group'], 'devices': ['0000:03:00.0'],
                          'fail_on': ['group_not_viable', 'iommu_off']}, tmp_path)
    assert rc != 0 and out['failed'] is True and out['changed'] is False
    assert 'group_not_viable' in out['msg'] and '0000:03:01.0' in out['msg'] and 'To do:' in out['msg']
    assert out['ready'] is False


def test_module_ok(roots: dict, tmp_path: Path) -> None:
    rc, out = run_module({'sysfs_root': roots['amd_host'], 'devices': ['41:00.0'],
                          'fail_on': ['group_not_viable', 'iommu_off']}, tmp_path)
    assert rc == 0 and out['changed'] is False and out['ready'] is True


@pytest.mark.parametrize('args,needle', [
    ({'devices': ['0000:01:00.8']}, '0000:01:00.8'),
    ({'fail_on': ['no_such_finding']}, 'no_such_finding'),
])
def test_module_bad_input(roots: dict, tmp_path: Path, args: dict, needle: str) -> None:
    rc, out = run_module(dict(args, sysfs_root=roots['workstation']), tmp_path)
    assert rc != 0 and needle in out['msg']


def test_module_bad_root(tmp_path: Path) -> None:
    rc, out = run_module({'sysfs_root': str(tmp_path / 'nowhere' / 'sys')}, tmp_path)
    assert rc != 0 and 'sysfs_root' in out['msg']


@pytest.mark.parametrize('cmdline,expected', [
    ('root=/dev/vda intel_iommu=on vfio-pci.ids=1234:1111', True),      # also the boot console's id
    ('root=/dev/vda intel_iommu=on vfio_pci.ids=8086:293e,1234:1111', True),
    ('root=/dev/vda intel_iommu=on vfio-pci.ids=8086:293e', False),
    ('root=/dev/vda intel_iommu=on', False),
])
def test_vfio_ids_capturing_the_boot_console(tmp_path: Path, cmdline: str, expected: bool) -> None:
    root = variant(tmp_path, 'identical_pair', kernel__cmdline=cmdline)
    result = check(Sysfs(root))
    found = [f for f in result['findings'] if f['name'] == 'vfio_ids_capture_boot_vga']
    assert bool(found) is expected
    if expected:
        assert '0000:00:01.0' in found[0]['message'] and '1234:1111' in found[0]['message']


def test_stuck_target_is_reported_not_waited_for(tmp_path: Path) -> None:
    root = simkernel.materialize('stuck', str(tmp_path / 's'))
    result = check(Sysfs(root, timeout=0.5), ['0000:01:00.0', '0000:02:00.0'])
    assert result['ready'] is False
    stuck = [f for f in result['findings'] if f['name'] == 'device_stuck']
    assert len(stuck) == 1 and '0000:01:00.0' in stuck[0]['message'] and 'blacklist' in stuck[0]['remedy']
    by_addr = {d['address']: d for d in result['devices']}
    assert by_addr['0000:01:00.0']['stuck'] == ['driver_override']
    assert by_addr['0000:02:00.0']['stuck'] == []


@pytest.mark.parametrize('tables,expected', [
    (['FACP', 'APIC', 'HPET'], True),     # ACPI firmware without an IOMMU table: no IOMMU to turn on
    (['FACP', 'APIC', 'DMAR'], False),    # Intel VT-d described: the IOMMU is only off
    (['FACP', 'IVRS'], False),            # AMD-Vi described
    (None, False),                        # no ACPI tables readable: cannot tell, say nothing
])
def test_no_iommu_hardware_from_acpi_tables(tmp_path: Path, tables: list | None, expected: bool) -> None:
    root = simkernel.materialize('iommu_off', str(tmp_path / 'k'))
    if tables is not None:
        tdir = Path(root) / 'firmware' / 'acpi' / 'tables'
        tdir.mkdir(parents=True)
        for name in tables:
            (tdir / name).write_bytes(b'')
    result = check(Sysfs(root))
    assert ('no_iommu_hardware' in names(result)) is expected
    assert 'iommu_off' in names(result)
    if expected:
        finding = [f for f in result['findings'] if f['name'] == 'no_iommu_hardware'][0]
        assert finding['severity'] == 'error' and 'DMAR' in finding['message'] and 'firmware' in finding['remedy']
        assert failure_message(result['findings'], ['no_iommu_hardware']) is not None


def test_iommu_on_never_reports_missing_hardware(roots: dict, tmp_path: Path) -> None:
    root = simkernel.materialize('workstation', str(tmp_path / 'w'))
    (Path(root) / 'firmware' / 'acpi' / 'tables').mkdir(parents=True)
    assert 'no_iommu_hardware' not in names(check(Sysfs(root)))


def test_amd_iommu_on_is_info_not_a_failure(tmp_path: Path) -> None:
    root = variant(tmp_path, 'amd_host', kernel__cmdline='root=/dev/md0 ro amd_iommu=on iommu=pt')
    rc, out = run_module({'sysfs_root': root, 'devices': ['41:00.0'],
                          'fail_on': ['no_virtualization', 'no_iommu_hardware', 'amd_iommu_invalid_value']}, tmp_path)
    assert rc == 0, out['msg']
    found = [f for f in out['findings'] if f['name'] == 'amd_iommu_on_ignored']
    assert found and found[0]['severity'] == 'info' and 'amd_iommu=on' in found[0]['message']
    assert out['ready'] is True


def test_no_interrupt_remapping_fails_unless_allowed(tmp_path: Path) -> None:
    root = variant(tmp_path, 'workstation', iommu__interrupt_remapping=False)
    rc, out = run_module({'sysfs_root': root, 'fail_on': ['no_interrupt_remapping']}, tmp_path)
    assert rc != 0 and 'no_interrupt_remapping' in out['msg'] and 'allow_unsafe_interrupts' in out['msg']
    rc, out = run_module({'sysfs_root': root, 'fail_on': ['no_interrupt_remapping'],
                          'allow_unsafe_interrupts': True}, tmp_path)
    assert rc == 0, out['msg']
    assert 'no_interrupt_remapping' not in names(out) and 'unsafe_interrupts_allowed' in names(out)
    assert 'inject interrupts' in json.dumps(out.get('warnings', [])), out.get('warnings')


def test_allow_unsafe_interrupts_does_not_warn_when_remapping_is_on(roots: dict, tmp_path: Path) -> None:
    rc, out = run_module({'sysfs_root': roots['workstation'], 'allow_unsafe_interrupts': True}, tmp_path)
    assert rc == 0 and 'unsafe_interrupts_allowed' not in names(out) and not out.get('warnings')


def test_group_not_viable_names_every_member(roots: dict) -> None:
    result = check(Sysfs(roots['shared_group']), ['0000:03:00.0'])
    msg = [f['message'] for f in result['findings'] if f['name'] == 'group_not_viable'][0]
    for member in ('0000:03:00.0', '0000:03:00.1', '0000:03:01.0'):
        assert member in msg
    assert 'never with a reboot' in msg


def test_python_modules_missing_are_named(roots: dict, tmp_path: Path) -> None:
    shadow = tmp_path / 'shadow'
    shadow.mkdir()
    (shadow / 'lxml.py').write_text('raise ImportError("simulated: lxml is not installed")\n')
    argfile = tmp_path / 'args.json'
    argfile.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': {
        'sysfs_root': roots['workstation'], 'python_modules': ['libvirt', 'lxml'],
        'fail_on': ['python_module_missing']}}))
    env = dict(os.environ, PYTHONPATH='%s:%s' % (shadow, REPO / '.cache' / 'pyroot'))
    proc = subprocess.run([sys.executable, str(REPO / 'plugins' / 'modules' / 'iommu_check.py'), str(argfile)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    out = json.loads(proc.stdout)
    assert proc.returncode != 0 and 'python_module_missing' in out['msg']
    assert 'cannot import lxml' in out['msg'] and sys.executable in out['msg']
    # without fail_on the same read returns the missing modules and the interpreter (role vfio_host
    # decides from them whether to install the packages)
    argfile.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': {
        'sysfs_root': roots['workstation'], 'python_modules': ['libvirt', 'lxml']}}))
    proc = subprocess.run([sys.executable, str(REPO / 'plugins' / 'modules' / 'iommu_check.py'), str(argfile)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0, out
    assert out['python_modules_missing'] == ['lxml'] and out['python_interpreter'] == sys.executable
    rc, out = run_module({'sysfs_root': roots['workstation'], 'python_modules': ['lxml']}, tmp_path)
    assert rc == 0 and 'python_module_missing' not in names(out) and out['python_modules_missing'] == []
    rc, out = run_module({'sysfs_root': roots['workstation'], 'python_modules': ['os']}, tmp_path)
    assert rc != 0 and 'python_modules' in out['msg']


def test_missing_commands_are_listed_in_the_same_read(roots: dict, tmp_path: Path) -> None:
    present = tmp_path / 'bin' / 'update-initramfs'
    present.parent.mkdir()
    present.write_text('#!/bin/sh\n')
    absent = str(tmp_path / 'bin' / 'kmod')
    rc, out = run_module({'sysfs_root': roots['workstation'], 'commands': [str(present), absent]}, tmp_path)
    assert rc == 0, out
    assert out['commands_missing'] == [absent]
    finding = [f for f in out['findings'] if f['name'] == 'command_missing']
    assert finding and finding[0]['severity'] == 'warning' and absent in finding[0]['message']
    assert str(present) not in finding[0]['message']
    rc, out = run_module({'sysfs_root': roots['workstation'], 'commands': [str(present)]}, tmp_path)
    assert rc == 0 and out['commands_missing'] == [] and 'command_missing' not in names(out)


def test_a_relative_command_is_refused_naming_it(roots: dict, tmp_path: Path) -> None:
    rc, out = run_module({'sysfs_root': roots['workstation'], 'commands': ['kmod']}, tmp_path)
    assert rc != 0 and "commands: 'kmod' is not an absolute path" in out['msg'], out
    assert 'Traceback' not in json.dumps(out)
