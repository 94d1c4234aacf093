"""The SSH options the test hosts are reached with end a stalled connection on their own.

A host that goes down in the middle of a new SSH connection (the reboot poll of
ansible.builtin.reboot reaching sshd just before the shutdown) can leave the client waiting
for a key-exchange reply that never comes: QEMU's user-mode network keeps the host side of
the connection open and nothing resets it. Without keepalives OpenSSH waits for good, and so
does the reboot task. The launcher's inventories and every Molecule scenario therefore pass
ServerAliveInterval/ServerAliveCountMax, which OpenSSH also applies before login.

A loopback server that sends an SSH banner and then nothing plays that host.
"""
from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List

import pytest
import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which('ssh') is None, reason='needs the OpenSSH client')


@pytest.fixture()
def silent_server() -> Iterator[int]:
    """Accepts connections on 127.0.0.1, sends an SSH banner, then stays silent."""
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen(8)
    srv.settimeout(0.5)
    stop = threading.Event()
    held: List[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _peer = srv.accept()
            except OSError:
                continue
            conn.sendall(b'SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n')
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        srv.close()


def _ssh(port: int, options: List[str], limit: float) -> subprocess.CompletedProcess:
    cmd = ['ssh', '-p', str(port), '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no',
           '-o', 'UserKnownHostsFile=/dev/null', '-o', 'ConnectTimeout=5',
           # ssh takes the first value of an option: this one wins over the sets' LogLevel=ERROR.
           '-o', 'LogLevel=INFO'] + options + ['root@127.0.0.1', 'true']
    return subprocess.run(cmd, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL, check=False)


def _molecule_options(scenario: str) -> List[str]:
    doc = yaml.safe_load((REPO / 'molecule' / scenario / 'molecule.yml').read_text())
    opts = doc['driver'].get('ssh_connection_options')
    assert opts, 'molecule/%s/molecule.yml sets no driver.ssh_connection_options' % scenario
    return [word for opt in opts for word in shlex.split(opt)]


def test_without_keepalives_a_stalled_key_exchange_waits_for_good(silent_server):
    """The failure mode itself: with only ConnectTimeout, ssh is still waiting after 15 s."""
    with pytest.raises(subprocess.TimeoutExpired):
        _ssh(silent_server, [], limit=15)


def test_test_host_ssh_options_end_a_stalled_connection(silent_server):
    """The launcher's options and each Molecule scenario's, tried at the same time."""
    sources = {'launcher': list(launch.SSH_OPTIONS)}
    for scenario in sorted(p.name for p in (REPO / 'molecule').iterdir() if (p / 'molecule.yml').exists()):
        sources['molecule-' + scenario] = _molecule_options(scenario)
    # Keepalives that give up after 30 s end it in about 30-35 s; 120 s is far beyond that.
    with ThreadPoolExecutor(len(sources)) as pool:
        futures = {name: pool.submit(_ssh, silent_server, opts, 120) for name, opts in sources.items()}
        results = {name: f.result() for name, f in futures.items()}
    for name, proc in results.items():
        assert proc.returncode == 255, (name, proc.returncode, proc.stderr)
        assert 'timed out' in proc.stderr, (name, proc.stderr)


def test_reboot_tasks_are_bounded_by_a_task_timeout():
    """A hung reboot poll fails the task instead of hanging the play: both reboots of the role go
    through tasks/reboot.yml, whose reboot carries a task timeout, a connect timeout (a new
    connection per poll) and SSH keepalives (tests/integration/test_reboot_bounded.py runs it)."""
    for name in ('present.yml', 'absent.yml'):
        tasks = yaml.safe_load((REPO / 'roles' / 'vfio_host' / 'tasks' / name).read_text())
        includes = [t for t in tasks if t.get('ansible.builtin.include_tasks') == 'reboot.yml']
        assert len(includes) == 1, name
        assert not [t for t in tasks if 'ansible.builtin.reboot' in t], name
    reboot_tasks = yaml.safe_load((REPO / 'roles' / 'vfio_host' / 'tasks' / 'reboot.yml').read_text())
    # the drain comes first (tasks/drain.yml); the reboot is the one block
    [block] = [t for t in reboot_tasks if 'block' in t]
    assert 'ServerAliveInterval={{ vfio_host_reboot_keepalive }}' in block['vars']['ansible_ssh_extra_args']
    reboots = [t for t in block['block'] if 'ansible.builtin.reboot' in t]
    assert len(reboots) == 1
    task = reboots[0]
    assert 'vfio_host_reboot_timeout' in str(task.get('timeout', '')), task
    assert task['ansible.builtin.reboot']['reboot_timeout'] == '{{ vfio_host_reboot_timeout }}'
    assert task['ansible.builtin.reboot']['connect_timeout'] == '{{ vfio_host_reboot_connect_timeout }}'
    assert block['rescue'][0]['ansible.builtin.fail']['msg']
