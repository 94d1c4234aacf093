"""A loopback "host" that reboots the way a QEMU test host behind user-mode networking does.

Parts:

* a private OpenSSH server (Debian's own ``sshd``, unpacked by ``scripts/bootstrap.sh`` into
  ``.cache/sshd`` without installing the package, so no service of the machine is started)
  on 127.0.0.1, running as root in a mount namespace of its own where
  ``/proc/sys/kernel/random/boot_id`` is a file the test controls and every ``shutdown`` the
  reboot action could find is a stand-in that only asks the proxy to "reboot" the host.
  Nothing run through this server can reboot or shut down the machine: the fixture checks,
  over SSH, that each candidate ``shutdown`` is the stand-in before any test uses it;
* a TCP proxy in front of it that plays QEMU's user-mode network. When the stand-in
  ``shutdown`` runs, the proxy "reboots": every connection that is open at that moment is
  frozen (nothing more is forwarded either way and nothing is closed: slirp keeps the
  host side of a connection open and a rebooted guest never answers on it), new
  connections are refused while the host "boots", then the boot id changes and new
  connections reach sshd again. ``down_for=None`` keeps the host down for good.
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
SSHD_ROOT = REPO / '.cache' / 'sshd'

SSHD_CONFIG = '''\
Port {port}
ListenAddress 127.0.0.1
HostKey {base}/host_ed25519
PidFile {base}/sshd.pid
AuthorizedKeysFile {base}/authorized_keys
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
LogLevel ERROR
Subsystem sftp internal-sftp
'''

# The stand-in for shutdown(8): records the call and asks the proxy to reboot the host, then
# answers at once. It starts no background process: ansible.builtin.reboot runs the command on
# a pty (ssh -tt), and when that session ends the kernel hangs up every process still in it, so
# a delayed child could die before it asked (it did, under load). The proxy waits a moment
# before the "reboot" instead, as a real host's sshd lives a little past the command.
FAKE_SHUTDOWN = '''\
#!/bin/sh
# fleetgpu test stand-in: never shuts anything down
echo "$@" >> {base}/shutdown.calls
: > {base}/reboot.request
exit 0
'''

SHUTDOWN_CANDIDATES = ('/sbin/shutdown', '/bin/shutdown', '/usr/sbin/shutdown', '/usr/bin/shutdown',
                       '/usr/local/sbin/shutdown')


def sshd_available() -> Optional[str]:
    """Why the private sshd cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return 'needs root (mount namespace for the private sshd)'
    if not (SSHD_ROOT / 'usr' / 'sbin' / 'sshd').exists():
        return 'sshd is not unpacked in .cache/sshd (run scripts/bootstrap.sh)'
    for tool in ('unshare', 'ssh', 'ssh-keygen'):
        if subprocess.run(['which', tool], capture_output=True, check=False).returncode != 0:
            return 'needs %s' % tool
    return None


class RebootingHost:
    """sshd + proxy; ``port`` is where clients connect (the proxy)."""

    def __init__(self, base: Path, boot_seconds: float = 4.0, down_for: Optional[float] = 0.0) -> None:
        self.base = base
        self.boot_seconds = boot_seconds
        self.reply_seconds = 1.0
        self.down_forever = down_for is None
        self.sshd_port = 0
        self.port = 0
        self.boot_id = str(uuid.uuid4())
        self.reboots = 0
        self._sshd: Optional[subprocess.Popen] = None
        self._listener: Optional[socket.socket] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: List[Tuple[socket.socket, socket.socket]] = []
        self._frozen: List[Tuple[socket.socket, socket.socket]] = []
        self._generation = 0
        self._up = True
        self.key = base / 'id_ed25519'

    # -- set-up -----------------------------------------------------------------------------
    def start(self) -> 'RebootingHost':
        b = self.base
        b.mkdir(parents=True, exist_ok=True)
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', str(b / 'host_ed25519')], check=True)
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', str(self.key)], check=True)
        (b / 'authorized_keys').write_text((b / 'id_ed25519.pub').read_text())
        (b / 'boot_id').write_text(self.boot_id + '\n')
        fake = b / 'shutdown'
        fake.write_text(FAKE_SHUTDOWN.format(base=b))
        fake.chmod(0o755)
        self.sshd_port = _free_port()
        (b / 'sshd_config').write_text(SSHD_CONFIG.format(port=self.sshd_port, base=b))
        Path('/run/sshd').mkdir(mode=0o755, exist_ok=True)   # sshd's privilege separation directory
        # Every path a shutdown could be found at shows the stand-in inside the namespace
        # (bind mounts follow symlinks: /sbin/shutdown -> systemctl is covered through its target).
        binds = []
        for cand in SHUTDOWN_CANDIDATES:
            if os.path.lexists(cand):
                binds.append(os.path.realpath(cand))
        # sshd's privilege separation user, known only inside the namespace (no account is added).
        passwd = Path('/etc/passwd').read_text()
        if not any(line.startswith('sshd:') for line in passwd.splitlines()):
            passwd = passwd.rstrip('\n') + '\nsshd:x:64999:65534::/run/sshd:/usr/sbin/nologin\n'
        (b / 'passwd').write_text(passwd)
        script = ['set -e', 'mount --bind %s /proc/sys/kernel/random/boot_id' % (b / 'boot_id'),
                  'mount --bind %s /etc/passwd' % (b / 'passwd')]
        for target in sorted(set(binds)):
            script.append('mount --bind %s %s' % (fake, target))
        script.append('mount -t tmpfs tmpfs /usr/local/sbin && cp %s /usr/local/sbin/shutdown' % fake)
        script.append('exec %s -D -e -f %s' % (SSHD_ROOT / 'usr' / 'sbin' / 'sshd', b / 'sshd_config'))
        env = dict(os.environ)
        env['LD_LIBRARY_PATH'] = '%s:%s' % (SSHD_ROOT / 'usr' / 'lib' / 'x86_64-linux-gnu',
                                            SSHD_ROOT / 'lib' / 'x86_64-linux-gnu')
        log = open(b / 'sshd.log', 'w')
        self._sshd = subprocess.Popen(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', '\n'.join(script)],
                                      stdout=log, stderr=log, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(('127.0.0.1', self.sshd_port), timeout=1).close()
                break
            except OSError:
                if self._sshd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError('private sshd did not start: %s' % (b / 'sshd.log').read_text()) from None
                time.sleep(0.2)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept_loop, daemon=True).start()
        threading.Thread(target=self._watch_reboot, daemon=True).start()
        self._check_stand_ins()
        return self

    def ssh(self, command: str, timeout: int = 30) -> subprocess.CompletedProcess:
        return subprocess.run(['ssh', '-p', str(self.port), '-i', str(self.key), '-o', 'BatchMode=yes',
                               '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
                               '-o', 'LogLevel=ERROR', '-o', 'ControlMaster=no', 'root@127.0.0.1', command],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def _check_stand_ins(self) -> None:
        """Refuse to go on unless every shutdown reachable over this server is the stand-in."""
        want = (self.base / 'shutdown').read_text()
        for cand in SHUTDOWN_CANDIDATES:
            proc = self.ssh('test ! -e %s || cat %s' % (cand, cand))
            if proc.returncode != 0 or (proc.stdout and proc.stdout != want):
                self.stop()
                raise RuntimeError('%s is not the stand-in inside the private sshd; refusing to run a reboot' % cand)
        proc = self.ssh('cat /proc/sys/kernel/random/boot_id')
        if proc.stdout.strip() != self.boot_id:
            self.stop()
            raise RuntimeError('boot_id is not the test-controlled one: %r' % proc.stdout)

    # -- the proxy ---------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                client.close()   # a booting host: the connection is reset at once
                continue
            try:
                server = socket.create_connection(('127.0.0.1', self.sshd_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                gen = self._generation
                self._pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b, gen), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, gen: int) -> None:
        src.settimeout(0.2)
        while not self._stop.is_set():
            with self._lock:
                if gen != self._generation:
                    return   # frozen by a reboot: keep both sockets open, forward nothing
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b''
            with self._lock:
                if gen != self._generation:
                    return
            if not data:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def _watch_reboot(self) -> None:
        request = self.base / 'reboot.request'
        while not self._stop.is_set():
            if request.exists():
                request.unlink()
                time.sleep(self.reply_seconds)   # the command's reply goes back first
                with self._lock:
                    self._generation += 1
                    self._frozen.extend(self._pairs)
                    self._pairs = []
                    self._up = False
                self.reboots += 1
                if self.down_forever:
                    continue
                time.sleep(self.boot_seconds)
                self.boot_id = str(uuid.uuid4())
                (self.base / 'boot_id').write_text(self.boot_id + '\n')
                with self._lock:
                    self._up = True
            time.sleep(0.1)

    def shutdown_calls(self) -> List[str]:
        try:
            return (self.base / 'shutdown.calls').read_text().splitlines()
        except OSError:
            return []

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for pair in self._pairs + self._frozen:
                for s in pair:
                    s.close()
        if self._sshd is not None and self._sshd.poll() is None:
            os.killpg(self._sshd.pid, 15)
            try:
                self._sshd.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._sshd.pid, 9)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])
