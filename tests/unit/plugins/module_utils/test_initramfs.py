"""initramfs backends and the vfio host file plan, generator commands faked at the one place commands run."""
from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import vfio_host_config as _vfio_host_apply
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._files import BACKUP_SUFFIX, HEADER
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import CommandError, Runner
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._initramfs import (
    EARLY_BIND, InitramfsError, backend, detect)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._gpu_selection import decide
from tests.sim import simkernel

from tests.unit.plugins.module_utils.test_gpu_selection import FACTS

KERNEL = '6.1.0-27-amd64'
IMAGES = {'initramfs-tools': '/boot/initrd.img-%s' % KERNEL, 'dracut': '/boot/initramfs-%s.img' % KERNEL,
          'mkinitcpio': '/boot/initramfs-linux.img'}
MARKERS = {'initramfs-tools': '/usr/sbin/update-initramfs', 'dracut': '/usr/bin/dracut', 'mkinitcpio': '/etc/mkinitcpio.conf'}


class FakeGenerator(Runner):
    """A generator whose image lists the files it would pack from the root, like the real tools.

    ``packs``: what the rebuilt image holds (None: built from the root's files); ``fail``: programs that fail.
    """

    def __init__(self, root: Path, name: str, fail: tuple[str, ...] = (), broken_image: bool = False) -> None:
        self.root = root
        self.name = name
        self.fail = fail
        self.broken_image = broken_image
        self.calls: list[list[str]] = []
        self.listing: list[str] = []

    def have(self, program: str) -> bool:
        return True

    def _build(self) -> None:
        items = ['usr/lib/modules/%s/kernel/drivers/vfio/pci/vfio-pci.ko.xz' % KERNEL]
        if self.broken_image:
            items = []
        for rel in ('etc/modprobe.d/fleetgpu-passthrough.conf', 'etc/fleetgpu-passthrough/vfio-pci-addresses'):
            if (self.root / rel).exists():
                items.append(rel)
        if self.name == 'initramfs-tools' and (self.root / 'etc/initramfs-tools/scripts/init-top/fleetgpu-passthrough').exists():
            items.append('scripts/init-top/fleetgpu-passthrough')
        if self.name == 'dracut' and (self.root / 'usr/lib/dracut/modules.d/90fleetgpu-passthrough').exists():
            items.append('var/lib/dracut/hooks/pre-udev/00-fleetgpu-vfio.sh')
        if self.name == 'mkinitcpio' and (self.root / 'etc/initcpio/hooks/fleetgpu-passthrough').exists():
            items.append('hooks/fleetgpu-passthrough')
        self.listing = items
        image = self.root / IMAGES[self.name].lstrip('/')
        image.write_text('\n'.join(items))

    def run(self, argv: list[str], check: bool = True) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if argv[0] in self.fail:
            raise CommandError('%s failed with exit code 1: E: write error' % argv[0], argv, 1)
        if argv[0] in ('lsinitramfs', 'lsinitrd', 'lsinitcpio'):
            # commands run inside the root (chroot): paths are target paths
            return 0, (self.root / argv[1].lstrip('/')).read_text() + '\n', ''
        self._build()
        return 0, '', ''


@pytest.fixture(scope='module')
def sysfs(tmp_path_factory: pytest.TempPathFactory) -> Sysfs:
    return Sysfs(simkernel.materialize('identical_pair', str(tmp_path_factory.mktemp('sim'))))


def _root(tmp_path: Path, name: str) -> Path:
    root = tmp_path / 'root'
    marker = root / MARKERS[name].lstrip('/')
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text('')
    (root / 'boot').mkdir(exist_ok=True)
    (root / IMAGES[name].lstrip('/')).write_text('usr/lib/modules/%s/kernel/drivers/vfio/pci/vfio-pci.ko.xz\n' % KERNEL)
    return root


@pytest.mark.parametrize('name', ['initramfs-tools', 'dracut', 'mkinitcpio'])
def test_detect(tmp_path: Path, name: str) -> None:
    assert detect(str(_root(tmp_path, name))) == name


def test_detect_nothing(tmp_path: Path) -> None:
    with pytest.raises(InitramfsError, match='set the initramfs option'):
        detect(str(tmp_path))


@pytest.mark.parametrize('name, regen', [
    ('initramfs-tools', ['update-initramfs', '-u', '-k', 'all']),
    ('dracut', ['dracut', '--regenerate-all', '--force']),
    ('mkinitcpio', ['mkinitcpio', '-P']),
])
def test_present_then_idempotent_then_absent(tmp_path: Path, sysfs: Sysfs, name: str, regen: list) -> None:
    root = _root(tmp_path, name)
    runner = FakeGenerator(root, name)
    generator = backend(name, str(root), runner)
    decision = decide(FACTS, [{'address': '01:00.0'}], sysfs)
    plan = _vfio_host_apply.plan(str(root), generator, decision, False, KERNEL, True)
    assert plan.rebuild and plan.commands == [regen]
    paths = {f.path for f in plan.files}
    assert str(root / 'etc/modprobe.d/fleetgpu-passthrough.conf') in paths
    assert str(root / 'etc/modules-load.d/fleetgpu-passthrough.conf') in paths
    assert str(root / 'etc/fleetgpu-passthrough/vfio-pci-addresses') in paths
    _vfio_host_apply.apply(plan, generator, runner, decision, False, KERNEL)
    assert regen in runner.calls
    assert runner.calls[-1][0] == generator.list_tool  # verified after the rebuild
    for change in plan.files:
        text = Path(change.path).read_text()
        assert HEADER in text, change.path
        mode = os.stat(change.path).st_mode & 0o777
        assert mode in (0o644, 0o755), (change.path, oct(mode))
    assert (root / 'etc/fleetgpu-passthrough/vfio-pci-addresses').read_text().endswith('0000:01:00.0\n')
    load = (root / 'etc/modules-load.d/fleetgpu-passthrough.conf').read_text()
    assert load.splitlines()[1:] == ['vfio', 'vfio_iommu_type1', 'vfio_pci'] and 'virqfd' not in load
    # second run: nothing to do, nothing run but the verification listing
    runner.calls.clear()
    again = _vfio_host_apply.plan(str(root), generator, decision, False, KERNEL, True)
    assert not again.changed and again.files == [] and again.commands == []
    assert all(c[0] == generator.list_tool for c in runner.calls)
    # absent removes every file, rebuilds, and the image no longer holds the configuration
    gone = _vfio_host_apply.plan(str(root), generator, None, False, KERNEL, True)
    _vfio_host_apply.apply(gone, generator, runner, None, False, KERNEL)
    leftovers = [str(p) for p in root.rglob('*fleetgpu*')
                 if not str(p).endswith(BACKUP_SUFFIX) or 'fleetgpu' in p.parent.name]
    assert leftovers == []
    assert 'fleetgpu' not in (root / IMAGES[name].lstrip('/')).read_text()


def test_check_plan_writes_nothing(tmp_path: Path, sysfs: Sysfs) -> None:
    root = _root(tmp_path, 'initramfs-tools')
    runner = FakeGenerator(root, 'initramfs-tools')
    generator = backend('auto', str(root), runner)
    before = sorted(str(p) for p in root.rglob('*'))
    plan = _vfio_host_apply.plan(str(root), generator, decide(FACTS, [{'address': '01:00.0'}], sysfs), False, KERNEL, True)
    assert plan.changed
    assert sorted(str(p) for p in root.rglob('*')) == before
    assert all(c[0] == 'lsinitramfs' for c in runner.calls) or runner.calls == []


def test_failed_rebuild_restores_files(tmp_path: Path, sysfs: Sysfs) -> None:
    root = _root(tmp_path, 'initramfs-tools')
    conf = root / 'etc/modprobe.d/fleetgpu-passthrough.conf'
    conf.parent.mkdir(parents=True)
    conf.write_text('# old\n')
    runner = FakeGenerator(root, 'initramfs-tools', fail=('update-initramfs',))
    generator = backend('initramfs-tools', str(root), runner)
    decision = decide(FACTS, [{'address': '01:00.0'}], sysfs)
    plan = _vfio_host_apply.plan(str(root), generator, decision, False, KERNEL, True)
    with pytest.raises(InitramfsError, match='update-initramfs failed.*previous configuration files were restored'):
        _vfio_host_apply.apply(plan, generator, runner, decision, False, KERNEL)
    assert conf.read_text() == '# old\n'
    assert not (root / 'etc/fleetgpu-passthrough/vfio-pci-addresses').exists()


def test_image_without_vfio_fails(tmp_path: Path, sysfs: Sysfs) -> None:
    root = _root(tmp_path, 'dracut')
    runner = FakeGenerator(root, 'dracut', broken_image=True)
    generator = backend('dracut', str(root), runner)
    decision = decide(FACTS, [{'address': '01:00.0'}], sysfs)
    plan = _vfio_host_apply.plan(str(root), generator, decision, False, KERNEL, True)
    with pytest.raises(InitramfsError, match='does not contain the vfio-pci module'):
        _vfio_host_apply.apply(plan, generator, runner, decision, False, KERNEL)


def test_missing_image_is_unverifiable(tmp_path: Path, sysfs: Sysfs) -> None:
    root = _root(tmp_path, 'initramfs-tools')
    (root / IMAGES['initramfs-tools'].lstrip('/')).unlink()
    generator = backend('initramfs-tools', str(root), FakeGenerator(root, 'initramfs-tools'))
    problems = generator.verify(KERNEL, True, False)
    assert problems == ['no initramfs image for kernel %s was found under %s' % (KERNEL, root / 'boot')]


def test_image_missing_config_triggers_rebuild(tmp_path: Path, sysfs: Sysfs) -> None:
    root = _root(tmp_path, 'initramfs-tools')
    runner = FakeGenerator(root, 'initramfs-tools')
    generator = backend('initramfs-tools', str(root), runner)
    decision = decide(FACTS, [{'address': '01:00.0'}], sysfs)
    _vfio_host_apply.apply(_vfio_host_apply.plan(str(root), generator, decision, False, KERNEL, True),
                           generator, runner, decision, False, KERNEL)
    # someone rebuilt the image without the hook
    (root / IMAGES['initramfs-tools'].lstrip('/')).write_text('usr/lib/modules/x/vfio-pci.ko\n')
    plan = _vfio_host_apply.plan(str(root), generator, decision, False, KERNEL, True)
    assert plan.rebuild and 'does not contain etc/modprobe.d/fleetgpu-passthrough.conf' in plan.rebuild_reason


def test_builtin_vfio_needs_no_module(tmp_path: Path, sysfs: Sysfs) -> None:
    root = _root(tmp_path, 'initramfs-tools')
    generator = backend('initramfs-tools', str(root), FakeGenerator(root, 'initramfs-tools'))
    (root / IMAGES['initramfs-tools'].lstrip('/')).write_text(
        'etc/modprobe.d/fleetgpu-passthrough.conf\nscripts/init-top/fleetgpu-passthrough\n')
    assert generator.verify(KERNEL, False, builtin=True) == []
    assert generator.verify(KERNEL, False, builtin=False) == [
        '/boot/initrd.img-%s does not contain the vfio-pci module' % KERNEL]


def test_early_bind_script_is_valid_sh(tmp_path: Path) -> None:
    script = tmp_path / 'early.sh'
    script.write_text(EARLY_BIND)
    assert subprocess.run(['sh', '-n', str(script)], check=False).returncode == 0


def test_early_bind_script_sets_driver_override(tmp_path: Path, sysfs: Sysfs) -> None:
    """Run the early script against a copy of a simulated tree (paths rewritten to it)."""
    sim = Path(simkernel.materialize('identical_pair', str(tmp_path / 'sim')))
    conf = tmp_path / 'addresses'
    conf.write_text('# header\n0000:02:00.0\n')
    body = EARLY_BIND.replace('/etc/fleetgpu-passthrough/vfio-pci-addresses', str(conf)) \
        .replace('/sys/bus/pci', str(sim / 'bus/pci')).replace('modprobe -q vfio-pci', 'true')
    (sim / 'bus/pci/drivers_probe').write_text('')
    script = tmp_path / 'run.sh'
    script.write_text(body)
    assert subprocess.run(['sh', str(script)], check=False).returncode == 0
    assert (sim / 'bus/pci/devices/0000:02:00.0/driver_override').read_text().strip() == 'vfio-pci'
    assert (sim / 'bus/pci/devices/0000:01:00.0/driver_override').read_text().strip() in ('', '(null)')


@pytest.mark.parametrize('name', ['initramfs-tools', 'dracut', 'mkinitcpio'])
def test_generated_scripts_parse(tmp_path: Path, sysfs: Sysfs, name: str) -> None:
    generator = backend(name, str(tmp_path), FakeGenerator(tmp_path, name))
    for managed in generator.files(per_address=True):
        if managed.content.startswith('#!/bin/sh') or managed.content.startswith('#!/bin/bash'):
            shell = 'bash' if 'bash' in managed.content.split('\n', 1)[0] else 'sh'
            path = tmp_path / 'check.sh'
            path.write_text(managed.content)
            assert subprocess.run([shell, '-n', str(path)], check=False).returncode == 0, managed.path


def test_unknown_generator(tmp_path: Path) -> None:
    with pytest.raises(InitramfsError, match="unknown initramfs generator 'genkernel'"):
        backend('genkernel', str(tmp_path), FakeGenerator(tmp_path, 'dracut'))


def test_decision_unchanged_by_copy() -> None:
    assert copy.deepcopy(FACTS) == FACTS


def test_lsinitrd_long_listing(tmp_path: Path) -> None:
    """lsinitrd prints a header and an ls -l style listing: the paths are the last field."""
    root = _root(tmp_path, 'dracut')
    (root / IMAGES['dracut'].lstrip('/')).write_text(
        'Image: /boot/initramfs-%s.img: 31M\n'
        '========================================================================\n'
        'dracut modules:\n'
        'fleetgpu-passthrough\n'
        '========================================================================\n'
        'drwxr-xr-x  12 root     root            0 Nov 24 04:00 .\n'
        'lrwxrwxrwx   1 root     root            7 Nov 24 04:00 bin -> usr/bin\n'
        '-rw-r--r--   1 root     root          120 Nov 24 04:00 etc/modprobe.d/fleetgpu-passthrough.conf\n'
        '-rw-r--r--   1 root     root           13 Nov 24 04:00 etc/fleetgpu-passthrough/vfio-pci-addresses\n'
        '-rwxr-xr-x   1 root     root          900 Nov 24 04:00 var/lib/dracut/hooks/pre-udev/00-fleetgpu-vfio.sh\n'
        '-rw-r--r--   1 root     root        41234 Nov 24 04:00 usr/lib/modules/%s/kernel/drivers/vfio/pci/vfio-pci.ko.xz\n'
        % (KERNEL, KERNEL))
    generator = backend('dracut', str(root), FakeGenerator(root, 'dracut'))
    assert generator.verify(KERNEL, per_address=True, builtin=False) == []


def _lists(runner: FakeGenerator) -> int:
    return sum(1 for argv in runner.calls if argv[0] in ('lsinitramfs', 'lsinitrd', 'lsinitcpio'))


def test_verified_image_is_not_listed_again_until_it_changes(tmp_path: Path, sysfs: Sysfs) -> None:
    """A real run records the images it found good; later runs list only an image that changed since."""
    root = _root(tmp_path, 'initramfs-tools')
    decision = decide(FACTS, [{'address': '01:00.0'}], sysfs)
    runner = FakeGenerator(root, 'initramfs-tools')
    first = backend('initramfs-tools', str(root), runner)
    _vfio_host_apply.apply(_vfio_host_apply.plan(str(root), first, decision, False, KERNEL, True),
                           first, runner, decision, False, KERNEL)
    assert _lists(runner) == 1
    record = root / 'var/lib/fleetgpu-passthrough/initramfs_verified.json'
    assert not record.exists()  # only save_verified() writes (a real run; check mode never calls it)
    first.save_verified()
    assert IMAGES['initramfs-tools'] in record.read_text()

    # the next converge: nothing to change, the image is not decompressed again
    runner = FakeGenerator(root, 'initramfs-tools')
    again = backend('initramfs-tools', str(root), runner)
    plan = _vfio_host_apply.plan(str(root), again, decision, False, KERNEL, True)
    assert not plan.changed and _lists(runner) == 0
    assert again.reused == [IMAGES['initramfs-tools']]

    # the same image checked for other expectations (per-address binding off) is listed
    runner = FakeGenerator(root, 'initramfs-tools')
    other = backend('initramfs-tools', str(root), runner)
    other.verify(KERNEL, per_address=False, builtin=False)
    assert _lists(runner) == 1

    # someone rebuilt the image without the hook: it is listed again and the rebuild is asked for
    image = root / IMAGES['initramfs-tools'].lstrip('/')
    image.write_text('usr/lib/modules/x/vfio-pci.ko\n')
    runner = FakeGenerator(root, 'initramfs-tools')
    changed = backend('initramfs-tools', str(root), runner)
    plan = _vfio_host_apply.plan(str(root), changed, decision, False, KERNEL, True)
    assert _lists(runner) == 1 and plan.rebuild and 'does not contain' in plan.rebuild_reason
    # a bad image is taken out of the record, so no later run trusts it
    changed.save_verified()
    assert IMAGES['initramfs-tools'] not in record.read_text()


def test_same_content_rewritten_is_listed_again(tmp_path: Path, sysfs: Sysfs) -> None:
    """Identity includes the change time: an image written again with the same size is not trusted."""
    root = _root(tmp_path, 'initramfs-tools')
    decision = decide(FACTS, [{'address': '01:00.0'}], sysfs)
    runner = FakeGenerator(root, 'initramfs-tools')
    generator = backend('initramfs-tools', str(root), runner)
    _vfio_host_apply.apply(_vfio_host_apply.plan(str(root), generator, decision, False, KERNEL, True),
                           generator, runner, decision, False, KERNEL)
    generator.save_verified()
    image = root / IMAGES['initramfs-tools'].lstrip('/')
    st = image.stat()
    image.write_text(image.read_text())
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and modification time, new change time
    if image.stat().st_ctime_ns == st.st_ctime_ns:
        pytest.skip('this file system did not move the change time')
    runner = FakeGenerator(root, 'initramfs-tools')
    again = backend('initramfs-tools', str(root), runner)
    assert again.verify(KERNEL, per_address=True, builtin=False) == [] and _lists(runner) == 1


def test_damaged_record_costs_only_a_listing(tmp_path: Path, sysfs: Sysfs) -> None:
    root = _root(tmp_path, 'initramfs-tools')
    record = root / 'var/lib/fleetgpu-passthrough/initramfs_verified.json'
    record.parent.mkdir(parents=True)
    record.write_text('{not json')
    (root / IMAGES['initramfs-tools'].lstrip('/')).write_text(
        'usr/lib/modules/%s/kernel/drivers/vfio/pci/vfio-pci.ko.xz\netc/modprobe.d/fleetgpu-passthrough.conf\n'
        'etc/fleetgpu-passthrough/vfio-pci-addresses\nscripts/init-top/fleetgpu-passthrough\n' % KERNEL)
    runner = FakeGenerator(root, 'initramfs-tools')
    generator = backend('initramfs-tools', str(root), runner)
    assert generator.verify(KERNEL, per_address=True, builtin=False) == [] and _lists(runner) == 1
    generator.save_verified()
    assert '"images"' in record.read_text()


def test_absent_removes_the_record(tmp_path: Path, sysfs: Sysfs) -> None:
    root = _root(tmp_path, 'initramfs-tools')
    decision = decide(FACTS, [{'address': '01:00.0'}], sysfs)
    runner = FakeGenerator(root, 'initramfs-tools')
    generator = backend('initramfs-tools', str(root), runner)
    _vfio_host_apply.apply(_vfio_host_apply.plan(str(root), generator, decision, False, KERNEL, True),
                           generator, runner, decision, False, KERNEL)
    generator.save_verified()
    record = root / 'var/lib/fleetgpu-passthrough/initramfs_verified.json'
    assert record.exists()
    undo = backend('initramfs-tools', str(root), runner)
    plan = _vfio_host_apply.plan(str(root), undo, None, False, KERNEL, True)
    assert str(record) in [f.path for f in plan.files]
    _vfio_host_apply.apply(plan, undo, runner, None, False, KERNEL)
    assert not record.exists() and not record.parent.exists()
    # with only the record left, absent removes it without rebuilding anything
    record.parent.mkdir(parents=True)
    record.write_text('{"images": {}}\n')
    plan = _vfio_host_apply.plan(str(root), backend('initramfs-tools', str(root), runner), None, False, KERNEL, True)
    assert [f.path for f in plan.files] == [str(record)] and not plan.rebuild
