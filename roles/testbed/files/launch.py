"""QEMU test hosts with a real (emulated) IOMMU and emulated GPUs, for end-to-end tests.

Every host boots the cached base image (``build_image.sh``) through a qcow2 overlay under
TCG, with SSH forwarded to a free 127.0.0.1 port, a serial console log, and a pidfile.
QEMU always dies with the run: in-process hosts are stopped by ``atexit`` and signal
handlers, detached hosts (``up``) by ``down`` / ``sweep``, and every QEMU also runs under
``timeout`` with a hard lifetime, so nothing survives a crashed caller for long.

Command line (``python3 roles/testbed/files/launch.py ...``)::

    launch.py up --name NAME --topology intel [--inventory FILE] [--kernel-args ARGS]
    launch.py up ... --reuse --json       # leave a running host as it is; print how to reach it
    launch.py down --name NAME [--json]   # stop one host, remove its overlay
    launch.py status --name NAME ...      # JSON: which of these hosts are running
    launch.py sweep                       # stop every host of the run directory
    launch.py ssh --name NAME -- CMD...   # run a command on a host
    launch.py list                        # hosts of the run directory
    launch.py topologies                  # the named topologies and their QEMU devices

Topologies (see ``TOPOLOGIES``): ``intel`` (with an SR-IOV capable NVMe controller at 03:00.0), ``amd``, ``noiommu`` and ``radeon`` (an
``intel`` host booted with the IOMMU on, where radeon is loaded on purpose after boot: its
probe of ``ati-vga`` never finishes under TCG and holds the device lock).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
#: The host-state script of ``TestHost.state()``: the repository's, read by its own tests only.
SNAPSHOT = HERE.parents[2] / 'molecule' / 'shared' / 'files' / 'snapshot.sh'
CACHE = Path(os.environ.get('FLEETGPU_TESTBED_CACHE', '/var/cache/fleetgpu-testbed'))
RUN_DIR = Path(os.environ.get('FLEETGPU_TESTBED_RUN', str(CACHE / 'run')))
MARKER = 'fleetgpu-testbed'
#: Hard lifetime of one QEMU process (seconds); a bound for the worst case only.
LIFETIME = int(os.environ.get('FLEETGPU_TESTBED_LIFETIME', '5400'))
SSH_WAIT = int(os.environ.get('FLEETGPU_TESTBED_SSH_WAIT', '300'))

# The emulated GPUs, the same on every topology:
#   00:01.0 1234:1111 std VGA, the boot GPU (bochs-drm, boot_vga=1)
#   01:00.0 1234:1111 secondary-vga behind root port 1, multifunction (same vendor:device!)
#   01:00.1 8086:293e ich9-intel-hda: the GPU's "HDMI audio", same IOMMU group as 01:00.0
#   02:00.0 1002:5159 ati-vga rv100 behind root port 2 (AMD vendor id; radeon kept away)
GPU_DEVICES = [
    '-vga', 'std',
    '-device', 'pcie-root-port,id=rp1,chassis=1',
    '-device', 'secondary-vga,bus=rp1,addr=0.0,multifunction=on',
    '-device', 'ich9-intel-hda,bus=rp1,addr=0.1',
    '-device', 'pcie-root-port,id=rp2,chassis=2',
    '-device', 'ati-vga,model=rv100,bus=rp2',
]

# An SR-IOV capable PCI device on the intel topology: QEMU's emulated NVMe controller, linked
# to an NVM subsystem (QEMU requires one for SR-IOV), with up to SRIOV_VFS virtual functions.
# It is NOT a GPU: the partition tests select it by its address. QEMU's constraints: each VF
# needs at least 2 flexible queues and 1 flexible interrupt (sriov_vq_flexible >= 2 * VFs,
# sriov_vi_flexible >= VFs), and the PF keeps at least 2 queues and 1 interrupt of its own
# (max_ioqpairs, default 64, and msix_qsize, default 65, stay above those). Its root port sits in
# slot 7 of the root bus, after every other device (QEMU places the virtio disk of -drive last,
# in the first free slot: 00:05.0), so it takes bus 03 and every other address (01:00.0, 01:00.1,
# 02:00.0, the network card 00:04.0, the disk 00:05.0) stays what it was.
#   03:00.0 1b36:0010 NVMe controller (PF), VFs at 03:00.1 ... 03:00.<SRIOV_VFS>
SRIOV_VFS = 4
SRIOV_PF = '0000:03:00.0'
SRIOV_DEVICES = [
    '-device', 'pcie-root-port,id=rp3,chassis=3,addr=0x7',
    '-device', 'nvme-subsys,id=sriovsubsys,nqn=fleetgpu-sriov',
    '-device', 'nvme,serial=fleetgpu-sriov,subsys=sriovsubsys,bus=rp3,sriov_max_vfs=%d,sriov_vq_flexible=%d,'
               'sriov_vi_flexible=%d' % (SRIOV_VFS, 2 * SRIOV_VFS, SRIOV_VFS),
]

# TCG cannot emulate VT-x: QEMU drops "vmx" from any Intel model ("TCG doesn't support
# requested feature: CPUID.01H:ECX.vmx"), but it does emulate AMD-V. An Intel test host
# therefore reports GenuineIntel with the svm flag: the hardware-virtualization check has a
# flag to see, and everything vendor-specific (intel_iommu=on, the DMAR IOMMU) stays Intel.
INTEL_CPU = 'Skylake-Client,svm=on'

TOPOLOGIES: Dict[str, Dict[str, object]] = {
    'intel': {
        'description': 'Intel CPU and Intel IOMMU with interrupt remapping; an SR-IOV NVMe controller (not a GPU) at 03:00.0',
        'machine': 'q35,kernel-irqchip=split',
        'cpu': INTEL_CPU,
        'iommu': ['-device', 'intel-iommu,intremap=on,caching-mode=on'],
        'kernel_args': None,
        'load_radeon': False,
        'sriov': True,
    },
    'amd': {
        'description': 'AMD CPU (svm) and AMD IOMMU with interrupt remapping',
        'machine': 'q35,kernel-irqchip=split',
        'cpu': 'EPYC',
        'iommu': ['-device', 'amd-iommu,intremap=on'],
        'kernel_args': None,
        'load_radeon': False,
    },
    'noiommu': {
        'description': 'Intel CPU, no IOMMU at all',
        'machine': 'q35',
        'cpu': INTEL_CPU,
        'iommu': [],
        'kernel_args': None,
        'load_radeon': False,
    },
    'radeon': {
        'description': 'intel, IOMMU on from boot (direct kernel), radeon loaded on purpose: its probe of 02:00.0 '
                       'waits for firmware holding the device lock',
        'machine': 'q35,kernel-irqchip=split',
        'cpu': INTEL_CPU,
        'iommu': ['-device', 'intel-iommu,intremap=on,caching-mode=on'],
        'kernel_args': 'intel_iommu=on',
        'load_radeon': True,
    },
}

# How long (s) radeon's probe waits for its firmware on the radeon topology.
RADEON_HOLD = 3600

SSH_OPTIONS = [
    '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR',
    '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes', '-o', 'ConnectTimeout=10',
    '-o', 'ServerAliveInterval=5', '-o', 'ServerAliveCountMax=6',
]


class TestbedError(RuntimeError):
    """A test host could not be built, started or reached."""


#: A host's name becomes a directory of the run directory and part of QEMU's process name.
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$')


def check_name(name: str) -> str:
    """The name, when it is one path component of letters, digits, '.', '_' and '-'."""
    if not NAME_RE.match(name):
        raise TestbedError('invalid test host name %r: 1 to 63 letters, digits, ".", "_" or "-", starting with a '
                           'letter or digit' % name)
    return name


def log(msg: str) -> None:
    sys.stderr.write('[launch %s] %s\n' % (time.strftime('%H:%M:%S'), msg))
    sys.stderr.flush()


def image_dir(build: bool = True) -> Path:
    """The cached base image directory; builds it first when ``build`` and it is missing.

    ``FLEETGPU_TESTBED_IMAGE`` names an image directory to use as it is (no build).
    """
    forced = os.environ.get('FLEETGPU_TESTBED_IMAGE')
    if forced:
        return Path(forced)
    cmd = [str(HERE / 'build_image.sh')] + ([] if build else ['--path'])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise TestbedError('image build failed (%s exited %d)' % (cmd[0], proc.returncode))
    path = Path(proc.stdout.strip().splitlines()[-1])
    if build and not (path / 'ready').exists():
        raise TestbedError('image directory %s is not ready' % path)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path('/proc/%d/cmdline' % pid).read_bytes().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        return ''


class TestHost:
    """One QEMU test host. ``start()`` boots it and waits for SSH; ``stop()`` always kills it."""

    def __init__(self, name: str, topology: str = 'intel', kernel_args: Optional[str] = None,
                 memory_mib: int = 2048, cpus: int = 2, run_dir: Optional[Path] = None) -> None:
        check_name(name)
        if topology not in TOPOLOGIES:
            raise TestbedError('unknown topology %r (known: %s)' % (topology, ', '.join(sorted(TOPOLOGIES))))
        self.name = name
        self.topology = topology
        spec = TOPOLOGIES[topology]
        self.kernel_args = kernel_args if kernel_args is not None else spec['kernel_args']
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.dir = (run_dir or RUN_DIR) / name
        self.port = 0
        self.pgid = 0
        self.image = Path()

    # -- paths -------------------------------------------------------------------------
    @property
    def key(self) -> Path:
        return self.image / 'id_ed25519'

    @property
    def serial_log(self) -> Path:
        return self.dir / 'serial.log'

    @property
    def state_file(self) -> Path:
        return self.dir / 'host.json'

    # -- life cycle ----------------------------------------------------------------------
    def qemu_command(self) -> List[str]:
        spec = TOPOLOGIES[self.topology]
        cmd = [
            'qemu-system-x86_64', '-name', '%s-%s' % (MARKER, self.name),
            '-accel', 'tcg', '-machine', str(spec['machine']), '-cpu', str(spec['cpu']),
            '-smp', str(self.cpus), '-m', str(self.memory_mib),
            '-display', 'none', '-serial', 'file:%s' % self.serial_log,
            '-monitor', 'unix:%s,server,nowait' % (self.dir / 'monitor.sock'),
            '-pidfile', str(self.dir / 'qemu.pid'),
        ]
        cmd += list(spec['iommu'])  # type: ignore[arg-type]
        cmd += GPU_DEVICES
        cmd += [
            '-drive', 'file=%s,format=qcow2,if=virtio,cache=unsafe' % (self.dir / 'overlay.qcow2'),
            '-netdev', 'user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22' % self.port,
            '-device', 'virtio-net-pci,netdev=n0',
        ]
        if spec.get('sriov'):
            cmd += SRIOV_DEVICES
        if self.kernel_args:
            # Direct kernel boot with extra arguments (the host's GRUB is bypassed).
            cmd += ['-kernel', str(self.image / 'vmlinuz'), '-initrd', str(self.image / 'initrd.img'),
                    '-append', 'root=/dev/vda1 rw console=ttyS0,115200n8 no_timer_check %s' % self.kernel_args]
        return cmd

    def start(self, wait: bool = True, ssh_wait: int = SSH_WAIT) -> 'TestHost':
        self.image = image_dir(build=True)
        if self.state_file.exists():
            stop_dir(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                        str(self.image / 'disk.raw'), str(self.dir / 'overlay.qcow2')],
                       check=True, timeout=60)
        for _attempt in range(3):
            self.port = free_port()
            cmd = ['timeout', '-s', 'KILL', str(LIFETIME)] + self.qemu_command()
            (self.dir / 'qemu.cmd').write_text(' '.join(cmd) + '\n')
            errlog = open(self.dir / 'qemu.stderr', 'w')
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
                                    start_new_session=True, close_fds=True)
            errlog.close()
            self.pgid = proc.pid
            self._write_state()
            _register(self)
            time.sleep(1.5)
            if proc.poll() is None:
                break
            err = (self.dir / 'qemu.stderr').read_text()
            if 'hostfwd' in err or 'forwarding' in err:
                log('%s: port %d taken, retrying' % (self.name, self.port))
                continue
            raise TestbedError('QEMU for %s exited at once: %s' % (self.name, err.strip()))
        else:
            raise TestbedError('QEMU for %s: no free port after 3 attempts' % self.name)
        log('%s: QEMU started (%s, ssh 127.0.0.1:%d, serial %s)' % (self.name, self.topology, self.port, self.serial_log))
        if wait:
            self.wait_ssh(ssh_wait)
        return self

    def _write_state(self) -> None:
        self.state_file.write_text(json.dumps({
            'name': self.name, 'topology': self.topology, 'port': self.port, 'pgid': self.pgid,
            'key': str(self.key), 'image': str(self.image), 'kernel_args': self.kernel_args,
            'serial_log': str(self.serial_log), 'started': time.time(),
        }, indent=2) + '\n')

    def alive(self) -> bool:
        return self.pgid > 0 and _pid_alive(self.pgid) and MARKER in _cmdline(self.pgid)

    def ssh_command(self, command: Sequence[str]) -> List[str]:
        return ['ssh', '-i', str(self.key), '-p', str(self.port)] + SSH_OPTIONS + ['root@127.0.0.1', '--'] + list(command)

    def ssh(self, command: Sequence[str], timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command on the host (argument list, quoted for the remote shell by the caller)."""
        proc = subprocess.run(self.ssh_command(command), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise TestbedError('%s: %s exited %d: %s' % (self.name, ' '.join(command), proc.returncode, detail))
        return proc

    def wait_ssh(self, timeout: int = SSH_WAIT) -> float:
        """Wait until SSH answers; retries connection failures only. Returns seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            if not self.alive():
                raise TestbedError('%s: QEMU died while booting; serial log tail:\n%s' % (self.name, self.serial_tail()))
            try:
                proc = subprocess.run(self.ssh_command(['true']), stdin=subprocess.DEVNULL,
                                      capture_output=True, text=True, timeout=30, check=False)
                if proc.returncode == 0:
                    break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise TestbedError('%s: no SSH after %d s; serial log tail:\n%s' % (self.name, timeout, self.serial_tail()))
            time.sleep(2)
        waited = time.monotonic() - t0
        log('%s: SSH up after %.0f s' % (self.name, waited))
        if TOPOLOGIES[self.topology]['load_radeon']:
            self.load_radeon()
        return waited

    def load_radeon(self) -> None:
        """Load radeon on purpose so that its probe of 02:00.0 holds the device lock.

        radeon's probe asks for its microcode (radeon/R100_cp.bin), which the image does not
        have. With the kernel's firmware sysfs fallback forced on, a long fallback timeout and
        udev's stub rule that refuses such requests at once masked (50-firmware.rules),
        request_firmware() waits inside the probe for a loader that never comes, the device
        lock held all the while: the same state as a probe that never finishes, but
        deterministic, and undone by release_radeon(). modprobe runs detached: it blocks too.
        """
        self.ssh(['sh', '-c', "'ln -sf /dev/null /etc/udev/rules.d/50-firmware.rules && udevadm control --reload && "
                  "echo 1 > /proc/sys/kernel/firmware_config/force_sysfs_fallback && "
                  "echo %d > /sys/class/firmware/timeout && "
                  "{ setsid nohup modprobe radeon >/dev/null 2>&1 < /dev/null & }'" % RADEON_HOLD], timeout=60)
        log('%s: radeon loading in the background (02:00.0 will be stuck)' % self.name)

    def release_radeon(self) -> None:
        """End the wait of radeon's probe (abort every pending firmware load)."""
        self.ssh(['sh', '-c', "'echo 0 > /proc/sys/kernel/firmware_config/force_sysfs_fallback; "
                  "for f in /sys/class/firmware/*/loading; do [ -e \"$f\" ] && echo -1 > \"$f\"; done; true'"],
                 timeout=60, check=False)

    def serial_tail(self, lines: int = 40) -> str:
        try:
            text = self.serial_log.read_text(errors='replace')
        except OSError:
            return '(no serial log)'
        return '\n'.join(text.splitlines()[-lines:])

    def state(self, extra: str = '') -> List[str]:
        """Every line of host state the main job may change, sorted: the lines of
        molecule/shared/files/snapshot.sh (command line, managed files, drivers), then ``extra``
        (more shell lines)."""
        script = SNAPSHOT.read_text() + '\n' + extra + '\n'
        proc = subprocess.run(self.ssh_command(['sh', '-s']), input=script, capture_output=True,
                              text=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise TestbedError('%s: reading the host state failed: %s' % (self.name, proc.stderr.strip()))
        return sorted(proc.stdout.splitlines())

    def inventory(self, group: str = 'testbed') -> str:
        return inventory_text([self], group)

    def write_inventory(self, path: Path, group: str = 'testbed') -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.inventory(group))

    def stop(self) -> None:
        stop_dir(self.dir)
        _unregister(self)

    def __enter__(self) -> 'TestHost':
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def inventory_text(hosts: Sequence[TestHost], group: str = 'testbed') -> str:
    lines = ['# Written by roles/testbed/files/launch.py: how to reach the running test hosts.',
             'all:', '  children:', '    %s:' % group, '      hosts:']
    for h in hosts:
        lines += [
            '        %s:' % h.name,
            '          ansible_host: 127.0.0.1',
            '          ansible_port: %d' % h.port,
            '          ansible_user: root',
            '          ansible_ssh_private_key_file: %s' % h.key,
            "          ansible_ssh_common_args: '%s'" % ' '.join(SSH_OPTIONS),
            '          ansible_python_interpreter: /usr/bin/python3',
            # one SSH round trip per module instead of three (copy, chmod, run): under TCG the
            # no-op converge of site.yml measured 39-42 s with it against 49-59 s without (bench/)
            '          ansible_pipelining: true',
            '          testbed_topology: %s' % h.topology,
        ]
    return '\n'.join(lines) + '\n'


def stop_dir(run: Path, grace: float = 10.0) -> bool:
    """Stop the QEMU recorded in a run directory (whole process group) and remove its overlay.

    Returns True when a live QEMU was found. Only processes whose command line carries the
    test-bed marker are signalled, so a recycled pid is never hit.
    """
    state = run / 'host.json'
    found = False
    try:
        info = json.loads(state.read_text())
        pgid = int(info.get('pgid', 0))
    except (OSError, ValueError):
        pgid = 0
    pids = [pgid] if pgid > 0 else []
    try:
        pids.append(int((run / 'qemu.pid').read_text().strip()))
    except (OSError, ValueError):
        pass
    for pid in pids:
        if not (_pid_alive(pid) and MARKER in _cmdline(pid)):
            continue
        found = True
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.2)
        if _pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    for name in ('overlay.qcow2', 'monitor.sock', 'host.json'):
        try:
            (run / name).unlink()
        except OSError:
            pass
    return found


def sweep(run_dir: Optional[Path] = None) -> int:
    """Stop every host of a run directory, then any stray QEMU carrying the marker."""
    base = run_dir or RUN_DIR
    n = 0
    if base.is_dir():
        for child in sorted(base.iterdir()):
            if child.is_dir() and stop_dir(child):
                n += 1
    # Last line of defence: marked QEMU processes whose run directory is gone.
    for proc_dir in Path('/proc').iterdir():
        if not proc_dir.name.isdigit():
            continue
        pid = int(proc_dir.name)
        cmd = _cmdline(pid)
        if cmd.startswith('qemu-system-x86_64') and ' -name %s-' % MARKER in cmd and str(base) in cmd:
            try:
                os.kill(pid, signal.SIGKILL)
                n += 1
            except ProcessLookupError:
                pass
    return n


# -- in-process clean-up: atexit and signals ----------------------------------------------
_LIVE: Dict[str, TestHost] = {}
_LOCK = threading.Lock()
_HANDLERS_SET = False


def _register(host: TestHost) -> None:
    global _HANDLERS_SET
    with _LOCK:
        _LIVE[str(host.dir)] = host
        if not _HANDLERS_SET:
            atexit.register(_stop_all)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                try:
                    signal.signal(sig, _on_signal)
                except ValueError:   # not the main thread
                    pass
            _HANDLERS_SET = True


def _unregister(host: TestHost) -> None:
    with _LOCK:
        _LIVE.pop(str(host.dir), None)


def _stop_all() -> None:
    for host in list(_LIVE.values()):
        try:
            host.stop()
        except OSError:
            pass


def _on_signal(signum: int, frame: object) -> None:
    _stop_all()
    raise SystemExit(128 + signum)


def _mem_available_mib() -> int:
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def parallel_slots(hosts: Sequence[TestHost], reserve_mib: int = 1024) -> int:
    """How many of these hosts fit in memory at once (guest RAM + QEMU overhead each)."""
    need = max(h.memory_mib for h in hosts) + 384
    return max(1, min(len(hosts), (_mem_available_mib() - reserve_mib) // need))


def start_many(hosts: Sequence[TestHost], ssh_wait: int = SSH_WAIT) -> None:
    """Start hosts in parallel, as many at a time as memory allows; if one fails, stop them all and raise."""
    image_dir(build=True)   # build once, before the threads
    errors: List[BaseException] = []
    slots = parallel_slots(hosts)
    if slots < len(hosts):
        log('memory for %d test host(s) at a time: starting %d in waves' % (slots, len(hosts)))

    def run(h: TestHost) -> None:
        try:
            h.start(wait=True, ssh_wait=ssh_wait)
        except (TestbedError, OSError, subprocess.SubprocessError) as exc:
            errors.append(exc)

    for first in range(0, len(hosts), slots):
        threads = [threading.Thread(target=run, args=(h,), daemon=True) for h in hosts[first:first + slots]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(ssh_wait + 120)
        if errors or any(t.is_alive() for t in threads):
            for h in hosts:
                h.stop()
            raise TestbedError('; '.join(str(e) for e in errors) or 'start timed out')


def detach(host: TestHost) -> None:
    """Keep a started host running after this process exits (``up``)."""
    _unregister(host)


def _load(name: str, run_dir: Path) -> TestHost:
    info = json.loads((run_dir / check_name(name) / 'host.json').read_text())
    h = TestHost(name, info['topology'], kernel_args=info.get('kernel_args'), run_dir=run_dir)
    h.port = int(info['port'])
    h.pgid = int(info['pgid'])
    h.image = Path(info['image'])
    return h


def running(name: str, run_dir: Path) -> Optional[TestHost]:
    """The host of this name when its QEMU is alive and it answers on SSH, else None."""
    if not (run_dir / check_name(name) / 'host.json').exists():
        return None
    try:
        host = _load(name, run_dir)
    except (OSError, ValueError, KeyError):
        return None
    if not host.alive():
        return None
    try:
        proc = subprocess.run(host.ssh_command(['true']), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return None
    return host if proc.returncode == 0 else None


def record(host: TestHost) -> Dict[str, object]:
    """How to reach a host: Molecule's instance-configuration keys plus the topology."""
    return {'instance': host.name, 'address': '127.0.0.1', 'port': host.port, 'user': 'root',
            'identity_file': str(host.key), 'topology': host.topology, 'ssh_common_args': ' '.join(SSH_OPTIONS)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--run-dir', type=Path, default=RUN_DIR)
    sub = ap.add_subparsers(dest='cmd', required=True)
    up = sub.add_parser('up', help='start one host, wait for SSH, leave it running')
    up.add_argument('--name', required=True)
    up.add_argument('--topology', default='intel', choices=sorted(TOPOLOGIES))
    up.add_argument('--kernel-args', default=None, help='boot the kernel directly with these extra arguments')
    up.add_argument('--memory', type=int, default=2048)
    up.add_argument('--inventory', type=Path, help='write an Ansible inventory for the host here')
    up.add_argument('--group', default='testbed')
    up.add_argument('--json', action='store_true', help='print the host record as JSON')
    up.add_argument('--reuse', action='store_true',
                    help='leave a host of this name that is running and answers on SSH as it is '
                         '(its record says "started": false)')
    down = sub.add_parser('down', help='stop one host')
    down.add_argument('--name', required=True)
    down.add_argument('--json', action='store_true', help='print whether a running host was stopped')
    status = sub.add_parser('status', help='print, as JSON, whether each named host is running')
    status.add_argument('--name', action='append', required=True)
    sub.add_parser('sweep', help='stop every host of the run directory')
    sub.add_parser('list', help='list the hosts of the run directory')
    sub.add_parser('topologies', help='print the named topologies')
    ssh = sub.add_parser('ssh', help='run a command on a host')
    ssh.add_argument('--name', required=True)
    ssh.add_argument('--timeout', type=int, default=300)
    ssh.add_argument('command', nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)

    try:
        if args.cmd == 'up':
            host = running(args.name, args.run_dir) if args.reuse else None
            if host is not None and host.topology != args.topology:
                raise TestbedError('%s is running with topology %s, not %s: stop it first (down)'
                                   % (args.name, host.topology, args.topology))
            started = host is None
            if host is None:
                host = TestHost(args.name, args.topology, kernel_args=args.kernel_args,
                                memory_mib=args.memory, run_dir=args.run_dir)
                host.start(wait=True)
            if args.inventory:
                host.write_inventory(args.inventory, args.group)
            detach(host)
            if args.json:
                print(json.dumps(dict(record(host), started=started)))
            return 0
        if args.cmd == 'down':
            run = args.run_dir / check_name(args.name)
            leftover = (run / 'overlay.qcow2').exists()
            found = stop_dir(run)
            if args.json:
                print(json.dumps({'instance': args.name, 'stopped': found, 'removed_overlay': leftover}))
            return 0
        if args.cmd == 'status':
            hosts = [(name, running(name, args.run_dir)) for name in args.name]
            print(json.dumps([dict(record(h), running=True) if h else
                              {'instance': name, 'running': False,
                               'leftover': (args.run_dir / name / 'overlay.qcow2').exists()}
                              for name, h in hosts]))
            return 0
        if args.cmd == 'sweep':
            n = sweep(args.run_dir)
            log('sweep: stopped %d QEMU process(es)' % n)
            return 0
        if args.cmd == 'list':
            if args.run_dir.is_dir():
                for child in sorted(args.run_dir.iterdir()):
                    if (child / 'host.json').exists():
                        h = _load(child.name, args.run_dir)
                        print('%-20s %-8s port %-6d %s' % (h.name, h.topology, h.port, 'running' if h.alive() else 'dead'))
            return 0
        if args.cmd == 'topologies':
            for name, spec in TOPOLOGIES.items():
                print('%-8s %s' % (name, spec['description']))
            return 0
        if args.cmd == 'ssh':
            h = _load(args.name, args.run_dir)
            cmd = [c for c in args.command if c != '--'] or ['true']
            try:
                proc = subprocess.run(h.ssh_command(cmd), timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                log('%s: %s did not finish within %d s' % (h.name, ' '.join(cmd), args.timeout))
                return 124
            return proc.returncode
    except TestbedError as exc:
        log('error: %s' % exc)
        return 1
    return 2


if __name__ == '__main__':
    sys.exit(main())
