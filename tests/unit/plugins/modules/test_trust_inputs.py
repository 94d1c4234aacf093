"""Bad input, untrusted state and the running host, through the modules as a task runs them (issue 11).

Each test names the class of the issue it covers: numbers, structured inputs, injection into
managed files, bounded name selection, the journal, duplicates, "am I on the real host?".
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
from ansible.module_utils import _internal as ansible_internal
from ansible.module_utils.testing import patch_module_args

from ansible_collections.fleetgpu.passthrough.plugins.modules import (
    gpu_facts, iommu_check, kernel_cmdline, libvirt_hostdev, vfio_bind, vfio_host_config)
from tests.sim import simkernel

GRUB = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'
KERNEL = '6.1.0-27-amd64'


def run_module(module: Any, args: dict, check: bool = False) -> dict:
    """Run a module's main() in-process as a managed host would; return its JSON result."""
    args = dict(args, _ansible_check_mode=check, _ansible_diff=True)
    out = io.StringIO()
    was_controller = ansible_internal.is_controller
    ansible_internal.is_controller = False
    try:
        with patch_module_args(args), contextlib.redirect_stdout(out):
            with pytest.raises(SystemExit):
                module.main()
    finally:
        ansible_internal.is_controller = was_controller
    return json.loads(out.getvalue())


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    def _raise(_sig: int, _frame: Any) -> None:
        raise TimeoutError('the module did not return within %ds' % seconds)
    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture()
def sim(tmp_path: Path) -> str:
    return simkernel.materialize('identical_pair', str(tmp_path / 'kernel'))


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    target = tmp_path / 'root'
    (target / 'etc/default/grub.d').mkdir(parents=True)
    (target / 'etc/default/grub').write_text(GRUB)
    (target / 'lib/modules' / KERNEL).mkdir(parents=True)
    return target


def files_of(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob('*')) if p.is_file()}


def facts_of(sim: str) -> dict:
    return run_module(gpu_facts, {'sysfs_root': sim})['ansible_facts']['gpu_passthrough']


# ------------------------------------------------------------------ numbers: one shared validation
@pytest.mark.parametrize('value', ['inf', 'nan', '1e300', '0', '-1'])
@pytest.mark.parametrize('module', [gpu_facts, iommu_check, kernel_cmdline, libvirt_hostdev, vfio_bind,
                                    vfio_host_config])
def test_timeout_out_of_range_is_refused_by_every_module(module: Any, value: str, sim: str, root: Path,
                                                         tmp_path: Path) -> None:
    args: dict = {'sysfs_root': sim, 'timeout': value}
    if module is vfio_bind:
        args.update(devices=['0000:02:00.0'], journal_path=str(tmp_path / 'j.json'))
    if module in (kernel_cmdline, vfio_host_config):
        args.update(root=str(root))
    if module is vfio_host_config:
        args.update(state='absent', initramfs='none')
    if module is libvirt_hostdev:
        if not (libvirt_hostdev.HAS_LIBVIRT and libvirt_hostdev.HAS_LXML):
            pytest.skip('libvirt-python and lxml are needed to reach the option checks')
        args.update(domain='vm1', devices=['0000:01:00.0'])
    before = files_of(root)
    result = run_module(module, args)
    assert result.get('failed') is True, result
    assert 'timeout must be a number of seconds greater than 0 and at most 3600' in result['msg']
    assert files_of(root) == before


def test_fractional_count_is_refused_not_truncated(sim: str, root: Path) -> None:
    result = run_module(vfio_host_config, {
        'facts': facts_of(sim), 'devices': [{'vendor_id': '1234', 'device_id': '1111', 'count': 1.9}],
        'root': str(root), 'sysfs_root': sim, 'initramfs': 'none'})
    assert result.get('failed') is True
    assert 'count must be a whole positive number or "all", got 1.9' in result['msg']


# ------------------------------------------------------------------ structured inputs
@pytest.mark.parametrize('facts, fragment', [
    ({'gpus': 'nope'}, "facts.gpus must be a list of GPUs, got 'nope'"),
    ({'gpus': [{}]}, 'facts.gpus[0].address is missing'),
    ({'gpus': [{'address': '01:00.0', 'vendor_id': '1234', 'device_id': '1111'}]},
     'facts.gpus[0].vendor_device is missing'),
    ({'gpus': [{'address': 'zz', 'vendor_id': '1234', 'device_id': '1111', 'vendor_device': '1234:1111'}]},
     'facts.gpus[0]:'),
    ({'gpus': [{'address': '0000:01:00.0', 'vendor_id': '1234', 'device_id': '1111', 'vendor_device': '1234:1111',
                'companions': [{'address': '0000:01:00.1'}]}]}, 'facts.gpus[0].companions[0].vendor_id is missing'),
    ({'host': 'x', 'gpus': []}, 'facts.host must be a mapping'),
])
def test_malformed_facts_name_the_bad_element(sim: str, root: Path, facts: dict, fragment: str) -> None:
    result = run_module(vfio_host_config, {'facts': facts, 'devices': [{'address': '0000:01:00.0'}],
                                           'root': str(root), 'sysfs_root': sim, 'initramfs': 'none'})
    assert result.get('failed') is True, result
    assert fragment in result['msg']
    assert 'Traceback' not in result.get('module_stderr', '')


# ------------------------------------------------------------------ injection into managed files
@pytest.mark.parametrize('entry', ['snd_hda_intel\ninstall snd_hda_intel /bin/sh -c id', 'two words', '', 'a/b'])
def test_blacklist_entry_that_is_not_a_module_name_is_refused(sim: str, root: Path, entry: str) -> None:
    result = run_module(vfio_host_config, {
        'facts': facts_of(sim), 'devices': [{'address': '0000:02:00.0'}], 'blacklist': ['radeon', entry],
        'root': str(root), 'sysfs_root': sim, 'initramfs': 'none'})
    assert result.get('failed') is True, result
    assert 'vfio_host_blacklist[1]: %r is not a kernel module name' % entry in result['msg']
    assert not (root / 'etc/modprobe.d').exists()


@pytest.mark.parametrize('arg, fragment', [
    ('foo="bar', 'unbalanced double quote'),
    ('dyndbg="file a.c\n+p"', 'control character'),
    ('x=\x07', 'control character'),
    ('x=' + 'a' * 100000, 'limited to 2048 bytes'),
])
def test_bad_kernel_argument_is_refused_before_writing(sim: str, root: Path, arg: str, fragment: str) -> None:
    before = files_of(root)
    result = run_module(kernel_cmdline, {'add': ['iommu=pt', arg], 'root': str(root), 'sysfs_root': sim,
                                         'update': False})
    assert result.get('failed') is True, result
    assert fragment in result['msg']
    assert files_of(root) == before


def test_whole_command_line_over_the_x86_limit_is_refused(sim: str, root: Path) -> None:
    # each argument is fine, together with what is already there they pass 2048 bytes
    (root / 'etc/default/grub').write_text(GRUB.replace('"quiet"', '"quiet %s"' % ('keep=' + 'k' * 1500)))
    before = files_of(root)
    result = run_module(kernel_cmdline, {'add': ['mine=' + 'm' * 600], 'root': str(root), 'sysfs_root': sim,
                                         'update': False})
    assert result.get('failed') is True, result
    assert 'at most 2048 bytes' in result['msg'] and 'with the arguments already there' in result['msg']
    assert files_of(root) == before


# ------------------------------------------------------------------ bounded selection by name
def test_name_is_a_literal_match(sim: str, root: Path) -> None:
    facts = facts_of(sim)
    ok = run_module(vfio_host_config, {'facts': facts, 'devices': [{'name': '1002:51'}], 'root': str(root),
                                       'sysfs_root': sim, 'initramfs': 'none'}, check=True)
    assert [g['address'] for g in ok['selected']] == ['0000:02:00.0']
    # ".*" is two characters, not "anything"
    dot = run_module(vfio_host_config, {'facts': facts, 'devices': [{'name': '1002.*'}], 'root': str(root),
                                        'sysfs_root': sim, 'initramfs': 'none'}, check=True)
    assert dot.get('failed') is True and 'matches no GPU' in dot['msg']


@pytest.mark.parametrize('pattern', ['(.*.*)*XYZ', '(a+)+$', '(x|x?)*y', '(.*){1,200}z'])
def test_catastrophic_name_regex_is_refused_quickly(sim: str, root: Path, pattern: str) -> None:
    facts = facts_of(sim)
    for gpu in facts['gpus']:
        gpu['device_name'] = 'a' * 300
    with alarm(10):
        for sel in ({'name': pattern}, {'name_regex': pattern}):
            result = run_module(vfio_host_config, {'facts': facts, 'devices': [sel], 'root': str(root),
                                                   'sysfs_root': sim, 'initramfs': 'none'}, check=True)
            assert result.get('failed') is True
    assert 'can take exponential time' in result['msg']


def test_name_regex_still_selects(sim: str, root: Path) -> None:
    result = run_module(vfio_host_config, {'facts': facts_of(sim), 'devices': [{'name_regex': r'1002:5\d{2}9'}],
                                           'root': str(root), 'sysfs_root': sim, 'initramfs': 'none'}, check=True)
    assert [g['address'] for g in result['selected']] == ['0000:02:00.0']


# ------------------------------------------------------------------ duplicates
def test_same_gpu_listed_twice_is_a_duplicate(sim: str, root: Path) -> None:
    result = run_module(vfio_host_config, {
        'facts': facts_of(sim), 'devices': [{'address': '0000:02:00.0'}, {'address': '02:00.0'}],
        'root': str(root), 'sysfs_root': sim, 'initramfs': 'none'}, check=True)
    assert result.get('failed') is True
    assert 'vfio_host_devices[1]' in result['msg'] and 'is a duplicate' in result['msg']
    assert '0000:02:00.0 is already selected by vfio_host_devices[0]' in result['msg']


# ------------------------------------------------------------------ kernel_release
@pytest.mark.parametrize('release, fragment', [
    ('9.9.9-bogus', "kernel_release '9.9.9-bogus' is not installed"),
    ('../../etc', 'is not a kernel release name'),
])
def test_bogus_kernel_release_is_refused_before_any_write(sim: str, root: Path, tmp_path: Path, release: str,
                                                          fragment: str) -> None:
    before = files_of(root)
    result = run_module(vfio_host_config, {
        'facts': facts_of(sim), 'devices': [{'address': '0000:02:00.0'}], 'kernel_release': release,
        'root': str(root), 'sysfs_root': sim, 'initramfs': 'initramfs-tools'})
    assert result.get('failed') is True, result
    assert fragment in result['msg']
    assert files_of(root) == before


# ------------------------------------------------------------------ "am I on the real host?"
def test_simulated_sysfs_never_runs_the_hosts_modprobe(sim: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fakebin = tmp_path / 'bin'
    fakebin.mkdir()
    log = tmp_path / 'modprobe.log'
    (fakebin / 'modprobe').write_text('#!/bin/sh\necho "modprobe $*" >> "%s"\nexit 0\n' % log)
    (fakebin / 'modprobe').chmod(0o755)
    monkeypatch.setenv('PATH', '%s:%s' % (fakebin, os.environ['PATH']))
    assert not os.path.isdir(os.path.join(sim, 'bus/pci/drivers/vfio-pci'))
    result = run_module(vfio_bind, {'devices': ['0000:02:00.0'], 'sysfs_root': sim,
                                    'journal_path': str(tmp_path / 'j.json')})
    assert not log.exists(), log.read_text()
    assert result.get('failed') is True
    assert 'modprobe is never run for a sysfs_root other than /sys' in result['msg']


@pytest.mark.parametrize('spelling', ['//', '/.', '/./'])
def test_spellings_of_the_live_root_are_the_live_root(spelling: str) -> None:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _files
    assert _files.is_live(spelling)
    assert _files.rooted(spelling, '/etc/default/grub') == '/etc/default/grub'
    assert not _files.is_live('/tmp')


# ------------------------------------------------------------------ the journal is not trusted blindly
def _journal(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


@pytest.mark.parametrize('data, fragment', [
    ('{"version": 1, "devices": {"0000:01:00.0": {"driver_bef', 'cannot read the journal'),
    ({'something': 'else'}, 'is not a vfio_bind journal'),
    ([1, 2], 'is not a vfio_bind journal'),
    ({'version': 7, 'devices': {}}, 'has version 7'),
    ({'version': 1, 'devices': {'not-an-address': {'driver_before': 'nvidia'}}}, 'an entry with an invalid address'),
    ({'version': 1, 'devices': {'0000:02:00.0': {'driver_before': 'radeon', 'vendor_device': 'x\ny'}}},
     'invalid vendor_device'),
])
def test_bad_journal_fails_naming_it_and_keeps_it(sim: str, tmp_path: Path, data: object, fragment: str) -> None:
    journal = tmp_path / 'state' / 'vfio_bind.json'
    _journal(journal, data)
    kept = journal.read_text()
    result = run_module(vfio_bind, {'devices': ['0000:02:00.0'], 'state': 'absent', 'sysfs_root': sim,
                                    'journal_path': str(journal)})
    assert result.get('failed') is True, result
    assert fragment in result['msg'] and str(journal) in result['msg']
    # the entry at fault is named as well (the malformed address key, the device whose entry is bad)
    for entry in (data.get('devices') or {}) if isinstance(data, dict) else ():
        assert entry in result['msg'], result['msg']
    assert journal.read_text() == kept


def test_restore_refuses_a_card_that_is_not_the_journaled_one(tmp_path: Path) -> None:
    sim = simkernel.materialize('identical_pair', str(tmp_path / 'kernel'))
    # 02:00.0 is unbound (as a run that died after unbinding leaves it); the journal says another card was there
    journal = tmp_path / 'state' / 'vfio_bind.json'
    _journal(journal, {'version': 1, 'devices': {'0000:02:00.0': {
        'driver_before': 'snd_hda_intel', 'override_before': None, 'group': 3, 'vendor_device': '10de:2204',
        'driver': 'vfio-pci'}}})
    result = run_module(vfio_bind, {'devices': ['0000:02:00.0'], 'state': 'absent', 'sysfs_root': sim,
                                    'journal_path': str(journal)}, check=True)
    assert result.get('failed') is True, result
    assert '10de:2204' in result['msg'] and '1002:5159' in result['msg'] and str(journal) in result['msg']


def test_unreadable_driver_override_is_not_taken_as_empty(tmp_path: Path) -> None:
    sim = simkernel.materialize('identical_pair', str(tmp_path / 'kernel'))
    override = os.path.join(sim, 'bus/pci/devices/0000:02:00.0/driver_override')
    os.unlink(override)
    os.mkdir(override)  # reading it fails (EISDIR) while it exists
    result = run_module(vfio_bind, {'devices': ['0000:02:00.0'], 'sysfs_root': sim,
                                    'journal_path': str(tmp_path / 'j.json')}, check=True)
    assert result.get('failed') is True, result
    assert 'cannot read' in result['msg'] and 'driver_override' in result['msg']
    assert not (tmp_path / 'j.json').exists()
