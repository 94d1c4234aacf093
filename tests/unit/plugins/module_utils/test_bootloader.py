"""Bootloader backends on real-shaped files, commands faked at the one place they run."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import (
    BootloaderError, backend, detect)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader.grub import (
    DROPIN, parse_value, source)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange, split
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._files import BACKUP_SUFFIX, HEADER
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import CommandError, Runner

FIXTURES = Path(__file__).resolve().parents[2] / 'fixtures' / 'boot'


class FakeRunner(Runner):
    """Records commands; fails the ones named in ``fail``; answers ``--help`` queries from ``help``."""

    def __init__(self, fail: tuple[str, ...] = (), help_text: str = '', programs: tuple[str, ...] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self.help_text = help_text
        self.programs = programs

    def have(self, program: str) -> bool:
        return self.programs is None or program in self.programs

    def run(self, argv: list[str], check: bool = True) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if '--help' in argv:
            return 0, self.help_text, ''
        if argv[0] in self.fail:
            if check:
                raise CommandError('%s failed with exit code 1: boom' % argv[0], argv, 1)
            return 1, '', 'boom'
        return 0, '', ''


@pytest.fixture()
def root(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    name = request.param if hasattr(request, 'param') else 'debian12'
    dest = tmp_path / 'root'
    shutil.copytree(FIXTURES / name, dest)
    return dest


# ----------------------------------------------------------------- detection
@pytest.mark.parametrize('tree, expected', [
    ('debian12', 'grub'),
    ('rhel9', 'grubby'),
    ('rhel8', 'grubby'),
    ('systemd-boot', 'systemd-boot'),
    ('popos', 'kernelstub'),
    ('proxmox', 'proxmox-boot-tool'),
])
def test_detect(tree: str, expected: str) -> None:
    assert detect(str(FIXTURES / tree)) == expected


def test_detect_nothing(tmp_path: Path) -> None:
    with pytest.raises(BootloaderError, match='set the bootloader option'):
        detect(str(tmp_path))


# ----------------------------------------------------------------- shell parsing
@pytest.mark.parametrize('word, value', [
    ('"quiet splash"', 'quiet splash'),
    ("'a \"b\"'", 'a "b"'),
    ('""', ''),
    ('plain', 'plain'),
    ('"$X more"', 'x1 more'),
    ('"${X} more"', 'x1 more'),
    ('"${Y:+$Y }end"', 'end'),
    ('"a \\"q\\" b"', 'a "q" b'),
    ('value # comment', 'value'),
])
def test_parse_value(word: str, value: str) -> None:
    assert parse_value(word, {'X': 'x1'}) == value


def test_source_ignores_commands() -> None:
    env = source('if [ -x /x ]; then\n  :\nfi\nexport A="1 2"\nB=$A\n', {})
    assert env == {'A': '1 2', 'B': '1 2'}


# ----------------------------------------------------------------- grub
def test_grub_current_follows_dropins(root: Path) -> None:
    loader = backend('grub', str(root), FakeRunner())
    # 50-console.cfg replaces GRUB_CMDLINE_LINUX; /etc/default/grub sets DEFAULT
    assert loader.current() == ['console=tty0', 'console=ttyS0,115200n8', 'quiet', 'intel_iommu=off']


def test_grub_add_replaces_contradiction(root: Path) -> None:
    runner = FakeRunner()
    loader = backend('grub', str(root), runner)
    plan = loader.plan(CmdlineChange(['intel_iommu=on', 'iommu=pt']))
    assert plan.changed
    assert 'intel_iommu=off' not in plan.after
    assert plan.after == ['console=tty0', 'console=ttyS0,115200n8', 'intel_iommu=on', 'iommu=pt', 'quiet']
    assert [f.path for f in plan.files] == [str(root) + DROPIN]
    assert plan.commands == [['update-grub']]
    loader.apply(plan)
    text = (root / DROPIN.lstrip('/')).read_text()
    assert HEADER in text
    # the user's value without the contradiction; the addition on GRUB_CMDLINE_LINUX (recovery entries too)
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n' in text
    assert 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=on iommu=pt"\n' in text
    assert oct(os.stat(root / DROPIN.lstrip('/')).st_mode & 0o777) == '0o644'
    assert runner.calls == [['update-grub']]
    # the user's files are untouched
    assert 'intel_iommu=off' in (root / 'etc/default/grub').read_text()
    # second run plans nothing
    again = backend('grub', str(root), runner).plan(CmdlineChange(['intel_iommu=on', 'iommu=pt']))
    assert not again.changed and again.files == [] and again.commands == []


def test_grub_dropin_sorts_last(root: Path) -> None:
    # Debian ships init-select.cfg: a name starting with digits would sort before it
    name = os.path.basename(DROPIN)
    assert sorted(os.listdir(root / 'etc/default/grub.d') + [name, '99-local.cfg', 'Z-upper.cfg'])[-1] == name


def test_grub_empty_variables(tmp_path: Path) -> None:
    (tmp_path / 'etc/default').mkdir(parents=True)
    (tmp_path / 'etc/default/grub').write_text('GRUB_CMDLINE_LINUX_DEFAULT=""\nGRUB_CMDLINE_LINUX=\n')
    loader = backend('grub', str(tmp_path), FakeRunner())
    plan = loader.plan(CmdlineChange(['iommu=pt']))
    loader.apply(plan)
    assert loader.current() == ['iommu=pt']
    assert plan.before == []


def test_grub_cumulative_and_removal_deletes_dropin(root: Path) -> None:
    runner = FakeRunner()
    first = backend('grub', str(root), runner)
    first.apply(first.plan(CmdlineChange(['intel_iommu=on', 'iommu=pt'])))
    second = backend('grub', str(root), runner)
    second.apply(second.plan(CmdlineChange(['vfio-pci.ids=1234:1111'])))
    assert {'intel_iommu=on', 'iommu=pt', 'vfio-pci.ids=1234:1111'} <= set(second.current())
    third = backend('grub', str(root), runner)
    plan = third.plan(CmdlineChange([], ['intel_iommu=on', 'iommu=pt', 'vfio-pci.ids']))
    third.apply(plan)
    # intel_iommu=off was removed by the first change and stays removed: the drop-in keeps that
    assert third.current() == ['console=tty0', 'console=ttyS0,115200n8', 'quiet']
    text = (root / DROPIN.lstrip('/')).read_text()
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"' in text and 'iommu' not in text.split('\n', 2)[2]


def test_grub_dropin_removed_when_nothing_left(tmp_path: Path) -> None:
    (tmp_path / 'etc/default').mkdir(parents=True)
    (tmp_path / 'etc/default/grub').write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    loader = backend('grub', str(tmp_path), FakeRunner())
    loader.apply(loader.plan(CmdlineChange(['iommu=pt'])))
    dropin = tmp_path / DROPIN.lstrip('/')
    assert dropin.exists()
    loader.apply(loader.plan(CmdlineChange([], ['iommu=pt'])))
    assert not dropin.exists()
    assert not (tmp_path / (DROPIN.lstrip('/') + BACKUP_SUFFIX)).exists()


def test_grub_failed_update_restores(root: Path) -> None:
    runner = FakeRunner(fail=('update-grub',))
    loader = backend('grub', str(root), runner)
    before = loader.current()
    with pytest.raises(BootloaderError, match='update-grub failed.*previous configuration was restored'):
        loader.apply(loader.plan(CmdlineChange(['intel_iommu=on'])))
    assert not (root / DROPIN.lstrip('/')).exists()
    assert backend('grub', str(root), FakeRunner()).current() == before


def test_grub_failed_update_restores_previous_dropin(root: Path) -> None:
    loader = backend('grub', str(root), FakeRunner())
    loader.apply(loader.plan(CmdlineChange(['iommu=pt'])))
    old = (root / DROPIN.lstrip('/')).read_text()
    failing = backend('grub', str(root), FakeRunner(fail=('update-grub',)))
    with pytest.raises(BootloaderError):
        failing.apply(failing.plan(CmdlineChange(['intel_iommu=on'])))
    assert (root / DROPIN.lstrip('/')).read_text() == old


def test_grub_later_dropin_overrides(root: Path) -> None:
    (root / 'etc/default/grub.d/zz-local.cfg').write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=off"\n')
    with pytest.raises(BootloaderError, match='zz-local.cfg sorts after'):
        backend('grub', str(root), FakeRunner()).plan(CmdlineChange(['intel_iommu=on']))


def test_grub_quoting_of_values(tmp_path: Path) -> None:
    (tmp_path / 'etc/default').mkdir(parents=True)
    (tmp_path / 'etc/default/grub').write_text('GRUB_CMDLINE_LINUX=""\n')
    loader = backend('grub', str(tmp_path), FakeRunner())
    loader.apply(loader.plan(CmdlineChange(['dyndbg="file vfio_pci.c +p"'])))
    assert backend('grub', str(tmp_path), FakeRunner()).current() == ['dyndbg="file vfio_pci.c +p"']


def test_grub_without_update_runs_nothing(root: Path) -> None:
    runner = FakeRunner()
    loader = backend('grub', str(root), runner, update=False)
    loader.apply(loader.plan(CmdlineChange(['iommu=pt'])))
    assert runner.calls == []
    assert (root / DROPIN.lstrip('/')).exists()


# ----------------------------------------------------------------- grubby
@pytest.mark.parametrize('root', ['rhel9'], indirect=True)
def test_grubby_rhel9_with_update_bls(root: Path) -> None:
    runner = FakeRunner(help_text='Usage: grub2-mkconfig [OPTION]\n  --update-bls-cmdline  update ...\n')
    loader = backend('grubby', str(root), runner, running=split('BOOT_IMAGE=(hd0,gpt2)/vmlinuz-5.14.0-427.13.1.el9_4.x86_64 ro'))
    plan = loader.plan(CmdlineChange(['intel_iommu=on', 'iommu=pt']))
    assert 'intel_iommu=off' in plan.before and 'intel_iommu=off' not in plan.after
    assert plan.commands[0] == ['grubby', '--update-kernel=ALL', '--args=intel_iommu=on iommu=pt',
                                '--remove-args=intel_iommu=off']
    assert plan.commands[1] == ['grub2-mkconfig', '-o', '/boot/grub2/grub.cfg', '--update-bls-cmdline']
    loader.apply(plan)
    grub = (root / 'etc/default/grub').read_text()
    assert 'intel_iommu=on iommu=pt"' in grub and 'intel_iommu=off' not in grub
    assert 'GRUB_ENABLE_BLSCFG=true' in grub
    assert (root / ('etc/default/grub' + BACKUP_SUFFIX)).read_text().count('intel_iommu=off') == 1


@pytest.mark.parametrize('root', ['rhel9'], indirect=True)
def test_grubby_without_update_bls_option(root: Path) -> None:
    runner = FakeRunner(help_text='Usage: grub2-mkconfig [OPTION]\n')
    plan = backend('grubby', str(root), runner).plan(CmdlineChange(['iommu=pt']))
    assert [c[0] for c in plan.commands] == ['grubby']


@pytest.mark.parametrize('root', ['rhel9'], indirect=True)
def test_grubby_failure_undoes(root: Path) -> None:
    runner = FakeRunner(fail=('grub2-mkconfig',), help_text='--update-bls-cmdline')
    loader = backend('grubby', str(root), runner)
    grub_before = (root / 'etc/default/grub').read_text()
    with pytest.raises(BootloaderError, match='grub2-mkconfig failed'):
        loader.apply(loader.plan(CmdlineChange(['iommu=pt'])))
    assert (root / 'etc/default/grub').read_text() == grub_before
    assert runner.calls[-1] == ['grubby', '--update-kernel=ALL', '--remove-args=iommu=pt']


@pytest.mark.parametrize('root', ['rhel8'], indirect=True)
def test_grubby_rhel8_kernelopts(root: Path) -> None:
    loader = backend('grubby', str(root), FakeRunner(programs=()))
    assert loader.current() == ['root=/dev/mapper/rhel-root', 'ro', 'crashkernel=auto', 'rhgb', 'quiet', '$tuned_params']
    plan = loader.plan(CmdlineChange(['intel_iommu=on']))
    assert plan.commands == [['grubby', '--update-kernel=ALL', '--args=intel_iommu=on']]


# ----------------------------------------------------------------- systemd-boot / proxmox
@pytest.mark.parametrize('root', ['systemd-boot'], indirect=True)
def test_systemd_boot(root: Path) -> None:
    runner = FakeRunner()
    loader = backend('auto', str(root), runner)
    assert loader.name == 'systemd-boot'
    plan = loader.plan(CmdlineChange(['amd_iommu=force_isolation'], ['splash']))
    loader.apply(plan)
    assert (root / 'etc/kernel/cmdline').read_text() == \
        'root=UUID=2f0a6a9c-1b1e-4a57-9b43-5d3c9d8e7f10 rw quiet amd_iommu=force_isolation\n'
    assert runner.calls == [['kernel-install', 'add', '6.8.0-45-generic',
                             '/lib/modules/6.8.0-45-generic/vmlinuz']]
    assert not backend('auto', str(root), runner).plan(CmdlineChange(['amd_iommu=force_isolation'], ['splash'])).changed


@pytest.mark.parametrize('root', ['systemd-boot'], indirect=True)
def test_systemd_boot_seeded_from_running(root: Path) -> None:
    (root / 'etc/kernel/cmdline').unlink()
    loader = backend('systemd-boot', str(root), FakeRunner(),
                     running=split('BOOT_IMAGE=/vmlinuz initrd=\\initrd root=/dev/nvme0n1p2 rw'))
    plan = loader.plan(CmdlineChange(['iommu=pt']))
    assert plan.before == ['root=/dev/nvme0n1p2', 'rw']
    assert plan.after == ['root=/dev/nvme0n1p2', 'rw', 'iommu=pt']


@pytest.mark.parametrize('root', ['proxmox'], indirect=True)
def test_proxmox_refresh_failure_restores(root: Path) -> None:
    loader = backend('auto', str(root), FakeRunner(fail=('proxmox-boot-tool',)))
    assert loader.name == 'proxmox-boot-tool'
    with pytest.raises(BootloaderError, match='proxmox-boot-tool failed'):
        loader.apply(loader.plan(CmdlineChange(['intel_iommu=on', 'iommu=pt'])))
    assert (root / 'etc/kernel/cmdline').read_text() == 'root=ZFS=rpool/ROOT/pve-1 boot=zfs\n'


@pytest.mark.parametrize('root', ['proxmox'], indirect=True)
def test_proxmox(root: Path) -> None:
    runner = FakeRunner()
    loader = backend('proxmox-boot-tool', str(root), runner)
    loader.apply(loader.plan(CmdlineChange(['intel_iommu=on', 'iommu=pt'])))
    assert (root / 'etc/kernel/cmdline').read_text() == 'root=ZFS=rpool/ROOT/pve-1 boot=zfs intel_iommu=on iommu=pt\n'
    assert runner.calls == [['proxmox-boot-tool', 'refresh']]


# ----------------------------------------------------------------- kernelstub
@pytest.mark.parametrize('root', ['popos'], indirect=True)
def test_kernelstub(root: Path) -> None:
    runner = FakeRunner()
    loader = backend('auto', str(root), runner)
    plan = loader.plan(CmdlineChange(['intel_iommu=on', 'iommu=pt']))
    assert plan.commands == [['kernelstub', '--delete-options', 'intel_iommu=off'],
                             ['kernelstub', '--add-options', 'intel_iommu=on iommu=pt']]
    loader.apply(plan)
    assert runner.calls == plan.commands


@pytest.mark.parametrize('root', ['popos'], indirect=True)
def test_kernelstub_bad_json(root: Path) -> None:
    (root / 'etc/kernelstub/configuration').write_text('{not json')
    with pytest.raises(BootloaderError, match='not valid JSON'):
        backend('kernelstub', str(root), FakeRunner()).current()


def test_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(BootloaderError, match="unknown bootloader 'lilo'"):
        backend('lilo', str(tmp_path), FakeRunner())


def test_kernelstub_fixture_is_json() -> None:
    json.loads((FIXTURES / 'popos/etc/kernelstub/configuration').read_text())
