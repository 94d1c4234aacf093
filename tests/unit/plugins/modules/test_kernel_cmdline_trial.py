"""kernel_cmdline's boot-once trial (issue 15): stage a one-time boot entry, commit it once the host came up
on it, or find that it fell back; GRUB and systemd-boot, and the backends without a one-time boot.

The module runs in-process against a directory root, with stand-ins for the bootloader tools inside that
root (reached through a stand-in chroot, as with a real prefix root). grub-reboot and grub-editenv edit the
root's grubenv as the real ones do; bootctl set-oneshot writes the efivarfs file. The simulated kernel's
proc/cmdline is the running command line: rewriting it is the host coming back from a reboot.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.modules import kernel_cmdline
from tests.unit.plugins.modules import test_kernel_cmdline_undo as undo_tests
from tests.unit.plugins.modules.test_kernel_cmdline_undo import K1, K2, RECORD, _tool, _write, make_root, tree
from tests.unit.plugins.modules.test_trust_inputs import run_module

# the same host fixture as the undo tests: a directory root, the simulated kernel, stand-in tools
env = undo_tests.env
TRIAL = 'fleetgpu-passthrough-trial'
SCRIPT = 'etc/grub.d/42_fleetgpu-passthrough-trial'
DROPIN = 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg'
ONESHOT = 'sys/firmware/efi/efivars/LoaderEntryOneShot-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f'

GRUB_CFG = '''### BEGIN /etc/grub.d/00_header ###
if [ -s $prefix/grubenv ]; then
  load_env
fi
### END /etc/grub.d/00_header ###
### BEGIN /etc/grub.d/10_linux ###
function gfxmode {
\tset gfxpayload="${1}"
}
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class os $menuentry_id_option 'gnulinux-simple-0a1b' {
\tload_video
\tinsmod ext2
\tsearch --no-floppy --fs-uuid --set=root 0a1b
\techo\t'Loading Linux %(k)s ...'
\tlinux\t/boot/vmlinuz-%(k)s root=UUID=0a1b ro iommu=pt quiet
\techo\t'Loading initial ramdisk ...'
\tinitrd\t/boot/initrd.img-%(k)s
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-0a1b' {
\tmenuentry 'Debian GNU/Linux, with Linux %(k)s' --class debian $menuentry_id_option 'gnulinux-%(k)s-advanced-0a1b' {
\t\tlinux\t/boot/vmlinuz-%(k)s root=UUID=0a1b ro iommu=pt quiet
\t\tinitrd\t/boot/initrd.img-%(k)s
\t}
}
### END /etc/grub.d/10_linux ###
''' % {'k': K2}

# grub-reboot ENTRY / grub-editenv FILE unset next_entry, on the root's grubenv
GRUB_REBOOT = '''#!/bin/sh
echo "grub-reboot $*" >> "$FAKE_ROOT/tools.log"
printf '# GRUB Environment Block\\nnext_entry=%s\\n' "$1" > "$FAKE_ROOT/boot/grub/grubenv"
'''
GRUB_EDITENV = '''#!/bin/sh
echo "grub-editenv $*" >> "$FAKE_ROOT/tools.log"
printf '# GRUB Environment Block\\n' > "$FAKE_ROOT$1"
'''
BOOTCTL = '''#!/usr/bin/env python3
import os, sys
root = os.environ['FAKE_ROOT']
with open(os.path.join(root, 'tools.log'), 'a') as log:
    log.write('bootctl %s\\n' % ' '.join(repr(a) if not a else a for a in sys.argv[1:]))
path = os.path.join(root, 'ONESHOT')
if sys.argv[2]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, 'wb').write(b'\\x07\\x00\\x00\\x00' + (sys.argv[2] + '\\x00').encode('utf-16-le'))
elif os.path.exists(path):
    os.unlink(path)
'''.replace('ONESHOT', ONESHOT)


def grub_host(root: Path) -> None:
    make_root(root, 'grub')
    _write(root, 'boot/grub/grub.cfg', GRUB_CFG)
    _write(root, 'boot/grub/grubenv', '# GRUB Environment Block\n')   # as grub-install leaves it
    _tool(root, 'grub-reboot', GRUB_REBOOT)
    _tool(root, 'grub-editenv', GRUB_EDITENV)


def boot(env: dict, cmdline: str) -> None:
    """The host comes back running ``cmdline`` (GRUB already cleared its one-time next_entry)."""
    Path(env['sysfs']).parent.joinpath('proc', 'cmdline').write_text(cmdline + '\n')
    grubenv = env['root'] / 'boot/grub/grubenv'
    if grubenv.exists():
        grubenv.write_text('# GRUB Environment Block\n')


def log(root: Path) -> list[str]:
    path = root / 'tools.log'
    return path.read_text().splitlines() if path.exists() else []


OLD = 'BOOT_IMAGE=/boot/vmlinuz-%s root=UUID=0a1b ro iommu=pt quiet' % K2


def test_grub_trial_that_falls_back_then_one_that_comes_up(env: dict) -> None:
    root = env['root']
    grub_host(root)
    boot(env, OLD)
    args = {'root': str(root), 'sysfs_root': env['sysfs'], 'add': ['intel_iommu=on', 'iommu=pt']}
    before = tree(root)

    # check mode predicts the trial and writes nothing
    check = run_module(kernel_cmdline, dict(args, trial='stage'), check=True)
    assert check['changed'] is True and check['trial']['state'] == 'staged', check
    assert tree(root) == before and log(root) == []
    assert check['diff'][0]['after_header'] == 'kernel arguments of the trial boot (once)'

    staged = run_module(kernel_cmdline, dict(args, trial='stage'))
    assert staged['changed'] is True and staged['trial']['state'] == 'staged', staged
    assert staged['trial']['arguments'] == ['intel_iommu=on'] and staged['reboot_required'] is True
    assert staged['trial']['cmdline'] == 'root=UUID=0a1b ro iommu=pt quiet intel_iommu=on panic=10'
    assert staged['cmdline_after'] == 'iommu=pt intel_iommu=on quiet'   # what becomes permanent once committed
    assert staged['commands'] == [['update-grub'], ['grub-reboot', TRIAL]] == [c.split() for c in log(root)]
    # nothing permanent: no drop-in, no record; the trial script prints exactly one menu entry
    assert not (root / DROPIN).exists() and not (root / RECORD).exists()
    script = root / SCRIPT
    assert os.access(script, os.X_OK) and not list(script.parent.glob('*.fleetgpu.bak'))
    printed = subprocess.run(['sh', str(script)], capture_output=True, text=True, check=True).stdout
    assert printed.splitlines()[0] == "menuentry 'fleetgpu.passthrough trial boot (once)' --id %s {" % TRIAL
    assert printed.splitlines()[-1] == '}' and printed.count('menuentry') == 1
    assert '\tlinux\t/boot/vmlinuz-%s root=UUID=0a1b ro iommu=pt quiet intel_iommu=on panic=10\n' % K2 in printed
    assert '\tinitrd\t/boot/initrd.img-%s\n' % K2 in printed and 'search --no-floppy --fs-uuid --set=root 0a1b' in printed
    # staged again before the reboot: nothing to do
    again = run_module(kernel_cmdline, dict(args, trial='stage'))
    assert again['changed'] is False and again['trial']['state'] == 'staged' and len(log(root)) == 2, again

    # the trial panicked and the host came back on its old entry: the commit refuses, nothing permanent
    boot(env, OLD)
    fell = run_module(kernel_cmdline, dict(args, trial='commit'))
    assert fell.get('failed') is True and 'fell back to its previous command line' in fell['msg'], fell
    assert 'lacks intel_iommu=on' in fell['msg'] and 'Traceback' not in json.dumps(fell)
    assert not script.exists() and not (root / DROPIN).exists() and not (root / RECORD).exists()
    assert tree(root) == before, 'the failed trial left something behind'

    # a second trial that comes up: the running kernel is the trial entry's
    run_module(kernel_cmdline, dict(args, trial='stage'))
    boot(env, 'BOOT_IMAGE=/boot/vmlinuz-%s root=UUID=0a1b ro iommu=pt quiet intel_iommu=on panic=10' % K2)
    booted = run_module(kernel_cmdline, dict(args, trial='stage'))
    assert booted['changed'] is False and booted['trial']['state'] == 'booted' and booted['reboot_required'] is False
    predicted = run_module(kernel_cmdline, dict(args, trial='commit'), check=True)
    assert predicted['changed'] is True and predicted['trial']['state'] == 'committed' and script.exists()
    committed = run_module(kernel_cmdline, dict(args, trial='commit'))
    assert committed['changed'] is True and committed['trial']['state'] == 'committed', committed
    assert predicted['files'] == committed['files'] and predicted['commands'] == committed['commands'] == [['update-grub']]
    assert 'intel_iommu=on' in (root / DROPIN).read_text() and not script.exists()
    assert json.loads((root / RECORD).read_text())['added'] == ['intel_iommu=on']
    for trial in ('commit', 'stage', 'discard'):
        assert run_module(kernel_cmdline, dict(args, trial=trial))['changed'] is False, trial
    # undo gives back the host exactly as it was
    run_module(kernel_cmdline, {'root': str(root), 'sysfs_root': env['sysfs'], 'undo': True})
    assert tree(root) == before


def test_grub_discard_and_undo_remove_a_staged_trial(env: dict) -> None:
    root = env['root']
    grub_host(root)
    boot(env, OLD)
    before = tree(root)
    args = {'root': str(root), 'sysfs_root': env['sysfs'], 'add': ['intel_iommu=on']}
    run_module(kernel_cmdline, dict(args, trial='stage'))
    assert (root / 'boot/grub/grubenv').read_text().splitlines()[1] == 'next_entry=' + TRIAL
    discarded = run_module(kernel_cmdline, dict(args, trial='discard'))
    assert discarded['changed'] is True and discarded['trial']['state'] == 'discarded'
    assert discarded['commands'] == [['update-grub'], ['grub-editenv', '/boot/grub/grubenv', 'unset', 'next_entry']]
    assert not (root / SCRIPT).exists() and 'next_entry' not in (root / 'boot/grub/grubenv').read_text()
    assert run_module(kernel_cmdline, dict(args, trial='discard'))['changed'] is False

    run_module(kernel_cmdline, dict(args, trial='stage'))
    undone = run_module(kernel_cmdline, {'root': str(root), 'sysfs_root': env['sysfs'], 'undo': True})
    assert undone['changed'] is True and not (root / SCRIPT).exists()
    assert tree(root) == before


def test_trial_replaces_the_users_panic_and_refuses_a_zero_timeout(env: dict) -> None:
    root = env['root']
    grub_host(root)
    (root / 'boot/grub/grub.cfg').write_text(GRUB_CFG.replace('ro iommu=pt quiet', 'ro panic=0 quiet', 1))
    boot(env, OLD)
    args = {'root': str(root), 'sysfs_root': env['sysfs'], 'add': ['intel_iommu=on'], 'trial': 'stage'}
    staged = run_module(kernel_cmdline, dict(args, panic_timeout=30))
    assert staged['trial']['cmdline'].split()[-3:] == ['quiet', 'intel_iommu=on', 'panic=30'], staged
    assert 'panic=0' not in staged['trial']['cmdline']
    bad = run_module(kernel_cmdline, dict(args, panic_timeout=0))
    assert bad.get('failed') is True and 'panic_timeout is 0' in bad['msg']


def test_grub_without_a_menu_entry_is_refused_before_any_change(env: dict) -> None:
    root = env['root']
    make_root(root, 'grub')
    boot(env, OLD)
    before = tree(root)
    result = run_module(kernel_cmdline, {'root': str(root), 'sysfs_root': env['sysfs'], 'add': ['intel_iommu=on'],
                                         'trial': 'stage'})
    assert result.get('failed') is True and 'no menu entry found' in result['msg'] and 'update-grub' in result['msg']
    assert tree(root) == before and log(root) == []


def test_systemd_boot_trial_through_a_oneshot_entry(env: dict) -> None:
    root = env['root']
    make_root(root, 'systemd-boot')
    _tool(root, 'bootctl', BOOTCTL)
    for version in (K1, K2):
        _write(root, 'boot/efi/loader/entries/abc-%s.conf' % version,
               'title Debian\nversion %s\nmachine-id abc\nsort-key debian\nlinux /abc/%s/linux\n'
               'initrd /abc/%s/initrd.img\noptions root=/dev/vda1 rw iommu=pt\n' % (version, version, version))
    boot(env, 'root=/dev/vda1 rw iommu=pt')
    before = tree(root)
    args = {'root': str(root), 'sysfs_root': env['sysfs'], 'add': ['intel_iommu=on']}
    staged = run_module(kernel_cmdline, dict(args, trial='stage'))
    assert staged['trial']['state'] == 'staged' and staged['commands'] == [['bootctl', 'set-oneshot', TRIAL + '.conf']]
    entry = (root / 'boot/efi/loader/entries' / (TRIAL + '.conf')).read_text()
    # based on the newest kernel's entry (K2 sorts after K1), with its own title and no sort-key
    assert 'linux /abc/%s/linux\n' % K2 in entry and 'options root=/dev/vda1 rw iommu=pt intel_iommu=on panic=10\n' in entry
    assert 'title fleetgpu.passthrough trial boot (once)\n' in entry and 'sort-key' not in entry
    assert (root / 'etc/kernel/cmdline').read_text() == 'root=/dev/vda1 rw iommu=pt\n'
    assert run_module(kernel_cmdline, dict(args, trial='stage'))['changed'] is False

    boot(env, 'root=/dev/vda1 rw iommu=pt intel_iommu=on panic=10')
    (root / ONESHOT).unlink()   # systemd-boot removes the variable when it boots the entry
    committed = run_module(kernel_cmdline, dict(args, trial='commit'))
    assert committed['changed'] is True and not (root / 'boot/efi/loader/entries' / (TRIAL + '.conf')).exists()
    assert (root / 'etc/kernel/cmdline').read_text() == 'root=/dev/vda1 rw iommu=pt intel_iommu=on\n'
    assert [c[0] for c in committed['commands']] == ['kernel-install', 'kernel-install']
    run_module(kernel_cmdline, {'root': str(root), 'sysfs_root': env['sysfs'], 'undo': True})
    assert {k: v for k, v in tree(root).items() if not k.startswith('sys/')} == before


@pytest.mark.parametrize('loader', ['kernelstub', 'proxmox-boot-tool', 'grubby'])
def test_backends_without_a_oneshot_entry(env: dict, loader: str) -> None:
    root = env['root']
    make_root(root, loader)
    boot(env, 'root=/dev/vda1 ro iommu=pt')
    before = tree(root)
    args = {'root': str(root), 'sysfs_root': env['sysfs'], 'add': ['intel_iommu=on'], 'bootloader': loader,
            'trial': 'stage'}
    refused = run_module(kernel_cmdline, dict(args, trial_required=True))
    assert refused.get('failed') is True and 'no one-time boot entry' in refused['msg'] and loader in refused['msg']
    assert tree(root) == before
    written = run_module(kernel_cmdline, args)
    assert written['changed'] is True and written['trial']['state'] == 'unsupported', written
    assert 'no one-time boot entry' in json.dumps(written.get('warnings')), written
    assert json.loads((root / RECORD).read_text())['added'] == ['intel_iommu=on']


def test_undo_cannot_stage_or_commit_a_trial(env: dict) -> None:
    root = env['root']
    grub_host(root)
    before = tree(root)
    for trial in ('stage', 'commit'):
        result = run_module(kernel_cmdline, {'root': str(root), 'sysfs_root': env['sysfs'], 'undo': True, 'trial': trial})
        assert result.get('failed') is True and 'undo cannot be combined with trial %s' % trial in result['msg'], result
    assert tree(root) == before and log(root) == []
