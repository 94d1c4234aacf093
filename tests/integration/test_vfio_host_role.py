"""The vfio_host role through ansible-playbook against a directory root.

The host is a simulated kernel tree (tests/sim, the QEMU test host's shape) and a fake
Debian /etc + /boot under a temporary directory; update-grub, update-initramfs and
lsinitramfs are logging stand-ins inside that root (they record their calls and build a listing
"image" from the files the role wrote, like the real generator would pack them), reached through a
stand-in chroot on PATH: with a prefix root the collection runs the root's tools inside it.  The
running host's own tools on PATH are stand-ins that log to another file, which must stay empty.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import VENV_BIN, playbook_json
from tests.sim import simkernel

KERNEL = '6.1.0-27-amd64'
GRUB = '''GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX=""
'''
FAKE_UPDATE_INITRAMFS = r'''#!/bin/sh
echo "update-initramfs $*" >> "$FLEETGPU_TEST_LOG"
img="$FLEETGPU_TEST_ROOT/boot/initrd.img-''' + KERNEL + r'''"
echo "usr/lib/modules/''' + KERNEL + r'''/kernel/drivers/vfio/pci/vfio-pci.ko" > "$img"
for f in etc/modprobe.d/fleetgpu-passthrough.conf etc/fleetgpu-passthrough/vfio-pci-addresses; do
    [ -e "$FLEETGPU_TEST_ROOT/$f" ] && echo "$f" >> "$img"
done
[ -e "$FLEETGPU_TEST_ROOT/etc/initramfs-tools/scripts/init-top/fleetgpu-passthrough" ] && \
    echo scripts/init-top/fleetgpu-passthrough >> "$img"
exit 0
'''
FAKE_UPDATE_GRUB = '#!/bin/sh\necho "update-grub $*" >> "$FLEETGPU_TEST_LOG"\nexit ${FLEETGPU_TEST_GRUB_RC:-0}\n'
FAKE_LSINITRAMFS = '#!/bin/sh\necho "lsinitramfs $*" >> "$FLEETGPU_TEST_LOG"\ncat "$FLEETGPU_TEST_ROOT$1"\n'
FAKE_CHROOT = '#!/bin/sh\nroot="$1"; shift\nprog="$1"; shift\nexec "$root$prog" "$@"\n'
HOST_TOOLS = ('update-grub', 'update-initramfs', 'lsinitramfs', 'grubby', 'dracut', 'kernel-install', 'mkinitcpio')

PLAY = '''
- name: vfio_host against a directory root
  hosts: localhost
  gather_facts: false
  roles:
    - role: fleetgpu.passthrough.vfio_host
  post_tasks:
    - name: Show the role's facts
      ansible.builtin.debug:
        msg:
          reboot_required: "{{ vfio_host_reboot_required }}"
          selected: "{{ vfio_host_selected | map(attribute='address') | list }}"
'''


class Host:
    def __init__(self, tmp: Path, topology: str) -> None:
        self.tmp = tmp
        self.root = tmp / 'root'
        self.sysfs = simkernel.materialize(topology, str(tmp / 'kernel'))
        (self.root / 'etc/default/grub.d').mkdir(parents=True)
        (self.root / 'etc/default/grub').write_text(GRUB)
        (self.root / 'etc/initramfs-tools').mkdir(parents=True)
        (self.root / 'etc/initramfs-tools/initramfs.conf').write_text('MODULES=most\n')
        (self.root / 'boot').mkdir()
        (self.root / 'boot' / ('initrd.img-%s' % KERNEL)).write_text('usr/lib/modules/%s/kernel/drivers/vfio/pci/vfio-pci.ko\n' % KERNEL)
        self.bin = tmp / 'bin'
        self.bin.mkdir()
        (self.root / 'usr/sbin').mkdir(parents=True)
        for name, text in (('update-initramfs', FAKE_UPDATE_INITRAMFS), ('update-grub', FAKE_UPDATE_GRUB),
                           ('lsinitramfs', FAKE_LSINITRAMFS)):
            path = self.root / 'usr/sbin' / name
            path.write_text(text)
            path.chmod(0o755)
        (self.bin / 'chroot').write_text(FAKE_CHROOT)
        (self.bin / 'chroot').chmod(0o755)
        self.host_log = tmp / 'host-tools.log'
        self.host_log.write_text('')
        for name in HOST_TOOLS:
            (self.bin / name).write_text('#!/bin/sh\necho "%s $*" >> "%s"\n' % (name, self.host_log))
            (self.bin / name).chmod(0o755)
        self.log = tmp / 'commands.log'
        self.log.write_text('')

    def env(self, **extra: str) -> dict:
        env = {'PATH': '%s:%s:%s' % (self.bin, VENV_BIN, os.environ.get('PATH', '')),
               'FLEETGPU_TEST_LOG': str(self.log), 'FLEETGPU_TEST_ROOT': str(self.root)}
        env.update(extra)
        return env

    def vars(self, **extra: object) -> dict:
        data = {'vfio_host_root': str(self.root), 'vfio_host_sysfs_root': self.sysfs,
                'vfio_host_devices': [{'address': '0000:01:00.0'}], 'vfio_host_runtime_bind': False,
                'vfio_host_initramfs': 'initramfs-tools'}
        data.update(extra)
        return data

    def commands(self) -> list[str]:
        lines = self.log.read_text().splitlines()
        self.log.write_text('')
        return [line.strip() for line in lines if not line.startswith('lsinitramfs')]

    def snapshot(self) -> dict[str, str]:
        return {str(p.relative_to(self.root)): (p.read_text() if p.is_file() else '<dir>')
                for p in sorted(self.root.rglob('*')) if not str(p.relative_to(self.root)).startswith('usr')}


def _facts(doc: dict) -> dict:
    return [t for t in doc['tasks'] if t['task'] == "Show the role's facts"][-1]['result']['msg']


def _changed(doc: dict) -> int:
    return sum(s['changed'] for s in doc['stats'].values())


def _run(run_playbook, host: Host, args: tuple = (), **extra: object) -> dict:
    proc = run_playbook(PLAY, extra_vars=host.vars(**extra), args=args, env=host.env())
    doc = playbook_json(proc)
    failed = [t for t in doc['tasks'] if t['status'] == 'failed']
    assert proc.returncode == 0 and not failed, '%s\n%s' % (failed, proc.stderr[-3000:])
    assert host.host_log.read_text() == '', 'the running host\'s tools were called: %s' % host.host_log.read_text()
    return doc


@pytest.fixture()
def host(tmp_path: Path) -> Host:
    return Host(tmp_path, 'identical_pair')


def test_check_real_repeat_absent(run_playbook, host: Host) -> None:
    before = host.snapshot()
    # check mode predicts changes and writes nothing
    doc = _run(run_playbook, host, ('--check', '--diff'))
    assert _changed(doc) > 0
    assert host.snapshot() == before
    assert host.commands() == []
    config = [t for t in doc['tasks'] if t['action'] == 'fleetgpu.passthrough.vfio_host_config'][0]['result']
    assert config['addresses'] == ['0000:01:00.0'] and config['ids'] == ['8086:293e']

    # the real run
    doc = _run(run_playbook, host)
    facts = _facts(doc)
    assert facts['selected'] == ['0000:01:00.0']
    assert facts['reboot_required'] is True
    assert host.commands() == ['update-initramfs -u -k all', 'update-grub']
    dropin = host.root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg'
    text = dropin.read_text()
    assert 'managed by fleetgpu.passthrough' in text
    assert 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=on iommu=pt"' in text
    modprobe = (host.root / 'etc/modprobe.d/fleetgpu-passthrough.conf').read_text()
    assert 'options vfio-pci ids=8086:293e' in modprobe and 'softdep snd_hda_intel pre: vfio-pci' in modprobe
    assert (host.root / 'etc/fleetgpu-passthrough/vfio-pci-addresses').read_text().splitlines()[-1] == '0000:01:00.0'
    assert (host.root / 'etc/initramfs-tools/scripts/init-top/fleetgpu-passthrough').exists()
    for path in [dropin, host.root / 'etc/modprobe.d/fleetgpu-passthrough.conf',
                 host.root / 'etc/modules-load.d/fleetgpu-passthrough.conf']:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    messages = [t['result'].get('msg', '') for t in doc['tasks'] if t['task'].endswith('Say that a reboot is required')]
    assert messages and 'vfio_host_reboot_ok' in messages[0] and 'lacks iommu=pt' in messages[0] and '0000:01:00.1' in messages[0]
    assert not [t for t in doc['tasks'] if t['action'] == 'ansible.builtin.reboot' and t['status'] != 'skipped']

    # second run: nothing changes, no command runs
    after_first = host.snapshot()
    doc = _run(run_playbook, host)
    assert _changed(doc) == 0, [t['task'] for t in doc['tasks'] if t['result'].get('changed')]
    assert host.commands() == []
    assert host.snapshot() == after_first
    # and in check mode
    doc = _run(run_playbook, host, ('--check',))
    assert _changed(doc) == 0

    # absent removes everything the role added
    doc = _run(run_playbook, host, (), vfio_host_state='absent')
    assert _changed(doc) > 0
    assert host.commands() == ['update-initramfs -u -k all', 'update-grub']
    leftovers = [p for p in host.snapshot() if 'fleetgpu' in p]
    assert leftovers == []
    assert (host.root / 'etc/default/grub').read_text() == GRUB
    doc = _run(run_playbook, host, (), vfio_host_state='absent')
    assert _changed(doc) == 0


def test_amd_host_gets_no_intel_flag(run_playbook, tmp_path: Path) -> None:
    host = Host(tmp_path, 'amd_host')
    doc = _run(run_playbook, host, (), vfio_host_devices=[{'vendor_id': '10de', 'device_id': '2684', 'count': 'all'}])
    text = (host.root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg').read_text()
    assert 'iommu=pt' in text and 'intel_iommu' not in text and 'amd_iommu' not in text
    assert _facts(doc)['selected']


@pytest.mark.parametrize('devices, fragment', [
    ([{'vendor_id': '10de', 'device_id': '2204'}], 'matches no GPU; this host has: 0000:00:01.0'),
    ([{'address': '0000:00:01.0'}], 'vfio_host_allow_boot_vga'),
    ([{'vendor_id': '1234', 'device_id': '1111', 'count': 2}], 'asks for 2 GPU(s) but only 1 match'),
])
def test_bad_selection_fails_clearly(run_playbook, host: Host, devices: list, fragment: str) -> None:
    before = host.snapshot()
    proc = run_playbook(PLAY, extra_vars=host.vars(vfio_host_devices=devices), env=host.env())
    assert proc.returncode != 0
    failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
    assert fragment in failed[0]['result']['msg']
    assert host.snapshot() == before


def test_failed_bootloader_update_stops_before_reboot(run_playbook, host: Host) -> None:
    proc = run_playbook(PLAY, extra_vars=host.vars(vfio_host_reboot_ok=True),
                        env=host.env(FLEETGPU_TEST_GRUB_RC='1'))
    assert proc.returncode != 0
    doc = playbook_json(proc)
    failed = [t for t in doc['tasks'] if t['status'] == 'failed']
    assert failed[0]['action'] == 'fleetgpu.passthrough.kernel_cmdline'
    assert 'update-grub failed' in failed[0]['result']['msg']
    assert not (host.root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg').exists()
    assert not [t for t in doc['tasks'] if t['action'] == 'ansible.builtin.reboot']


def test_site_and_restore_playbooks(run_playbook, host: Host, tmp_path: Path) -> None:
    """playbooks/site.yml then restore.yml on a gpu_hosts inventory, rolling; site twice is changed=0."""
    repo = Path(__file__).resolve().parents[2]
    inventory = tmp_path / 'inventory.ini'
    inventory.write_text('[gpu_hosts]\nlocalhost ansible_connection=local\n')
    ev = host.vars(fleetgpu_serial=1, fleetgpu_max_fail_percentage=0)
    site = run_playbook(repo / 'playbooks' / 'site.yml', extra_vars=ev, inventory=str(inventory), env=host.env())
    doc = playbook_json(site)
    assert site.returncode == 0, [t for t in doc['tasks'] if t['status'] == 'failed']
    names = [t['task'] for t in doc['tasks']]
    assert any(n.startswith('Preflight') for n in names)
    assert (host.root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg').exists()
    assert host.commands() == ['update-initramfs -u -k all', 'update-grub']
    again = run_playbook(repo / 'playbooks' / 'site.yml', extra_vars=ev, inventory=str(inventory), env=host.env())
    assert again.returncode == 0 and _changed(playbook_json(again)) == 0
    restore = run_playbook(repo / 'playbooks' / 'restore.yml', extra_vars=ev, inventory=str(inventory), env=host.env())
    doc = playbook_json(restore)
    assert restore.returncode == 0, [t['result'].get('msg') for t in doc['tasks'] if t['status'] == 'failed']
    assert [p for p in host.snapshot() if 'fleetgpu' in p] == []


@pytest.mark.skipif(not os.path.exists('/dev/fuse'), reason='needs /dev/fuse for the behaving simulated kernel')
def test_runtime_bind_without_reboot_then_restore(run_playbook, tmp_path: Path) -> None:
    """IOMMU already on and the arguments already live: the role binds now, verifies, needs no reboot;
    a second converge (devices now on vfio-pci) is changed=0; absent gives the drivers back."""
    from tests.sim import fusekernel

    topo = simkernel.load_topology('identical_pair')
    topo['kernel']['cmdline'] = 'BOOT_IMAGE=/boot/vmlinuz-%s root=/dev/vda1 ro quiet intel_iommu=on iommu=pt' % KERNEL
    topo['kernel']['loaded'] = ['vfio', 'vfio_iommu_type1', 'vfio_pci', 'bochs', 'snd_hda_intel', 'ahci',
                                'virtio_pci', 'lpc_ich', 'i801_smbus']
    host = Host(tmp_path / 'h', 'identical_pair')
    (host.bin / 'modprobe').write_text('#!/bin/sh\necho "modprobe $*" >> "$FLEETGPU_TEST_LOG"\nexit 0\n')
    (host.bin / 'modprobe').chmod(0o755)
    with fusekernel.simulated(topo, tmp_path / 'k') as sysfs_root:
        host.sysfs = sysfs_root
        devices = Path(sysfs_root) / 'bus/pci/devices'
        doc = _run(run_playbook, host, (), vfio_host_runtime_bind=True)
        assert _facts(doc)['reboot_required'] is False
        for addr in ('0000:01:00.0', '0000:01:00.1'):
            assert os.path.basename(os.readlink(devices / addr / 'driver')) == 'vfio-pci', addr
        assert os.path.basename(os.readlink(devices / '0000:00:01.0' / 'driver')) == 'bochs-drm'
        verify = [t for t in doc['tasks'] if t['task'].endswith('Fail with what is wrong')]
        assert verify and verify[0]['status'] == 'ok'
        # the configuration does not depend on where the drivers are now
        doc = _run(run_playbook, host, (), vfio_host_runtime_bind=True)
        assert _changed(doc) == 0, [t['task'] for t in doc['tasks'] if t['result'].get('changed')]
        doc = _run(run_playbook, host, (), vfio_host_runtime_bind=True, vfio_host_state='absent')
        assert os.path.basename(os.readlink(devices / '0000:01:00.0' / 'driver')) == 'bochs-drm'
        assert os.path.basename(os.readlink(devices / '0000:01:00.1' / 'driver')) == 'snd_hda_intel'


def test_prefix_root_without_tools_runs_nothing_on_the_running_host(run_playbook, host: Host) -> None:
    for name in ('update-initramfs', 'update-grub', 'lsinitramfs'):
        (host.root / 'usr/sbin' / name).unlink()
    doc = _run(run_playbook, host)
    assert host.commands() == []
    config = [t for t in doc['tasks'] if t['action'] == 'fleetgpu.passthrough.vfio_host_config'][0]['result']
    cmdline = [t for t in doc['tasks'] if t['action'] == 'fleetgpu.passthrough.kernel_cmdline'
               and t['status'] != 'skipped'][0]['result']
    assert config['skipped_commands'] == [['update-initramfs', '-u', '-k', 'all']]
    assert cmdline['skipped_commands'] == [['update-grub']]
    assert (host.root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg').exists()
    # the second run is converged: the image cannot be listed inside the root, so it is not rebuilt again
    doc = _run(run_playbook, host)
    assert _changed(doc) == 0


def test_restore_on_a_host_with_its_own_iommu_arguments_keeps_them(run_playbook, host: Host) -> None:
    own = GRUB.replace('GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"')
    (host.root / 'etc/default/grub').write_text(own)
    before = host.snapshot()
    # a host the collection never changed: absent leaves it exactly as it is, asks for no reboot
    doc = _run(run_playbook, host, (), vfio_host_state='absent')
    assert host.snapshot() == before
    assert _facts(doc)['reboot_required'] is False
    cmdline = [t for t in doc['tasks'] if t['action'] == 'fleetgpu.passthrough.kernel_cmdline'][0]['result']
    assert cmdline['changed'] is False and cmdline['files'] == []
    # converge, then restore: the administrator's arguments are still there, nothing of the collection is left
    _run(run_playbook, host)
    assert not (host.root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg').exists()
    host.commands()
    doc = _run(run_playbook, host, (), vfio_host_state='absent')
    assert (host.root / 'etc/default/grub').read_text() == own
    assert [p for p in host.snapshot() if 'fleetgpu' in p] == []
    assert 'update-grub' not in host.commands()


LIVE_PLAY = '''
- name: Is the root the running host?
  hosts: localhost
  gather_facts: true
  tasks:
    - name: Work out the role's paths only
      ansible.builtin.include_role:
        name: fleetgpu.passthrough.vfio_host
        tasks_from: set_vars.yml
    - name: Show it
      ansible.builtin.debug:
        msg: "{{ __vfio_host_live_host }}"
'''


@pytest.mark.parametrize('spelling, live', [('/', True), ('//', True), ('/.', True), ('/./', True), (None, False)])
def test_live_host_is_decided_by_resolved_path(run_playbook, host: Host, spelling: str | None, live: bool) -> None:
    """``//`` or ``/.`` are the running host: reboots and package steps must not be skipped for them."""
    proc = run_playbook(LIVE_PLAY, extra_vars={'vfio_host_root': spelling or str(host.root)}, env=host.env())
    doc = playbook_json(proc)
    shown = [t for t in doc['tasks'] if t['task'] == 'Show it']
    assert proc.returncode == 0 and shown, proc.stderr[-2000:]
    assert shown[0]['result']['msg'] is live


# -- hugepages reserved at boot (vfio_host_hugepages) ------------------------------------

DROPIN = 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg'


def _cmdline_task(doc: dict, prefix: str = 'Persist the kernel arguments') -> dict:
    return [t for t in doc['tasks'] if t['task'].split(' : ')[-1].startswith(prefix)][0]['result']


def test_hugepages_rendered_idempotent_check_mode_and_given_back(run_playbook, host: Host) -> None:
    pages = [{'size': '2M', 'count': 64}]
    before = host.snapshot()
    doc = _run(run_playbook, host, ('--check', '--diff'), vfio_host_hugepages=pages)
    assert host.snapshot() == before and host.commands() == []
    predicted = _cmdline_task(doc)
    assert predicted['changed'] is True
    assert predicted['cmdline_after'] == 'intel_iommu=on iommu=pt hugepagesz=2M hugepages=64 quiet'
    assert 'hugepagesz=2M hugepages=64' in predicted['diff'][0]['after']

    doc = _run(run_playbook, host, (), vfio_host_hugepages=pages)
    text = (host.root / DROPIN).read_text()
    assert 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=on iommu=pt hugepagesz=2M hugepages=64"' in text
    assert _cmdline_task(doc)['cmdline_after'] == predicted['cmdline_after']
    messages = [t['result'].get('msg', '') for t in doc['tasks'] if t['task'].endswith('Say that a reboot is required')]
    assert messages and 'lacks iommu=pt hugepagesz=2M hugepages=64' in messages[0]
    host.commands()
    for args in ((), ('--check',)):
        doc = _run(run_playbook, host, args, vfio_host_hugepages=pages)
        assert _changed(doc) == 0, [t['task'] for t in doc['tasks'] if t['result'].get('changed')]
    assert host.commands() == []

    # per node: the kernel's node form, in place of the earlier value
    doc = _run(run_playbook, host, (), vfio_host_hugepages=[{'size': 2048, 'count': 32, 'node': 0}])
    assert _cmdline_task(doc)['cmdline_after'] == 'intel_iommu=on iommu=pt hugepagesz=2M hugepages=0:32 quiet'
    assert host.commands() == ['update-grub']

    # the option emptied: exactly the hugepage arguments go, the IOMMU ones stay
    doc = _run(run_playbook, host, ('--check', '--diff'))
    given_back = _cmdline_task(doc, 'Give back the hugepage arguments')
    assert given_back['changed'] is True and given_back['cmdline_after'] == 'intel_iommu=on iommu=pt quiet'
    assert 'hugepages=0:32' in (host.root / DROPIN).read_text()
    doc = _run(run_playbook, host)
    assert 'hugepage' not in (host.root / DROPIN).read_text()
    assert _cmdline_task(doc, 'Give back the hugepage arguments')['cmdline_after'] == 'intel_iommu=on iommu=pt quiet'
    assert _changed(_run(run_playbook, host)) == 0

    # a default size, then absent: nothing of the collection is left
    _run(run_playbook, host, (), vfio_host_hugepages=[{'size': '1G', 'count': 2}], vfio_host_default_hugepagesz='1G')
    assert 'iommu=pt default_hugepagesz=1G hugepagesz=1G hugepages=2"' in (host.root / DROPIN).read_text()
    _run(run_playbook, host, (), vfio_host_state='absent')
    assert [p for p in host.snapshot() if 'fleetgpu' in p] == []
    assert (host.root / 'etc/default/grub').read_text() == GRUB


def test_hugepages_of_the_administrator_are_refused_then_kept(run_playbook, host: Host) -> None:
    own = GRUB.replace('GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="hugepagesz=1G hugepages=4"')
    (host.root / 'etc/default/grub').write_text(own)
    before = host.snapshot()
    proc = run_playbook(PLAY, extra_vars=host.vars(vfio_host_hugepages=[{'size': '2M', 'count': 64}]), env=host.env())
    assert proc.returncode != 0
    failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
    assert failed[0]['task'].split(' : ')[-1] == 'Preflight - refuse to replace hugepage arguments the collection did not add'
    assert 'already holds hugepagesz=1G hugepages=4, which this collection did not add' in failed[0]['result']['msg']
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert host.snapshot() == before and host.commands() == []

    # without a reservation of the role's own, the administrator's arguments are never touched
    doc = _run(run_playbook, host)
    assert _cmdline_task(doc)['cmdline_after'] == 'hugepagesz=1G hugepages=4 intel_iommu=on iommu=pt quiet'
    assert _cmdline_task(doc, 'Give back the hugepage arguments')['changed'] is False
    _run(run_playbook, host, (), vfio_host_state='absent')
    assert (host.root / 'etc/default/grub').read_text() == own
    assert [p for p in host.snapshot() if 'fleetgpu' in p] == []


@pytest.mark.parametrize('extra, fragment', [
    ({'vfio_host_hugepages': [{'size': '3M', 'count': 4}]},
     "vfio_host_hugepages[0].size '3M': this host's kernel offers no 3M hugepages (it offers: 2M, 1G"),
    ({'vfio_host_hugepages': [{'size': '2M', 'count': 0}]},
     'vfio_host_hugepages[0].count 0 is not a positive number of pages'),
    ({'vfio_host_hugepages': [{'size': '2M', 'count': 8, 'node': 3}]},
     'vfio_host_hugepages[0].node 3 is not a NUMA node of this host (it has: 0)'),
    ({'vfio_host_hugepages': [{'size': 'huge', 'count': 8}]},
     "vfio_host_hugepages[0].size 'huge' is not a page size (give 2M, 1G or a number of KiB)"),
    ({'vfio_host_hugepages': [{'size': '2M', 'count': 8, 'node': 0}, {'size': '1G', 'count': 1, 'node': 0}]},
     'vfio_host_hugepages[1].size 1G differs from the 2M of the entries before it: one page size per host'),
    ({'vfio_host_hugepages': [{'size': '2M', 'count': 8}, {'size': '2M', 'count': 8, 'node': 0}]},
     'vfio_host_hugepages[1] names node 0, but an entry before it has no node'),
    ({'vfio_host_hugepages': [{'size': '1G', 'count': 16}]},
     'asks for 16 pages of 1G (16384 MiB) on the host, which has 16384 MiB of memory: more than 90%'),
    ({'vfio_host_hugepages': [], 'vfio_host_default_hugepagesz': '4M'},
     "vfio_host_default_hugepagesz '4M': this host's kernel offers no 4M hugepages"),
])
def test_bad_hugepages_fail_clearly_before_any_change(run_playbook, host: Host, extra: dict, fragment: str) -> None:
    before = host.snapshot()
    proc = run_playbook(PLAY, extra_vars=host.vars(**extra), env=host.env())
    assert proc.returncode != 0
    failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
    assert failed[0]['task'].split(' : ')[-1] == 'Preflight - refuse a hugepage reservation the host cannot hold'
    assert fragment in failed[0]['result']['msg'], failed[0]['result']['msg']
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert host.snapshot() == before and host.commands() == []


def test_hugepage_count_that_is_not_a_number_fails_at_argument_validation(run_playbook, host: Host) -> None:
    proc = run_playbook(PLAY, extra_vars=host.vars(vfio_host_hugepages=[{'size': '2M', 'count': 'many'}]), env=host.env())
    assert proc.returncode != 0
    failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
    assert 'vfio_host_hugepages' in failed[0]['result']['msg'] and 'count' in failed[0]['result']['msg']


@pytest.mark.skipif(not os.path.exists('/dev/fuse'), reason='needs /dev/fuse for the behaving simulated kernel')
def test_hugepage_shortfall_after_boot_warns_or_fails(run_playbook, tmp_path: Path) -> None:
    """The arguments are live but the kernel holds 40 of the 64 pages: the verification warns and the
    host passes (vfio_host_hugepages_shortfall: warn), or fails with the same sentence (fail)."""
    from tests.sim import fusekernel

    topo = simkernel.load_topology('identical_pair')
    topo['kernel']['cmdline'] = ('BOOT_IMAGE=/boot/vmlinuz-%s root=/dev/vda1 ro quiet intel_iommu=on iommu=pt '
                                 'hugepagesz=2M hugepages=64' % KERNEL)
    topo['kernel']['loaded'] = ['vfio', 'vfio_iommu_type1', 'vfio_pci', 'bochs', 'snd_hda_intel', 'ahci',
                                'virtio_pci', 'lpc_ich', 'i801_smbus']
    topo['numa'] = [{'cpus': '0-3', 'memory_mib': 16384, 'hugepages': {2048: {'total': 40, 'free': 40}}}]
    host = Host(tmp_path / 'h', 'identical_pair')
    (host.bin / 'modprobe').write_text('#!/bin/sh\necho "modprobe $*" >> "$FLEETGPU_TEST_LOG"\nexit 0\n')
    (host.bin / 'modprobe').chmod(0o755)
    pages = [{'size': '2M', 'count': 64}]
    with fusekernel.simulated(topo, tmp_path / 'k') as sysfs_root:
        host.sysfs = sysfs_root
        doc = _run(run_playbook, host, (), vfio_host_runtime_bind=True, vfio_host_hugepages=pages)
        assert _facts(doc)['reboot_required'] is False
        warned = [t for t in doc['tasks'] if 'Warn that the kernel reserved fewer hugepages' in t['task']]
        assert warned and warned[0]['status'] == 'ok', warned
        assert 'the host (all nodes) has 40 of the 64 2M hugepages asked for' in warned[0]['result']['msg']
        assert 'hugepagesz=2M hugepages=64' in warned[0]['result']['msg']
        assert [t for t in doc['tasks'] if t['task'].endswith('Fail with what is wrong')][0]['status'] == 'ok'

        proc = run_playbook(PLAY, extra_vars=host.vars(vfio_host_runtime_bind=True, vfio_host_hugepages=pages,
                                                       vfio_host_verify=True, vfio_host_hugepages_shortfall='fail'),
                            env=host.env())
        assert proc.returncode != 0
        failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
        assert failed[0]['task'].endswith('Fail with what is wrong')
        assert ('has 40 of the 64 2M hugepages asked for' in failed[0]['result']['msg']
                and '(vfio_host_hugepages_shortfall is fail)' in failed[0]['result']['msg'])

        # a new reservation is judged only once it is live: until the reboot there is nothing to compare
        doc = _run(run_playbook, host, (), vfio_host_runtime_bind=True, vfio_host_verify=True,
                   vfio_host_hugepages=[{'size': '2M', 'count': 40, 'node': 0}])
        assert _facts(doc)['reboot_required'] is True
        assert not [t for t in doc['tasks'] if 'Warn that the kernel reserved fewer' in t['task'] and t['status'] == 'ok']
        _run(run_playbook, host, (), vfio_host_runtime_bind=True, vfio_host_state='absent')
