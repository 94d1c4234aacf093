"""The guest sees its GPU: a libvirt domain inside the intel test host boots a real kernel with
the passed GPU and its HDMI audio function, and reports what it sees from inside; then a second
GPU is hot-plugged into the running guest and unplugged again.

The guest is as small as a Linux guest gets: the test host's own kernel (direct kernel boot)
and an initramfs made here from Debian's busybox-static and one ``/init`` script, no disk.
``/init`` prints, between two markers on the serial console (a file on the test host), every
PCI function's address, vendor, device and class as the guest kernel enumerated them, the
top-level ``PCI Bus`` windows of ``/proc/iomem`` (the host bridge windows from the firmware's
ACPI tables, the 64-bit one included), the online CPUs and the NUMA nodes, then stays up (the
fixture ``host`` destroys the domain at the end).

On the host the devices go through the collection as a user runs it: ``vfio_bind`` puts the
GPU's IOMMU group on vfio-pci (no change when site.yml has done so already), then
``libvirt_hostdev`` defines the domain from ``define_xml``, attaches the GPU with its
companion on one guest slot (multifunction), wires it (vCPU and emulator pinned, memory bound
to the GPU's node, a 64-bit MMIO window sized for the GPU's BARs) and starts it. The domain is
i440fx (``pc``): SeaBIOS, an emulated TCG guest (``type='qemu'``), 1 vCPU, 256 MiB. i440fx's
own 64-bit window is 2 GiB, so the 32 GiB the wiring writes (``pcihole64``) shows in the guest.

Live attach and detach, on the same running guest once it has printed its report: the
ati-vga at 02:00.0 (put on vfio-pci by the same ``vfio_bind`` task as the GPU; no change after
site.yml, given back at the end otherwise) goes into the running domain with ``libvirt_hostdev``
``where: live``; QEMU's monitor (``info pci``) and the live XML have it. The live detach returns once the guest kernel has released the device (ACPI
PCI hot-plug of i440fx's bus 0, ``acpiphp``, built into the kernel: no userspace needed); the
monitor and the live XML no longer have it, and a second detach changes nothing. Then the same
for a mediated device: ``mbochs`` is loaded, ``gpu_partition`` creates one ``mbochs-small`` mdev
in the running kernel only (``persist: false``), ``libvirt_hostdev`` hot-plugs it (``display:
false``; a second attach changes nothing), QEMU has one PCI function more and the live XML the
mdev; the live detach returns once the guest released it, QEMU and the live XML are as before, and
``gpu_partition`` removes the mdev.

Nested TCG is slow (the test host is itself emulated): the guest needs minutes to reach
``/init``. The kernel command line leaves out work this guest never needs (crypto self-tests,
a few slow initcalls: see ``GUEST_CMDLINE``). The time is printed, never asserted;
``BOOT_TIMEOUT`` only bounds a hang.

Run by tests/testbed/e2e.sh (runtime phase), after test_awx_runner.py on the same host.
"""
from __future__ import annotations

import datetime
import gzip
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from conftest import REPO
from test_real_kernel import _play, _result  # one play runner for the runtime tests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402

TESTBED_HOSTS = ('intel',)

GPU, AUDIO = '0000:01:00.0', '0000:01:00.1'
GPU_IDS, AUDIO_IDS = ('0x1234', '0x1111'), ('0x8086', '0x293e')
#: The GPU hot-plugged into the running guest (ati-vga rv100; radeon kept away on the test host).
LIVE_GPU, LIVE_GPU_IDS = '0000:02:00.0', '1002:5159'
#: The mediated device hot-plugged into the running guest (the kernel's sample driver mbochs, in the test-host image).
MDEV_TYPE = 'mbochs-small'
#: Seconds the live detach may wait for the guest to release the device (nested TCG is slow).
UNPLUG_TIMEOUT = 240
#: Whether the boot test's vfio_bind moved LIVE_GPU to vfio-pci (then the hot-plug test gives it back).
BOUND_HERE: Dict[str, bool] = {}
DOMAIN = 'fleetgpu-guestboot'
INITRD = '/var/lib/libvirt/images/%s-initrd.gz' % DOMAIN
CONSOLE = '/var/log/libvirt/qemu/%s-console.log' % DOMAIN
QEMU_LOG = '/var/log/libvirt/qemu/%s.log' % DOMAIN
MEMORY_MIB = 256
#: Seconds from the start of the domain to the end of its report before the test gives up (a hang).
BOOT_TIMEOUT = int(os.environ.get('FLEETGPU_GUEST_BOOT_TIMEOUT', '1500'))
BEGIN, END = 'FLEETGPU-GUEST-BEGIN', 'FLEETGPU-GUEST-END'
SPLIT = 'FLEETGPU-LIVE-XML'

# quiet: the console carries the report, not the boot log. cryptomgr.notests: the crypto
# self-tests took 20-30 s of a nested boot. initcall_blacklist: initcalls this guest has no use
# for that took 1-8 s each (kprobe events, the kernel's certificate and encrypted keyrings,
# the KDF self-test, /sys/kernel/slab, the RTC, the PS/2 controller). panic=-1: a panic
# reboots, and on_reboot=destroy ends the domain at once instead of waiting out the timeout.
# no_timer_check: as on the test hosts, the IO-APIC timer check can fail under TCG on a loaded
# machine (the guest logs "8254 timer not connected to IO-APIC").
GUEST_CMDLINE = ('console=ttyS0 quiet panic=-1 no_timer_check cryptomgr.notests mitigations=off nokaslr '
                 'initcall_blacklist=init_kprobe_trace,load_system_certificate_list,crypto_kdf108_init,'
                 'init_encrypted,slab_sysfs_init,cmos_init,i8042_init')

# Shell builtins between the markers where they can (each fork costs a lot under nested TCG);
# the node's cpulist is read with cat: busybox's read builtin gets nothing from that file.
INIT = r'''#!/bin/sh
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
read up idle < /proc/uptime
echo "%(begin)s"
echo "uptime $up"
for d in /sys/bus/pci/devices/*; do
  read v < "$d/vendor"; read p < "$d/device"; read c < "$d/class"
  echo "pci ${d##*/} $v $p $c"
done
while IFS= read -r line; do
  case "$line" in [0-9a-f]*"PCI Bus "*) echo "iomem $line" ;; esac
done < /proc/iomem
read online < /sys/devices/system/cpu/online
echo "cpus $online"
for n in /sys/devices/system/node/node*; do
  [ -d "$n" ] || continue
  cpus=$(busybox cat "$n/cpulist")
  while read a b c d e; do [ "$c" = MemTotal: ] && echo "node ${n##*/node} $cpus $d"; done < "$n/meminfo"
done
while read a b c; do [ "$a" = MemTotal: ] && echo "memtotal_kib $b"; done < /proc/meminfo
read up idle < /proc/uptime
echo "uptime_end $up"
echo "%(end)s"
# Stay up for the hot-plug test (the test destroys the domain): the kernel handles ACPI PCI
# hot-plug by itself, and PID 1 must not exit.
while :; do busybox sleep 86400; done
''' % {'begin': BEGIN, 'end': END}

DOMAIN_XML = '''<domain type='qemu'>
  <name>%(name)s</name>
  <memory unit='MiB'>%(memory)d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%(kernel)s</kernel>
    <initrd>%(initrd)s</initrd>
    <cmdline>%(cmdline)s</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='%(console)s'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
'''

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='QEMU test hosts need root'),
    pytest.mark.skipif(not (REPO / '.cache' / 'collections').exists() and not os.environ.get('CI'),
                       reason='collection not installed (run scripts/install-collection.sh)'),
]


def _cpio_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    """One member of a cpio archive in the kernel's "newc" format (header, name, data, 4-byte padded)."""
    raw = name.encode() + b'\0'
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
    out = b'070701' + ''.join('%08X' % v for v in fields).encode() + raw
    out += b'\0' * (-len(out) % 4)
    return out + data + b'\0' * (-len(data) % 4)


def build_initramfs(path: Path, init: str, busybox: Path) -> None:
    """A gzip-compressed newc cpio: /bin/busybox, /bin/sh -> busybox, /init, and mount points."""
    members: List[Tuple[str, int, bytes]] = [(d, stat.S_IFDIR | 0o755, b'') for d in ('bin', 'dev', 'proc', 'sys')]
    members += [
        ('bin/busybox', stat.S_IFREG | 0o755, busybox.read_bytes()),
        ('bin/sh', stat.S_IFLNK | 0o777, b'busybox'),
        ('init', stat.S_IFREG | 0o755, init.encode()),
    ]
    body = b''.join(_cpio_entry(name, mode, data, ino) for ino, (name, mode, data) in enumerate(members, 1))
    body += _cpio_entry('TRAILER!!!', 0, b'', 0)
    with gzip.open(path, 'wb') as out:
        out.write(body)


def static_busybox() -> Path:
    """Debian's busybox-static (scripts/bootstrap.sh installs it): one binary, no libraries."""
    found = shutil.which('busybox')
    if not found:
        pytest.fail('busybox is not installed on this machine: install the Debian package busybox-static '
                    '(scripts/bootstrap.sh does)')
    path = Path(found).resolve()
    if b'ld-linux' in path.read_bytes()[:4096 * 4]:
        pytest.fail('%s is dynamically linked: the guest initramfs needs busybox-static' % path)
    return path


def parse_console(text: str) -> Dict[str, object]:
    """What /init reported: ``pci`` {address: (vendor, device, class)}, ``iomem`` [(start, end)],
    ``cpus``, ``nodes`` {node: (cpulist, kib)}, ``memtotal_kib``, ``uptime`` and ``uptime_end`` (the guest
    kernel's seconds when /init started and when it was done)."""
    lines = [line.strip() for line in text.replace('\r', '').splitlines()]
    if BEGIN not in lines or END not in lines:
        raise AssertionError('the guest did not print its report (no %s ... %s on the console):\n%s'
                             % (BEGIN, END, '\n'.join(lines[-40:])))
    body = lines[lines.index(BEGIN) + 1:lines.index(END)]
    report: Dict[str, object] = {'pci': {}, 'iomem': [], 'nodes': {}}
    for line in body:
        kind, _sep, rest = line.partition(' ')
        fields = rest.split()
        if kind == 'pci':
            report['pci'][fields[0]] = tuple(fields[1:4])  # type: ignore[index]
        elif kind == 'iomem':
            match = re.match(r'([0-9a-f]+)-([0-9a-f]+) : PCI Bus ', rest)
            assert match, line
            report['iomem'].append((int(match.group(1), 16), int(match.group(2), 16)))  # type: ignore[attr-defined]
        elif kind == 'node':
            report['nodes'][int(fields[0])] = (fields[1], int(fields[2]))  # type: ignore[index]
        elif kind in ('cpus',):
            report[kind] = fields[0]
        elif kind == 'memtotal_kib':
            report[kind] = int(fields[0])
        elif kind in ('uptime', 'uptime_end'):
            report[kind] = float(fields[0])
    return report


def _copy(host: launch.TestHost, src: Path, dst: str) -> None:
    cmd = ['scp', '-q', '-i', str(host.key), '-P', str(host.port)] + launch.SSH_OPTIONS + [
        str(src), 'root@127.0.0.1:%s' % dst]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr


def _virsh(host: launch.TestHost, *args: str, check: bool = True) -> str:
    return host.ssh(['virsh', '-q', '-c', 'qemu:///system'] + list(args), timeout=120, check=check).stdout


def _wiring_plan(task: dict) -> dict:
    """A task's returned wiring without the per-element actions (added, then unchanged)."""
    return {k: v for k, v in task['result']['wiring'].items() if k != 'elements'}


@pytest.fixture(scope='module')
def host(testbed_hosts: Dict[str, launch.TestHost]) -> Iterator[launch.TestHost]:
    """The intel host; the guest's domain is taken away again afterwards (the GPU stays on vfio-pci)."""
    testhost = testbed_hosts['intel']
    yield testhost
    _virsh(testhost, 'destroy', DOMAIN, check=False)
    _virsh(testhost, 'undefine', DOMAIN, check=False)
    testhost.ssh(['rm', '-f', INITRD], check=False)
    # the mdev test's device and driver, whatever happened (nothing to do when it passed)
    testhost.ssh(["sh -c 'for d in /sys/bus/mdev/devices/*; do [ -e $d/remove ] && echo 1 > $d/remove; done; "
                  "modprobe -r mbochs'"], check=False)


def test_the_guest_kernel_sees_the_gpu_and_its_audio_function_on_one_slot(host, tmp_path):
    initrd = tmp_path / 'initrd.gz'
    build_initramfs(initrd, INIT, static_busybox())
    _copy(host, initrd, INITRD)
    kernel = '/boot/vmlinuz-%s' % host.ssh(['uname', '-r']).stdout.strip()
    host.ssh(['test', '-r', kernel])
    host.ssh(['rm', '-f', CONSOLE, QEMU_LOG])
    _virsh(host, 'destroy', DOMAIN, check=False)
    _virsh(host, 'undefine', DOMAIN, check=False)
    xml = DOMAIN_XML % {'name': DOMAIN, 'memory': MEMORY_MIB, 'kernel': kernel, 'initrd': INITRD,
                        'cmdline': GUEST_CMDLINE, 'console': CONSOLE}
    attach = {
        'domain': DOMAIN, 'devices': [GPU], 'define_xml': xml,
        # After site.yml (test_awx_runner.py) the GPU is also in gpu-vm's definition; gpu-vm is
        # not running, and two definitions that never run at once may share a device.
        'allow_shared': True,
        # vCPU and emulator pinned on the GPU's NUMA node, memory bound to it, and a 64-bit MMIO
        # window sized for the GPU's BARs: pcihole64 of the i440fx root bus, which SeaBIOS and the
        # guest's ACPI tables follow.
        'wiring': {'pin_cpus': True, 'numa_mode': 'strict', 'mmio64': True},
    }
    doc = _play(host, tmp_path, [
        # LIVE_GPU too, for the hot-plug test (in one task: a module run costs seconds under TCG)
        {'name': 'bind', 'fleetgpu.passthrough.vfio_bind': {'devices': [GPU, LIVE_GPU], 'include_group': True}},
        {'name': 'check', 'fleetgpu.passthrough.libvirt_hostdev': attach, 'check_mode': True},
        {'name': 'attach', 'fleetgpu.passthrough.libvirt_hostdev': dict(attach, start=True)},
        {'name': 'again', 'fleetgpu.passthrough.libvirt_hostdev': attach},
    ], 'guestboot')
    bind, check, done, again = (_result(doc, name) for name in ('bind', 'check', 'attach', 'again'))
    started = time.monotonic()
    for res in (bind, check, done, again):
        assert res['status'] == 'ok', res
    assert {d['address']: d['driver_after'] for d in bind['result']['devices']} == {
        GPU: 'vfio-pci', AUDIO: 'vfio-pci', LIVE_GPU: 'vfio-pci'}
    BOUND_HERE.update((d['address'], d['changed']) for d in bind['result']['devices'])
    assert check['result']['changed'] is True and check['result']['defined'] is True, check
    assert done['result']['changed'] is True and done['result']['defined'] is True, done
    assert done['result']['power'] == 'started', done
    assert again['result']['changed'] is False, again
    slots = {d['address']: d['guest_address'] for d in done['result']['devices']}
    assert set(slots) == {GPU, AUDIO}, done['result']['devices']
    guest_gpu = slots[GPU]
    assert guest_gpu.endswith('.0') and slots[AUDIO] == guest_gpu[:-1] + '1', slots
    wiring = done['result']['wiring']
    assert wiring['firmware'] == 'bios' and wiring['gpus'] == [GPU], wiring
    assert _wiring_plan(check) == _wiring_plan(done) == _wiring_plan(again), (check, again)
    assert {e['action'] for e in done['result']['wiring']['elements']} == {'added'}, wiring
    assert {e['action'] for e in again['result']['wiring']['elements']} == {'unchanged'}, again
    # The running domain has what the module wrote (the guest needs minutes to boot: it still runs).
    assert _virsh(host, 'domstate', DOMAIN).strip() == 'running'
    vcpupin = dict(line.split(None, 1) for line in _virsh(host, 'vcpupin', DOMAIN).splitlines() if line.strip())
    assert {v.rstrip(':'): c.strip() for v, c in vcpupin.items()} == {
        v: str(c) for v, c in wiring['vcpu_pins'].items()}, (vcpupin, wiring)
    emulatorpin = _virsh(host, 'emulatorpin', DOMAIN).split()
    assert emulatorpin[-1] == wiring['emulator_cpus'], (emulatorpin, wiring)
    numatune = dict(line.replace(' ', '').split(':', 1) for line in _virsh(host, 'numatune', DOMAIN).splitlines()
                    if ':' in line)
    assert numatune == {'numa_mode': wiring['numatune']['mode'], 'numa_nodeset': wiring['numatune']['nodeset']}, (
        numatune, wiring)

    console, state = '', 'running'
    while time.monotonic() - started < BOOT_TIMEOUT and END not in console and state == 'running':
        time.sleep(10)
        # one SSH connection per poll (each costs seconds under TCG): the state, then the console
        out = host.ssh(['virsh -q -c qemu:///system domstate %s; cat %s' % (DOMAIN, CONSOLE)], check=False).stdout
        state, _sep, console = out.partition('\n')
        state = state.strip()
    elapsed = time.monotonic() - started
    if END not in console:
        _virsh(host, 'destroy', DOMAIN, check=False)
        pytest.fail('the guest did not print its report within %d s (state %r); console:\n%s'
                    % (BOOT_TIMEOUT, state, console[-4000:]))
    report = parse_console(console)
    print('guest boot under nested TCG: the report was on the console %.0f s after the end of the play; '
          'the guest kernel reached /init after %.0f s of its uptime and was done at %.0f s'
          % (elapsed, report.get('uptime', -1), report.get('uptime_end', -1)))

    pci = report['pci']
    assert pci.get(guest_gpu, ())[:2] == GPU_IDS, (guest_gpu, pci)       # type: ignore[union-attr]
    assert pci.get(slots[AUDIO], ())[:2] == AUDIO_IDS, (slots[AUDIO], pci)  # type: ignore[union-attr]
    assert pci[guest_gpu][2].startswith('0x03'), pci[guest_gpu]         # type: ignore[index]
    assert pci[slots[AUDIO]][2].startswith('0x0403'), pci[slots[AUDIO]]  # type: ignore[index]
    # The guest's host bridge has a 64-bit MMIO window (above 4 GiB) from its ACPI tables.
    windows64 = [(lo, hi) for lo, hi in report['iomem'] if lo >= 1 << 32]  # type: ignore[attr-defined]
    print('guest 64-bit PCI window: %s; the wiring asked for %d MiB' % (
        ', '.join('%#x-%#x (%d MiB)' % (lo, hi, (hi - lo + 1) >> 20) for lo, hi in windows64), wiring['mmio64_mib']))
    # ... of the size the wiring wrote (pcihole64); i440fx's own default would be 2 GiB.
    assert [(hi - lo + 1) >> 20 for lo, hi in windows64] == [wiring['mmio64_mib']], (windows64, wiring)
    # One vCPU, one NUMA node holding all of the guest's memory (no more than the domain has).
    assert report.get('cpus') == '0', report
    assert list(report['nodes']) == [0] and report['nodes'][0][0] == '0', report['nodes']  # type: ignore[index]
    assert 0 < report['memtotal_kib'] <= MEMORY_MIB * 1024, report  # type: ignore[operator]


def _live_sources(xml: str) -> List[str]:
    """Host addresses of the PCI hostdevs in a domain XML."""
    out = []
    for addr in ET.fromstring(xml).findall('./devices/hostdev/source/address'):
        out.append('%04x:%02x:%02x.%x' % tuple(int(addr.get(k, '0'), 16) for k in ('domain', 'bus', 'slot', 'function')))
    return out


def _stamp(task: dict, key: str) -> float:
    """A command task's ``start`` or ``end`` (the managed host's clock) in seconds."""
    return datetime.datetime.strptime(task['result'][key], '%Y-%m-%d %H:%M:%S.%f').timestamp()


def test_a_second_gpu_is_hot_plugged_into_the_running_guest_and_unplugged_again(host, tmp_path):
    """The same guest, still running after its report: ``where: live`` attach and detach of 02:00.0
    (put on vfio-pci by the boot test's vfio_bind)."""
    if _virsh(host, 'domstate', DOMAIN, check=False).strip() != 'running' or LIVE_GPU not in BOUND_HERE:
        pytest.fail('the guest of the boot test is not running: this test hot-plugs into it (run the file whole)')
    started = time.monotonic()
    live = {'domain': DOMAIN, 'devices': [LIVE_GPU], 'where': 'live'}
    detach = dict(live, state='absent', unplug_timeout=UNPLUG_TIMEOUT)
    virsh = 'virsh -q -c qemu:///system '
    # QEMU's monitor, then the live XML, in one task
    read = {'cmd': "%sqemu-monitor-command %s --hmp 'info pci' && echo %s && %sdumpxml %s" % (
        virsh, DOMAIN, SPLIT, virsh, DOMAIN)}
    tasks = [
        {'name': 'attach', 'fleetgpu.passthrough.libvirt_hostdev': live},
        {'name': 'detach check', 'fleetgpu.passthrough.libvirt_hostdev': detach, 'check_mode': True},
        {'name': 'attached', 'ansible.builtin.shell': read, 'changed_when': False},
        {'name': 'detach', 'fleetgpu.passthrough.libvirt_hostdev': detach},
        {'name': 'detached', 'ansible.builtin.shell': read, 'changed_when': False},
        {'name': 'detach again', 'fleetgpu.passthrough.libvirt_hostdev': detach},
    ]
    if BOUND_HERE[LIVE_GPU]:
        # not on vfio-pci before this file (site.yml did not run first): given back
        tasks.append({'name': 'restore', 'fleetgpu.passthrough.vfio_bind': {'devices': [LIVE_GPU], 'state': 'absent'}})
    for task in tasks:
        task['vars'] = {'ansible_pipelining': True}  # one SSH command per task
    doc = _play(host, tmp_path, tasks, 'hotplug')
    elapsed = time.monotonic() - started
    res = {task['name']: _result(doc, task['name']) for task in tasks}
    for name, task in res.items():
        assert task['status'] == 'ok', (name, task)
    unplug = _stamp(res['detached'], 'start') - _stamp(res['attached'], 'end')
    print('live attach and detach of %s: %.0f s for the play (attach, detach in check mode and for real, detach '
          'again, two reads of the monitor and the live XML%s); the live detach task %.0f s'
          % (LIVE_GPU, elapsed, ', restore' if BOUND_HERE[LIVE_GPU] else '', unplug))
    info_attached, _sep, xml_attached = res['attached']['result']['stdout'].partition(SPLIT)
    info_detached, _sep, xml_detached = res['detached']['result']['stdout'].partition(SPLIT)

    # Attach: hot-plugged; QEMU and the live XML have it.
    assert res['attach']['result']['changed'] is True, res['attach']
    assert res['attach']['result']['live'] == [{'address': LIVE_GPU, 'action': 'added'}], res['attach']
    assert 'PCI device %s' % LIVE_GPU_IDS in info_attached, info_attached
    assert LIVE_GPU in _live_sources(xml_attached), xml_attached
    # Check mode of the detach (the device was there) predicted the removal and asked nothing.
    assert res['detach check']['result']['changed'] is True, res['detach check']
    assert res['detach check']['result']['live'] == [{'address': LIVE_GPU, 'action': 'removed'}]

    # Detach: the task returned once the guest had released the device, which is gone from QEMU
    # and from the live XML; the first GPU and its audio function stay.
    done = res['detach']['result']
    assert done['changed'] is True and done['unplug_pending'] is False, done
    assert done['live'] == [{'address': LIVE_GPU, 'action': 'removed'}], done
    assert 'PCI device %s' % LIVE_GPU_IDS not in info_detached, info_detached
    assert 'PCI device 1234:1111' in info_detached, info_detached
    assert sorted(_live_sources(xml_detached)) == [GPU, AUDIO], xml_detached
    again = res['detach again']['result']
    assert again['changed'] is False and again['live'] == [{'address': LIVE_GPU, 'action': 'unchanged'}], again
    if BOUND_HERE[LIVE_GPU]:
        assert res['restore']['result']['changed'] is True, res['restore']
    # The persistent definition was never touched by the live changes.
    assert LIVE_GPU not in _live_sources(_virsh(host, 'dumpxml', '--inactive', DOMAIN))


def _live_mdevs(xml: str) -> List[str]:
    """UUIDs of the mediated-device hostdevs in a domain XML."""
    return [addr.get('uuid', '').lower() for addr in ET.fromstring(xml).findall("./devices/hostdev[@type='mdev']/source/address")]


def test_an_mdev_is_hot_plugged_into_the_running_guest_and_unplugged_again(host, tmp_path):
    """The same guest: a mediated device (``mbochs``, created by gpu_partition in the running kernel only) goes in with
    ``libvirt_hostdev`` ``where: live`` and comes out again once the guest released it; then it is removed."""
    if _virsh(host, 'domstate', DOMAIN, check=False).strip() != 'running':
        pytest.fail('the guest of the boot test is not running: this test hot-plugs into it (run the file whole)')
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._partition import stable_mdev_uuid  # pylint: disable=import-outside-toplevel
    uuid = stable_mdev_uuid('mbochs', MDEV_TYPE, DOMAIN)
    started = time.monotonic()
    mdev = {'parent': 'mbochs', 'mdevs': [{'type': MDEV_TYPE, 'name': DOMAIN}], 'persist': False}
    live = {'domain': DOMAIN, 'devices': [{'mdev': uuid, 'display': False}], 'where': 'live'}
    detach = dict(live, state='absent', unplug_timeout=UNPLUG_TIMEOUT)
    virsh = 'virsh -q -c qemu:///system '
    read = {'cmd': "%sqemu-monitor-command %s --hmp 'info pci' && echo %s && %sdumpxml %s" % (
        virsh, DOMAIN, SPLIT, virsh, DOMAIN)}
    tasks = [
        {'name': 'load mbochs', 'ansible.builtin.command': {'argv': ['modprobe', 'mbochs']}, 'changed_when': False},
        {'name': 'before', 'ansible.builtin.shell': read, 'changed_when': False},
        {'name': 'create', 'fleetgpu.passthrough.gpu_partition': mdev},
        {'name': 'attach', 'fleetgpu.passthrough.libvirt_hostdev': live},
        {'name': 'attach again', 'fleetgpu.passthrough.libvirt_hostdev': live},
        {'name': 'attached', 'ansible.builtin.shell': read, 'changed_when': False},
        {'name': 'detach', 'fleetgpu.passthrough.libvirt_hostdev': detach},
        {'name': 'detached', 'ansible.builtin.shell': read, 'changed_when': False},
        {'name': 'remove', 'fleetgpu.passthrough.gpu_partition': dict(mdev, state='absent')},
        {'name': 'unload mbochs', 'ansible.builtin.command': {'argv': ['modprobe', '-r', 'mbochs']}, 'changed_when': False},
    ]
    for task in tasks:
        task['vars'] = {'ansible_pipelining': True}  # one SSH command per task
    doc = _play(host, tmp_path, tasks, 'hotplug-mdev')
    res = {task['name']: _result(doc, task['name']) for task in tasks}
    for name, task in res.items():
        assert task['status'] == 'ok', (name, task)
    print('live attach and detach of mdev %s (%s): %.0f s for the play; the live detach task %.0f s'
          % (uuid, MDEV_TYPE, time.monotonic() - started, _stamp(res['detached'], 'start') - _stamp(res['attached'], 'end')))
    views = {}
    for name in ('before', 'attached', 'detached'):
        info, _sep, xml = res[name]['result']['stdout'].partition(SPLIT)
        views[name] = (info.count('PCI device'), _live_mdevs(xml), sorted(_live_sources(xml)))

    assert res['create']['result']['changed'] is True, res['create']
    # attached: one more PCI function in QEMU, the mdev in the live XML; a second attach changes nothing
    assert res['attach']['result']['changed'] is True, res['attach']
    assert res['attach']['result']['live'] == [{'address': None, 'mdev': uuid, 'action': 'added'}], res['attach']
    again = res['attach again']['result']
    assert again['changed'] is False and again['live'] == [{'address': None, 'mdev': uuid, 'action': 'unchanged'}], again
    assert views['attached'][0] == views['before'][0] + 1 and views['attached'][1] == [uuid], views
    # detached once the guest released it: QEMU and the live XML are as before; the GPUs stay
    done = res['detach']['result']
    assert done['changed'] is True and done['unplug_pending'] is False, done
    assert done['live'] == [{'address': None, 'mdev': uuid, 'action': 'removed'}], done
    assert views['detached'] == views['before'] and views['before'][1] == [], views
    assert res['remove']['result']['changed'] is True, res['remove']
    # the persistent definition never had it; the mdev is gone from the host
    assert _live_mdevs(_virsh(host, 'dumpxml', '--inactive', DOMAIN)) == []
    assert uuid not in host.ssh(['ls', '/sys/bus/mdev/devices'], check=False).stdout
