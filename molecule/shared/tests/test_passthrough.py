"""Verify the main job on a real kernel (a QEMU test host), with pytest-testinfra.

Molecule runs this file twice: after converge + idempotence (the host must be passing the
GPU through) and after side_effect, which runs playbooks/restore.yml and writes the phase
marker (the host must be back as prepare.yml recorded it).

Boot-time evidence comes from the test host itself: ``fleetgpu-bootlog.service`` appends one
line per boot to /var/lib/fleetgpu-testbed/boots *before sshd starts*, with the boot id, the
command line and the driver of every display/audio PCI function. A driver recorded there was
bound by the boot (initramfs, modprobe.d, udev), not by a runtime step over SSH.
"""
from __future__ import annotations

import re
import time
from typing import Dict, List

import pytest

STATE = '/var/lib/fleetgpu-testbed'
BOOT_GPU = '0000:00:01.0'
GPU = '0000:01:00.0'
AUDIO = '0000:01:00.1'
AMD_GPU = '0000:02:00.0'


def _phase(host) -> str:
    f = host.file(STATE + '/phase')
    return f.content_string.strip() if f.exists else 'converged'


def _cpu_vendor(host) -> str:
    out = host.check_output('grep -m1 vendor_id /proc/cpuinfo')
    return 'intel' if 'GenuineIntel' in out else 'amd' if 'AuthenticAMD' in out else 'other'


def _driver(host, address: str) -> str:
    link = host.file('/sys/bus/pci/devices/%s/driver' % address)
    if not link.exists:
        return 'none'
    return host.check_output('basename "$(readlink /sys/bus/pci/devices/%s/driver)"' % address)


def _boot_records(host) -> List[Dict[str, object]]:
    records = []
    for line in host.file(STATE + '/boots').content_string.splitlines():
        m = re.match(r'(\S+) (\S+) drivers=(\S*) cmdline=(.*)$', line)
        if not m:
            continue
        drivers = dict(item.rsplit(':', 1) for item in m.group(3).split(',') if item)
        records.append({'boot_id': m.group(1), 'drivers': drivers, 'cmdline': m.group(4)})
    return records


def _before(host) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for line in host.file(STATE + '/before.txt').content_string.splitlines():
        key, _sep, rest = line.partition(' ')
        out.setdefault(key, []).append(rest)
    return out


@pytest.fixture()
def converged(host):
    if _phase(host) != 'converged':
        pytest.skip('host restored: converged-state checks ran before restore')
    return host


@pytest.fixture()
def restored(host):
    if _phase(host) != 'restored':
        pytest.skip('restore.yml has not run yet')
    return host


# -- after converge ---------------------------------------------------------------------

def test_cmdline_holds_iommu_arguments_once_for_the_cpu_vendor(converged):
    tokens = converged.file('/proc/cmdline').content_string.split()
    vendor = _cpu_vendor(converged)
    if vendor == 'intel':
        assert tokens.count('intel_iommu=on') == 1, tokens
        assert [t for t in tokens if t.startswith('intel_iommu=')] == ['intel_iommu=on'], tokens
    else:
        assert not [t for t in tokens if t.startswith('intel_iommu=')], tokens
    assert 'amd_iommu=on' not in tokens, tokens
    assert tokens.count('iommu=pt') == 1, tokens
    assert 'modprobe.blacklist=radeon' not in ' '.join(tokens)


def test_the_trial_boot_entry_was_committed_and_removed(converged):
    """The converge booted the new command line once (vfio_host_boot_once) and then made it permanent."""
    assert not converged.file('/etc/grub.d/42_fleetgpu-passthrough-trial').exists
    assert 'fleetgpu-passthrough-trial' not in converged.file('/boot/grub/grub.cfg').content_string
    assert 'iommu=pt' in converged.file('/etc/default/grub.d/zz-fleetgpu-passthrough.cfg').content_string


def test_discrete_gpu_and_audio_on_vfio_pci_bound_at_boot(converged):
    last = _boot_records(converged)[-1]
    assert last['boot_id'] == converged.file('/proc/sys/kernel/random/boot_id').content_string.strip()
    drivers = last['drivers']
    assert drivers.get(GPU) == 'vfio-pci', drivers
    assert drivers.get(AUDIO) == 'vfio-pci', drivers
    assert _driver(converged, GPU) == 'vfio-pci'
    assert _driver(converged, AUDIO) == 'vfio-pci'


def test_discrete_gpu_group_is_viable(converged):
    group = converged.check_output('basename "$(readlink /sys/bus/pci/devices/%s/iommu_group)"' % GPU)
    members = converged.check_output('ls /sys/kernel/iommu_groups/%s/devices' % group).split()
    assert sorted(members) == [GPU, AUDIO]
    for m in members:
        assert _driver(converged, m) == 'vfio-pci', m
    assert converged.file('/dev/vfio/%s' % group).exists


def test_boot_gpu_keeps_its_host_driver(converged):
    # Same vendor:device (1234:1111) as the passed GPU: only per-address binding keeps it.
    assert converged.file('/sys/bus/pci/devices/%s/vendor' % BOOT_GPU).content_string.strip() == '0x1234'
    assert converged.file('/sys/bus/pci/devices/%s/device' % GPU).content_string.strip() == '0x1111'
    assert _boot_records(converged)[-1]['drivers'].get(BOOT_GPU) == 'bochs-drm'
    assert _driver(converged, BOOT_GPU) == 'bochs-drm'


def test_amd_vendor_gpu_claimed_by_vfio_pci_at_boot(converged):
    assert _boot_records(converged)[-1]['drivers'].get(AMD_GPU) == 'vfio-pci'
    assert _driver(converged, AMD_GPU) == 'vfio-pci'
    assert 'radeon' not in converged.check_output('cut -d" " -f1 /proc/modules').split()


def _files_mentioning(host, directory: str, word: str) -> List[str]:
    cmd = host.run('grep -l -r -- %s %s' % (word, directory))
    return cmd.stdout.split()


def test_modprobe_and_modules_load_configuration(converged):
    modprobe = _files_mentioning(converged, '/etc/modprobe.d', 'vfio')
    assert modprobe, 'no modprobe.d file mentions vfio'
    text = '\n'.join(converged.file(f).content_string for f in modprobe)
    # 01:00.0 shares 1234:1111 with the boot GPU: no "ids=" that would capture both.
    assert not re.search(r'vfio[-_]pci\s+ids=[^\n]*1234:1111', text), text
    loads = _files_mentioning(converged, '/etc/modules-load.d', 'vfio')
    assert loads, 'no modules-load.d file loads vfio'
    modules = set()
    for f in loads:
        modules.update(l.strip() for l in converged.file(f).content_string.splitlines()
                       if l.strip() and not l.startswith('#'))
    assert {'vfio', 'vfio_iommu_type1', 'vfio_pci'} <= {m.replace('-', '_') for m in modules}, modules
    assert 'vfio_virqfd' not in modules


def test_initramfs_holds_vfio_and_the_configuration(converged):
    release = converged.check_output('uname -r')
    listing = converged.check_output('lsinitramfs /boot/initrd.img-%s' % release).split()
    assert any(re.search(r'/vfio-pci\.ko', p) for p in listing), 'vfio-pci.ko not in the initramfs'
    for f in _files_mentioning(converged, '/etc/modprobe.d', 'vfio'):
        assert f.lstrip('/') in listing, '%s not in the initramfs' % f


def test_exactly_one_reboot_in_the_first_converge_none_in_the_second(converged):
    before = int(converged.file(STATE + '/boots.before').content_string.strip())
    after = [int(x) for x in converged.file(STATE + '/converge-boots').content_string.split()]
    assert after == [before + 1, before + 1], (before, after)
    assert len(_boot_records(converged)) == before + 1


def test_the_libvirt_python_binding_is_there_and_was_installed_where_prepare_removed_it(converged):
    """A host prepared without python3-libvirt got a VM (read with virsh) and the binding from role vfio_host."""
    assert converged.run("python3 -c 'import libvirt, lxml'").rc == 0
    marker = converged.file(STATE + '/libvirt-python')
    assert marker.exists, 'prepare.yml records whether it removed the binding'
    if marker.content_string.strip() != 'removed':
        return
    events = [line.split()[2:4] for line in converged.file('/var/log/dpkg.log').content_string.splitlines()
              if len(line.split()) > 3 and line.split()[3].startswith('python3-libvirt:')]
    actions = [action for action, _pkg in events]
    assert 'remove' in actions, events
    assert 'install' in actions[actions.index('remove'):], 'not installed again after prepare removed it: %s' % events


def _virsh(host, args: str, timeout: int = 120):
    return host.run('timeout %d virsh -c qemu:///system %s' % (timeout, args))


def _domains(host) -> List[str]:
    out = _virsh(host, 'list --all --name')
    assert out.rc == 0, out.stderr
    return [n for n in out.stdout.split() if n]


def _domain(host) -> str:
    """The one VM of this host: gpu-vm (defined by prepare), or the fleet VM placed here."""
    names = _domains(host)
    assert len(names) == 1, 'expected one VM on this host, found %s' % names
    return names[0]


def test_vm_holds_gpu_and_audio_as_one_multifunction_device(converged):
    xml = _virsh(converged, 'dumpxml --inactive %s' % _domain(converged))
    assert xml.rc == 0, xml.stderr
    hostdevs = re.findall(r'<hostdev .*?</hostdev>', xml.stdout, re.S)
    sources = {}
    for hd in hostdevs:
        src = re.search(r"<source>\s*<address domain='0x0000' bus='(0x[0-9a-f]+)' slot='(0x[0-9a-f]+)' function='(0x[0-9a-f]+)'", hd)
        guest = re.search(r"<address type='pci' domain='0x0000' bus='(0x[0-9a-f]+)' slot='(0x[0-9a-f]+)' function='(0x[0-9a-f]+)'([^/]*)/>", hd)
        assert src and guest, hd
        sources[tuple(int(x, 16) for x in src.groups())] = (tuple(int(x, 16) for x in guest.groups()[:3]), guest.group(4))
    assert set(sources) == {(1, 0, 0), (1, 0, 1)}, xml.stdout
    (gpu_at, gpu_extra), (audio_at, _audio_extra) = sources[(1, 0, 0)], sources[(1, 0, 1)]
    assert gpu_at[:2] == audio_at[:2], 'GPU and audio on different guest slots: %s %s' % (gpu_at, audio_at)
    assert (gpu_at[2], audio_at[2]) == (0, 1)
    assert "multifunction='on'" in gpu_extra


def test_vm_is_wired_to_the_numa_node_of_its_gpu(converged):
    """fleetgpu_vms[].wiring: the vCPU on the highest CPU of the GPU's node (the kernel says -1 on a
    one-node host: node 0), memory strict on it, the emulator on the node's other CPUs, and a
    64-bit MMIO window of at least 32 GiB (OVMF's default; these GPUs' BARs are small)."""
    xml = _virsh(converged, 'dumpxml --inactive %s' % _domain(converged))
    assert xml.rc == 0, xml.stderr
    cpus = converged.check_output('cat /sys/devices/system/node/node0/cpulist')
    highest = max(int(part.split('-')[-1]) for part in cpus.split(','))
    assert "<vcpupin vcpu='0' cpuset='%d'/>" % highest in xml.stdout, xml.stdout
    assert "<memory mode='strict' nodeset='0'/>" in xml.stdout, xml.stdout
    assert re.search(r"<emulatorpin cpuset='[0-9,-]+'/>", xml.stdout), xml.stdout
    assert "<pcihole64 unit='KiB'>33554432</pcihole64>" in xml.stdout, xml.stdout


def test_vm_starts_and_its_qemu_holds_the_vfio_devices(converged):
    domain = _domain(converged)
    start = _virsh(converged, 'start %s' % domain, timeout=180)
    try:
        assert start.rc == 0, start.stderr
        info = ''
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            out = _virsh(converged, "qemu-monitor-command --hmp %s 'info pci'" % domain)
            info = out.stdout
            if '1234:1111' in info and '8086:293e' in info:
                break
            time.sleep(3)
        assert 'PCI device 1234:1111' in info, info
        assert 'PCI device 8086:293e' in info, info
        pid = converged.check_output('cat /run/libvirt/qemu/%s.pid' % domain)
        fds = converged.check_output('ls -l /proc/%s/fd' % pid)
        assert '/dev/vfio/' in fds, 'the VM process holds no /dev/vfio file'
    finally:
        _virsh(converged, 'destroy %s' % domain)


# -- after restore.yml ------------------------------------------------------------------

def test_restore_brings_back_the_command_line(restored):
    before = _before(restored)
    assert restored.file('/proc/cmdline').content_string.strip() == before['cmdline'][0].strip()
    assert restored.check_output("grep -o 'linux[[:space:]].*' /boot/grub/grub.cfg | head -1") == before['grubcfg'][0].strip()


def test_restore_brings_back_the_files(restored):
    before = _before(restored)
    now = restored.check_output('sh /var/lib/fleetgpu-testbed/snapshot.sh')
    files_now = sorted(l[5:] for l in now.splitlines() if l.startswith('file '))
    assert files_now == sorted(before.get('file', []))


def test_restore_brings_back_the_drivers(restored):
    before = dict(l.split(' ', 1) for l in _before(restored)['driver'])
    for address, driver in before.items():
        assert _driver(restored, address) == driver.strip(), address


def test_restore_leaves_the_vms_without_host_devices(restored):
    names = _domains(restored)
    assert names
    for name in names:
        xml = _virsh(restored, 'dumpxml --inactive %s' % name)
        assert xml.rc == 0, xml.stderr
        assert '<hostdev' not in xml.stdout, name
