"""The role's reboot returns once the host is back, and fails clearly when it is not.

A host behind a NAT that never resets a connection (QEMU's user network, and many real
firewalls) keeps the TCP connection of an SSH ControlPersist master "open" across the
reboot. ansible.builtin.reboot, as configured by default, polls the new boot id through that
master: with Ansible's default SSH arguments (ControlPersist, no keepalives) the poll waits
for good although the host answers new connections again within seconds. The first test
reproduces that with a private sshd behind a proxy that freezes open connections when the
host "reboots" (tests/integration/sshhost.py); the second proves that the role's reboot
(roles/vfio_host/tasks/reboot.yml) returns as soon as the host is back; the third that a host
that never comes back fails with a message that says so, within the role's time-out.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import playbook_env, tool

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sshhost  # noqa: E402

_WHY_NOT = sshhost.sshd_available()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or '')


def _inventory(tmp: Path, host: sshhost.RebootingHost) -> Path:
    inv = tmp / 'inventory.yml'
    inv.write_text(
        'all:\n  hosts:\n    rebooting:\n'
        '      ansible_connection: ssh\n'
        '      ansible_host: 127.0.0.1\n'
        '      ansible_port: %d\n'
        '      ansible_user: root\n'
        '      ansible_ssh_private_key_file: %s\n'
        '      ansible_python_interpreter: /usr/bin/python3\n'
        # Ansible's own default SSH arguments: a ControlPersist master, no keepalives.
        "      ansible_ssh_args: '-C -o ControlMaster=auto -o ControlPersist=60s'\n"
        "      ansible_ssh_common_args: '-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no'\n"
        % (host.port, host.key))
    return inv


def _run(installed_collection: Path, tmp: Path, host: sshhost.RebootingHost, tasks: str,
         timeout: int = 300, verbose: bool = False) -> subprocess.CompletedProcess:
    play = tmp / 'play.yml'
    play.write_text('- hosts: rebooting\n  gather_facts: false\n  tasks:\n'
                    '    - name: Open the SSH connection (its ControlPersist master stays)\n'
                    '      ansible.builtin.command: cat /proc/sys/kernel/random/boot_id\n'
                    '      changed_when: false\n' + tasks)
    env = playbook_env(installed_collection, {'ANSIBLE_SSH_CONTROL_PATH_DIR': str(tmp / 'cp'),
                                              'ANSIBLE_HOST_KEY_CHECKING': 'False',
                                              'ANSIBLE_PIPELINING': 'True'})
    return subprocess.run([tool('ansible-playbook'), '-i', str(_inventory(tmp, host)), str(play)] + (['-vvv'] if verbose else []),
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=str(tmp), check=False)


@pytest.fixture()
def rebooting_host(tmp_path: Path) -> Iterator[sshhost.RebootingHost]:
    host = sshhost.RebootingHost(tmp_path / 'host', boot_seconds=3).start()
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture()
def dead_host(tmp_path: Path) -> Iterator[sshhost.RebootingHost]:
    host = sshhost.RebootingHost(tmp_path / 'host', down_for=None).start()
    try:
        yield host
    finally:
        host.stop()


def test_default_reboot_poll_outlives_the_hosts_return(installed_collection: Path, tmp_path: Path,
                                                       rebooting_host: sshhost.RebootingHost) -> None:
    """The cause: ansible.builtin.reboot without connect_timeout rides the stale master.

    The playbook runs in the background; once the host has rebooted and answers new connections
    with its new boot id, the reboot task is still waiting well after that (the role's reboot
    returns within seconds of the host's return, see the next test). No fixed task time-out:
    the test waits for the host, not for a clock.
    """
    play = tmp_path / 'play.yml'
    play.write_text('- hosts: rebooting\n  gather_facts: false\n  tasks:\n'
                    '    - name: Open the SSH connection (its ControlPersist master stays)\n'
                    '      ansible.builtin.command: cat /proc/sys/kernel/random/boot_id\n'
                    '      changed_when: false\n'
                    '    - name: Reboot as ansible.builtin.reboot does by default\n'
                    '      ansible.builtin.reboot:\n'
                    '        reboot_timeout: 600\n')
    env = playbook_env(installed_collection, {'ANSIBLE_SSH_CONTROL_PATH_DIR': str(tmp_path / 'cp'),
                                              'ANSIBLE_HOST_KEY_CHECKING': 'False',
                                              'ANSIBLE_PIPELINING': 'True'})
    first_boot = rebooting_host.boot_id
    log_path = tmp_path / 'play.log'
    log = open(log_path, 'w')
    proc = subprocess.Popen([tool('ansible-playbook'), '-i', str(_inventory(tmp_path, rebooting_host)), str(play)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while rebooting_host.boot_id == first_boot and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
        why = 'reboots=%d shutdown calls=%r\n%s' % (
            rebooting_host.reboots, rebooting_host.shutdown_calls(), log_path.read_text())
        assert rebooting_host.reboots == 1, why
        # The host is back: a new connection gets the new boot id at once ...
        now = rebooting_host.ssh('cat /proc/sys/kernel/random/boot_id')
        assert now.stdout.strip() == rebooting_host.boot_id != first_boot, now.stderr
        # ... and 40 s later the reboot task is still waiting on the connection from before.
        time.sleep(40)
        assert proc.poll() is None, log_path.read_text()
        assert 'rebooting                  : ok=' not in log_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log.close()


def test_role_reboot_returns_once_the_host_is_back(installed_collection: Path, tmp_path: Path,
                                                   rebooting_host: sshhost.RebootingHost) -> None:
    first_boot = rebooting_host.boot_id
    proc = _run(installed_collection, tmp_path, rebooting_host,
                '    - name: The role\'s reboot\n'
                '      ansible.builtin.include_role:\n'
                '        name: fleetgpu.passthrough.vfio_host\n'
                '        tasks_from: reboot.yml\n'
                '      vars:\n'
                '        vfio_host_reboot_timeout: 120\n'
                '        __vfio_host_reboot_msg: test reboot\n'
                '    - name: Read the boot id after the reboot\n'
                '      ansible.builtin.command: cat /proc/sys/kernel/random/boot_id\n'
                '      changed_when: false\n'
                '      register: after\n'
                '    - name: Show it\n'
                '      ansible.builtin.debug:\n'
                '        msg: "boot id after: {{ after.stdout }} rebooted={{ __vfio_host_rebooted | default(false) }}'
                ' stopped={{ vfio_host_vms_stopped | default(\'unset\') }}"\n',
                timeout=240, verbose=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert rebooting_host.reboots == 1
    assert rebooting_host.shutdown_calls() and 'test reboot' in rebooting_host.shutdown_calls()[0]
    assert rebooting_host.boot_id != first_boot
    # the drain before the reboot read libvirt there (none answers): no VM to stop, nothing refused
    assert 'boot id after: %s rebooted=True stopped=[]' % rebooting_host.boot_id in out, out
    # Every SSH command of the reboot (the shutdown and each poll) carries keepalives.
    reboot_part = out[out.index('Start the reboot on a fresh SSH connection'):out.index('Remember that the host rebooted')]
    ssh_lines = [line for line in reboot_part.splitlines() if 'SSH: EXEC ssh' in line]
    assert ssh_lines, reboot_part
    assert all('ServerAliveInterval=5' in line for line in ssh_lines), ssh_lines


def test_role_reboot_of_a_host_that_never_returns_fails_clearly(installed_collection: Path, tmp_path: Path,
                                                                dead_host: sshhost.RebootingHost) -> None:
    """The host takes the shutdown and never answers again: the role fails, naming the time-out."""
    tasks = ('    - name: The role\'s reboot\n'
             '      ansible.builtin.include_role:\n'
             '        name: fleetgpu.passthrough.vfio_host\n'
             '        tasks_from: reboot.yml\n'
             '      vars:\n'
             '        vfio_host_reboot_timeout: 20\n'
             '        vfio_host_reboot_connect_timeout: 5\n'
             '        __vfio_host_reboot_msg: test reboot\n')
    proc = _run(installed_collection, tmp_path, dead_host, tasks, timeout=240, verbose=True)
    out = proc.stdout + proc.stderr
    why = 'reboots=%d shutdown calls=%r\n%s' % (dead_host.reboots, dead_host.shutdown_calls(), out)
    assert proc.returncode != 0, why
    assert dead_host.reboots == 1 and len(dead_host.shutdown_calls()) == 1, why
    assert 'rebooting did not come back from its reboot within 20 s (vfio_host_reboot_timeout)' in out, why
    assert 'Traceback' not in out
