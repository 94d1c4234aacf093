"""A private libvirtd (qemu driver) for the integration tests.

The daemon runs as root in its own mount namespace: ``/etc/libvirt``,
``/run/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt`` and
``/var/cache/libvirt`` are bind mounts of directories under one temporary
base, so the machine's own libvirt configuration and state are never touched.
Its sockets live in ``<base>/sock`` (outside the bind mounts), and clients
reach it with ``qemu:///system?socket=<base>/sock/libvirt-sock``.

Only the empty mount points are created on the real file system.  ``stop()``
destroys and undefines every domain it finds, stops the daemon and kills any
QEMU process it started, so nothing is left running.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

MOUNTS = {
    'etc': '/etc/libvirt',
    'run': '/run/libvirt',
    'lib': '/var/lib/libvirt',
    'log': '/var/log/libvirt',
    'cache': '/var/cache/libvirt',
}

LIBVIRTD_CONF = '''\
unix_sock_dir = "{sock}"
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:{base}/libvirtd.log"
'''

# The daemon is not allowed to touch cgroups, device namespaces or labels of the
# test machine; QEMU's console output goes to a file, so virtlogd is not needed.
QEMU_CONF = '''\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
'''

# A small TCG domain: no disks, no network, boots nowhere and idles.
DOMAIN_XML = '''\
<domain type="qemu">
  <name>{name}</name>
  <memory unit="MiB">64</memory>
  <vcpu>1</vcpu>
  <os><type arch="x86_64" machine="q35">hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>{emulator}</emulator>
    <controller type="pci" model="pcie-root"/>
    <graphics type="vnc" port="-1" listen="127.0.0.1"/>
  </devices>
</domain>
'''


class LibvirtdError(RuntimeError):
    pass


def available() -> str | None:
    """None when a private libvirtd can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return 'the private libvirtd needs root'
    for tool in ('libvirtd', 'unshare', 'mount'):
        if not shutil.which(tool, path=os.environ.get('PATH', '') + ':/usr/sbin:/sbin'):
            return '%s is not installed (scripts/bootstrap.sh installs it)' % tool
    if not emulator():
        return 'qemu-system-x86_64 is not installed'
    return None


def emulator() -> str | None:
    return shutil.which('qemu-system-x86_64', path='/usr/bin:/usr/local/bin')


def domain_xml(name: str) -> str:
    return DOMAIN_XML.format(name=name, emulator=emulator())


class PrivateLibvirtd:
    """Start / stop one private libvirtd; ``uri`` is how to reach it."""

    def __init__(self, base: str | None = None) -> None:
        self.base = Path(base or tempfile.mkdtemp(prefix='fleetgpu-libvirtd-'))
        self.sock_dir = self.base / 'sock'
        self.socket = self.sock_dir / 'libvirt-sock'
        self.uri = 'qemu:///system?socket=%s' % self.socket
        self.proc: subprocess.Popen | None = None

    # ----------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60.0) -> 'PrivateLibvirtd':
        reason = available()
        if reason:
            raise LibvirtdError(reason)
        for sub in list(MOUNTS) + ['sock']:
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for target in MOUNTS.values():
            os.makedirs(target, exist_ok=True)
        (self.base / 'etc' / 'libvirtd.conf').write_text(LIBVIRTD_CONF.format(sock=self.sock_dir, base=self.base))
        (self.base / 'etc' / 'qemu.conf').write_text(QEMU_CONF)
        binds = ' && '.join('mount --bind %s %s' % (self.base / sub, target) for sub, target in MOUNTS.items())
        binds += self._account_binds()
        script = '%s && exec libvirtd --config %s --pid-file %s' % (
            binds, self.base / 'etc' / 'libvirtd.conf', self.base / 'libvirtd.pid')
        log = open(self.base / 'stderr.log', 'ab')
        try:
            self.proc = subprocess.Popen(
                ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = 'libvirtd exited with %s: %s' % (self.proc.returncode, self.log_tail())
                self.cleanup()
                raise LibvirtdError(msg)
            if self.socket.exists() and self._answers():
                return self
            time.sleep(0.2)
        msg = 'libvirtd did not answer on %s within %ss: %s' % (self.socket, timeout, self.log_tail())
        self.cleanup()
        raise LibvirtdError(msg)

    def _account_binds(self) -> str:
        """libvirtd looks up its built-in QEMU user and group (libvirt-qemu, kvm) before it
        reads qemu.conf.  When the machine lacks them, the namespace gets copies of
        /etc/passwd and /etc/group that have them; the real files are never changed."""
        extra = ''
        wanted = {
            'passwd': ['libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin'],
            'group': ['libvirt-qemu:x:64055:', 'kvm:x:64056:'],
        }
        for name, entries in wanted.items():
            real = Path('/etc') / name
            text = real.read_text()
            names = {line.split(':', 1)[0] for line in text.splitlines()}
            missing = [e for e in entries if e.split(':', 1)[0] not in names]
            if not missing:
                continue
            copy = self.base / name
            copy.write_text(text.rstrip('\n') + '\n' + '\n'.join(missing) + '\n')
            extra += ' && mount --bind %s %s' % (copy, real)
        return extra

    def _answers(self) -> bool:
        import libvirt
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return False
        conn.close()
        return True

    def log_tail(self, lines: int = 20) -> str:
        text = ''
        for name in ('stderr.log', 'libvirtd.log'):
            path = self.base / name
            if path.exists():
                text += path.read_text(errors='replace')
        return '\n'.join(text.splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Remove every domain, stop the daemon, kill leftover QEMU processes."""
        if self.running:
            try:
                self.clear_domains()
            finally:
                self._terminate()
        self._kill_qemu()

    def pause(self) -> None:
        """Stop the daemon but keep its state (for 'libvirtd stopped' tests)."""
        self._terminate()

    def resume(self, timeout: float = 60.0) -> None:
        self.start(timeout)

    def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def _kill_qemu(self) -> None:
        qemu_run = self.base / 'run' / 'qemu'
        for pidfile in qemu_run.glob('*.pid') if qemu_run.is_dir() else []:
            try:
                pid = int(pidfile.read_text().strip())
                os.kill(pid, signal.SIGKILL)
            except (ValueError, OSError):
                pass

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------- domains
    def connect(self):
        import libvirt
        return libvirt.open(self.uri)

    def define(self, name: str, xml: str | None = None) -> None:
        conn = self.connect()
        try:
            conn.defineXML(xml or domain_xml(name))
        finally:
            conn.close()

    def domain_xml(self, name: str, inactive: bool = True) -> str:
        import libvirt
        conn = self.connect()
        try:
            flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
            return conn.lookupByName(name).XMLDesc(flags)
        finally:
            conn.close()

    def clear_domains(self) -> None:
        import libvirt
        conn = self.connect()
        try:
            for dom in conn.listAllDomains():
                if dom.isActive():
                    try:
                        dom.destroy()
                    except libvirt.libvirtError:
                        pass
                if dom.isPersistent():
                    dom.undefine()
        finally:
            conn.close()
