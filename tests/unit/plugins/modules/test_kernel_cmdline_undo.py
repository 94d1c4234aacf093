"""kernel_cmdline's record and undo on every bootloader backend, and rollback of a partial failure (issue 11).

The module runs in-process against a directory root.  The bootloader tools are stand-ins inside
that root that really edit its files (BLS entries for grubby, the JSON configuration for
kernelstub) and log their calls, reached through a stand-in chroot on PATH, as with a real
prefix root.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.modules import kernel_cmdline
from tests.sim import simkernel
from tests.unit.plugins.modules.test_trust_inputs import run_module

K1, K2 = '6.8.0-45-generic', '6.8.0-47-generic'
RECORD = 'var/lib/fleetgpu-passthrough/kernel_cmdline.json'
FAKE_CHROOT = '#!/bin/sh\nroot="$1"; shift\nprog="$1"; shift\nFAKE_ROOT="$root" exec "$root$prog" "$@"\n'

# grubby --update-kernel=ALL [--args="a b"] [--remove-args="a b"] on the root's BLS entries
GRUBBY = r'''#!/usr/bin/env python3
import os, sys
root = os.environ['FAKE_ROOT']
add, remove = [], []
for arg in sys.argv[1:]:
    if arg.startswith('--args='):
        add = arg.split('=', 1)[1].split()
    elif arg.startswith('--remove-args='):
        remove = arg.split('=', 1)[1].split()
entries = os.path.join(root, 'boot/loader/entries')
for name in os.listdir(entries):
    path = os.path.join(entries, name)
    lines = open(path).read().splitlines()
    out = []
    for line in lines:
        if line.startswith('options '):
            tokens = [t for t in line.split()[1:] if t not in remove and t.split('=')[0] not in remove]
            tokens += [t for t in add if t not in tokens]
            line = 'options ' + ' '.join(tokens)
        out.append(line)
    open(path, 'w').write('\n'.join(out) + '\n')
with open(os.path.join(root, 'tools.log'), 'a') as log:
    log.write('grubby %s\n' % ' '.join(sys.argv[1:]))
'''

# kernelstub --add-options "a b" / --delete-options "a b" on the root's configuration
KERNELSTUB = r'''#!/usr/bin/env python3
import json, os, sys
root = os.environ['FAKE_ROOT']
path = os.path.join(root, 'etc/kernelstub/configuration')
data = json.load(open(path))
options = data['user']['kernel_options']
if sys.argv[1] == '--add-options':
    options += [t for t in sys.argv[2].split() if t not in options]
elif sys.argv[1] == '--delete-options':
    options[:] = [t for t in options if t not in sys.argv[2].split()]
json.dump(data, open(path, 'w'))
with open(os.path.join(root, 'tools.log'), 'a') as log:
    log.write('kernelstub %s\n' % ' '.join(sys.argv[1:]))
'''

# kernel-install add VERSION IMAGE: logs what /etc/kernel/cmdline held when it ran; fails for FAIL_VERSION,
# and for RERUN_FAIL_VERSION from its second call on
KERNEL_INSTALL = r'''#!/bin/sh
log="$FAKE_ROOT/tools.log"
calls=$(grep -c "^kernel-install add $2 " "$log" 2>/dev/null)
echo "kernel-install $* :: $(cat "$FAKE_ROOT/etc/kernel/cmdline")" >> "$log"
[ "$2" = "$FAIL_VERSION" ] && { echo "kernel-install: cannot write the entry of $2" >&2; exit 1; }
[ "$2" = "$RERUN_FAIL_VERSION" ] && [ "$calls" -ge 1 ] && { echo "no space left" >&2; exit 1; }
exit 0
'''

TOOL = '#!/bin/sh\necho "%s $*" >> "$FAKE_ROOT/tools.log"\n'


def _tool(root: Path, name: str, text: str) -> None:
    path = root / 'usr/sbin' / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_root(root: Path, loader: str) -> None:
    """A host of ``loader`` whose own command line already has iommu=pt."""
    if loader == 'grub':
        _write(root, 'etc/default/grub', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="iommu=pt"\n')
        _tool(root, 'update-grub', TOOL % 'update-grub')
    elif loader == 'grubby':
        _write(root, 'etc/default/grub', 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="ro iommu=pt"\n')
        _write(root, 'boot/loader/entries/abc-%s.conf' % K1,
               'title Rocky\nversion %s\nlinux /vmlinuz-%s\noptions root=/dev/vda1 ro iommu=pt\n' % (K1, K1))
        _tool(root, 'grubby', GRUBBY)
    elif loader in ('systemd-boot', 'proxmox-boot-tool'):
        _write(root, 'etc/kernel/cmdline', 'root=/dev/vda1 rw iommu=pt\n')
        if loader == 'systemd-boot':
            _write(root, 'boot/efi/loader/loader.conf', 'default @saved\n')
            for version in (K1, K2):
                _write(root, 'lib/modules/%s/vmlinuz' % version, 'kernel')
            _tool(root, 'kernel-install', KERNEL_INSTALL)
        else:
            _write(root, 'etc/kernel/proxmox-boot-uuids', '1234-ABCD\n')
            _tool(root, 'proxmox-boot-tool', TOOL % 'proxmox-boot-tool')
    elif loader == 'kernelstub':
        _write(root, 'etc/kernelstub/configuration',
               json.dumps({'default': {'kernel_options': ['quiet']}, 'user': {'kernel_options': ['quiet', 'iommu=pt']}}))
        _tool(root, 'kernelstub', KERNELSTUB)


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    fakebin = tmp_path / 'bin'
    fakebin.mkdir()
    (fakebin / 'chroot').write_text(FAKE_CHROOT)
    (fakebin / 'chroot').chmod(0o755)
    host_log = tmp_path / 'host.log'
    for name in ('update-grub', 'grubby', 'kernel-install', 'kernelstub', 'proxmox-boot-tool'):
        (fakebin / name).write_text('#!/bin/sh\necho "%s $*" >> "%s"\n' % (name, host_log))
        (fakebin / name).chmod(0o755)
    monkeypatch.setenv('PATH', '%s:%s' % (fakebin, os.environ['PATH']))
    sysfs = simkernel.materialize('identical_pair', str(tmp_path / 'kernel'))
    return {'sysfs': sysfs, 'host_log': host_log, 'root': tmp_path / 'root'}


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob('*'))
            if p.is_file() and not str(p.relative_to(root)).startswith('usr/') and p.name != 'tools.log'}


LOADERS = ['grub', 'grubby', 'systemd-boot', 'proxmox-boot-tool', 'kernelstub']


@pytest.mark.parametrize('loader', LOADERS)
def test_undo_removes_only_what_the_collection_added(env: dict, loader: str) -> None:
    root = env['root']
    make_root(root, loader)
    before = tree(root)
    args = {'root': str(root), 'sysfs_root': env['sysfs'], 'bootloader': loader}
    undo = dict(args, undo=True, remove=['intel_iommu', 'iommu'])

    # a host the collection never changed: undo leaves it exactly as it is
    result = run_module(kernel_cmdline, undo)
    assert result['changed'] is False and result['reboot_required'] is False and result['files'] == [], result
    assert tree(root) == before and not (root / 'tools.log').exists()

    result = run_module(kernel_cmdline, dict(args, add=['intel_iommu=on', 'iommu=pt']))
    assert result['changed'] is True, result
    assert result['recorded'] == {'added': ['intel_iommu=on'], 'displaced': []}
    assert 'intel_iommu=on' in result['cmdline_after'].split() and 'iommu=pt' in result['cmdline_after'].split()
    assert json.loads((root / RECORD).read_text())['added'] == ['intel_iommu=on']
    assert run_module(kernel_cmdline, dict(args, add=['intel_iommu=on', 'iommu=pt']))['changed'] is False

    check = run_module(kernel_cmdline, undo, check=True)
    assert check['changed'] is True and (root / RECORD).exists()
    result = run_module(kernel_cmdline, undo)
    assert result['changed'] is True, result
    assert 'iommu=pt' in result['cmdline_after'].split() and 'intel_iommu=on' not in result['cmdline_after'].split()
    # the simulated kernel runs with intel_iommu=on: the undo needs a reboot to take effect
    assert result['reboot_required'] is True and result['lingering'] == ['intel_iommu=on']
    assert tree(root) == before, 'the undo did not give back exactly what was there'
    assert run_module(kernel_cmdline, undo)['changed'] is False
    assert not env['host_log'].exists(), env['host_log'].read_text()


def test_undo_puts_back_a_displaced_argument(env: dict) -> None:
    root = env['root']
    make_root(root, 'systemd-boot')
    (root / 'etc/kernel/cmdline').write_text('root=/dev/vda1 rw intel_iommu=off\n')
    before = tree(root)
    args = {'root': str(root), 'sysfs_root': env['sysfs']}
    result = run_module(kernel_cmdline, dict(args, add=['intel_iommu=on']))
    assert result['recorded'] == {'added': ['intel_iommu=on'], 'displaced': ['intel_iommu=off']}
    run_module(kernel_cmdline, dict(args, undo=True))
    assert tree(root) == before


def test_corrupt_record_is_refused_and_kept(env: dict) -> None:
    root = env['root']
    make_root(root, 'grub')
    _write(root, RECORD, '{"version": 1, "added": ["intel_iommu=on"')
    result = run_module(kernel_cmdline, {'root': str(root), 'sysfs_root': env['sysfs'], 'undo': True})
    assert result.get('failed') is True and str(root / RECORD) in result['msg'] and 'left as it is' in result['msg']
    assert (root / RECORD).read_text() == '{"version": 1, "added": ["intel_iommu=on"'


def test_undo_cannot_be_combined_with_add(env: dict) -> None:
    root = env['root']
    make_root(root, 'grub')
    result = run_module(kernel_cmdline, {'root': str(root), 'sysfs_root': env['sysfs'], 'undo': True,
                                         'add': ['iommu=pt']})
    assert result.get('failed') is True and 'cannot be combined with add' in result['msg']


def _kernel_install_calls(root: Path) -> list[str]:
    return [line for line in (root / 'tools.log').read_text().splitlines() if line.startswith('kernel-install')]


def test_kernel_install_failing_for_the_second_kernel_rolls_back_the_first(env: dict,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = env['root']
    make_root(root, 'systemd-boot')
    before = tree(root)
    monkeypatch.setenv('FAIL_VERSION', K2)
    result = run_module(kernel_cmdline, {'root': str(root), 'sysfs_root': env['sysfs'], 'add': ['intel_iommu=on']})
    assert result.get('failed') is True
    calls = _kernel_install_calls(root)
    # K1 got the new line, K2 failed, then K1 was installed again with the previous line
    assert calls[0].startswith('kernel-install add %s ' % K1) and calls[0].endswith('intel_iommu=on')
    assert calls[1].startswith('kernel-install add %s ' % K2)
    assert calls[2].startswith('kernel-install add %s ' % K1) and calls[2].endswith('root=/dev/vda1 rw iommu=pt')
    assert 'previous configuration was restored (and kernel-install add %s' % K1 in result['msg']
    assert tree(root) == before


def test_rollback_that_cannot_finish_says_exactly_what_is_left(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    root = env['root']
    make_root(root, 'systemd-boot')
    monkeypatch.setenv('FAIL_VERSION', K2)
    monkeypatch.setenv('RERUN_FAIL_VERSION', K1)
    result = run_module(kernel_cmdline, {'root': str(root), 'sysfs_root': env['sysfs'], 'add': ['intel_iommu=on']})
    assert result.get('failed') is True
    assert 'restored' not in result['msg'].split('INCOMPLETE')[0]
    assert 'the rollback is INCOMPLETE' in result['msg']
    assert 'kernel-install add %s /lib/modules/%s/vmlinuz could not be run again' % (K1, K1) in result['msg']


def test_undo_of_a_grub_drop_in_written_before_records_were_kept(env: dict) -> None:
    """A host converged by an earlier version has the drop-in but no record: the drop-in is the record."""
    root = env['root']
    make_root(root, 'grub')
    before = tree(root)
    _write(root, 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg',
           '# managed by fleetgpu.passthrough: changes made here are overwritten\n'
           'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=on"\n')
    result = run_module(kernel_cmdline, {'root': str(root), 'sysfs_root': env['sysfs'], 'undo': True,
                                         'remove': ['intel_iommu', 'iommu', 'vfio-pci.ids']})
    assert result['changed'] is True and result['cmdline_after'] == 'iommu=pt quiet'
    assert tree(root) == before
