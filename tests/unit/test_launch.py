"""The test-host launcher's pure parts: QEMU command lines, inventories, memory-bounded starts."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402


def _host(name='h1', topology='intel', memory=2048, tmp=Path('/nonexistent')):
    return launch.TestHost(name, topology, memory_mib=memory, run_dir=tmp)


@pytest.mark.parametrize('topology,iommu,cpu', [
    ('intel', 'intel-iommu,intremap=on,caching-mode=on', 'Skylake-Client,svm=on'),
    ('amd', 'amd-iommu,intremap=on', 'EPYC'),
    ('noiommu', None, 'Skylake-Client,svm=on'),
])
def test_qemu_command_matches_the_topology(topology, iommu, cpu):
    cmd = _host(topology=topology).qemu_command()
    assert cmd[cmd.index('-accel') + 1] == 'tcg'
    assert cmd[cmd.index('-cpu') + 1] == cpu
    devices = [cmd[i + 1] for i, word in enumerate(cmd) if word == '-device']
    iommus = [d for d in devices if 'iommu' in d]
    assert iommus == ([iommu] if iommu else [])
    # The GPUs of every topology: boot VGA, discrete VGA + audio, ati-vga behind root ports.
    assert any(d.startswith('ati-vga') for d in devices)
    assert any(d.startswith('ich9-intel-hda') for d in devices)
    # Boots through the image's own GRUB: no direct kernel unless kernel_args are given.
    assert '-kernel' not in cmd
    netdev = cmd[cmd.index('-netdev') + 1]
    assert 'hostfwd=tcp:127.0.0.1:' in netdev  # loopback only


def test_direct_kernel_boot_adds_no_timer_check_and_the_arguments():
    cmd = _host(topology='radeon').qemu_command()
    append = cmd[cmd.index('-append') + 1].split()
    assert 'no_timer_check' in append and 'intel_iommu=on' in append


def test_unknown_topology_is_refused_by_name():
    with pytest.raises(launch.TestbedError, match="unknown topology 'sparc'"):
        launch.TestHost('x', 'sparc')


def test_inventory_carries_keepalives_and_loopback_only():
    h = _host()
    h.port = 40022
    text = launch.inventory_text([h], group='gpu_hosts')
    assert 'ansible_host: 127.0.0.1' in text and 'ansible_port: 40022' in text
    line = [ln for ln in text.splitlines() if 'ansible_ssh_common_args' in ln][0]
    words = shlex.split(line.split(':', 1)[1].strip().strip("'"))
    assert 'ServerAliveInterval=5' in words and 'ServerAliveCountMax=6' in words


def test_inventory_turns_pipelining_on():
    h = _host()
    h.port = 40022
    doc = yaml.safe_load(launch.inventory_text([h], group='gpu_hosts'))
    hostvars = doc['all']['children']['gpu_hosts']['hosts'][h.name]
    assert hostvars['ansible_pipelining'] is True
    assert hostvars['ansible_user'] == 'root'


@pytest.mark.parametrize('available,count,expected', [
    (24000, 2, 2),      # plenty: all at once
    (24000, 20, 9),     # (24000 - 1024) // (2048 + 384)
    (4000, 3, 1),       # one at a time
    (1000, 2, 1),       # never zero
    (0, 2, 1),          # meminfo unreadable
])
def test_parallel_slots_follow_available_memory(monkeypatch, available, count, expected):
    monkeypatch.setattr(launch, '_mem_available_mib', lambda: available)
    hosts = [_host('h%d' % i) for i in range(count)]
    assert launch.parallel_slots(hosts) == expected


def test_start_many_starts_in_waves_and_stops_all_on_failure(monkeypatch):
    monkeypatch.setattr(launch, 'image_dir', lambda build=True: Path('/nonexistent'))
    monkeypatch.setattr(launch, '_mem_available_mib', lambda: 1024 + 2 * (2048 + 384))
    running, peak, started, stopped = [0], [0], [], []

    class Fake(launch.TestHost):
        def start(self, wait=True, ssh_wait=0):
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            started.append(self.name)
            time.sleep(0.05)
            running[0] -= 1
            if self.name == 'h3':
                raise launch.TestbedError('h3: QEMU exited at once')
            return self

        def stop(self):
            stopped.append(self.name)

    hosts = [Fake('h%d' % i, 'intel') for i in range(5)]
    with pytest.raises(launch.TestbedError, match='h3'):
        launch.start_many(hosts)
    assert peak[0] <= 2
    assert sorted(started) == ['h0', 'h1', 'h2', 'h3']
    assert 'h4' not in started            # the wave after the failure never starts
    assert sorted(stopped) == ['h0', 'h1', 'h2', 'h3', 'h4']


def _main_json(capsys, argv):
    rc = launch.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_status_reports_missing_and_dead_hosts_as_not_running(tmp_path, capsys):
    # A host whose recorded process is alive but is not a test-host QEMU (this test's own pid)
    # is not running: a recycled pid is never taken for a test host.
    stale = tmp_path / 'stale'
    stale.mkdir()
    (stale / 'host.json').write_text('{"topology": "amd", "port": 40022, "pgid": %d, "image": "/x"}' % launch.os.getpid())
    rc, out, err = _main_json(capsys, ['--run-dir', str(tmp_path), 'status', '--name', 'absent', '--name', 'stale'])
    assert rc == 0 and 'error' not in err
    assert launch.json.loads(out) == [{'instance': 'absent', 'running': False, 'leftover': False},
                                      {'instance': 'stale', 'running': False, 'leftover': False}]


def test_down_json_says_nothing_was_stopped_and_drops_the_overlay(tmp_path, capsys):
    run = tmp_path / 'h1'
    run.mkdir()
    (run / 'overlay.qcow2').write_text('x')
    (run / 'serial.log').write_text('kept')
    rc, out, err = _main_json(capsys, ['--run-dir', str(tmp_path), 'down', '--json', '--name', 'h1'])
    assert rc == 0 and 'error' not in err
    assert launch.json.loads(out) == {'instance': 'h1', 'stopped': False, 'removed_overlay': True}
    assert not (run / 'overlay.qcow2').exists() and (run / 'serial.log').read_text() == 'kept'


def test_up_reuse_leaves_a_running_host_alone(tmp_path, capsys, monkeypatch):
    host = _host('h1', 'amd', tmp=tmp_path)
    host.port, host.image = 40100, Path('/img')
    monkeypatch.setattr(launch, 'running', lambda name, run_dir: host if name == 'h1' else None)

    def no_start(self, *a, **k):
        raise AssertionError('a running host was started again')
    monkeypatch.setattr(launch.TestHost, 'start', no_start)
    rc, out, err = _main_json(capsys, ['--run-dir', str(tmp_path), 'up', '--reuse', '--json', '--name', 'h1',
                                       '--topology', 'amd'])
    assert rc == 0 and 'error' not in err
    assert launch.json.loads(out) == {'instance': 'h1', 'address': '127.0.0.1', 'port': 40100, 'user': 'root',
                                      'identity_file': '/img/id_ed25519', 'topology': 'amd', 'started': False,
                                      'ssh_common_args': ' '.join(launch.SSH_OPTIONS)}


def test_up_reuse_refuses_a_running_host_of_another_topology(tmp_path, capsys, monkeypatch):
    host = _host('h1', 'amd', tmp=tmp_path)
    monkeypatch.setattr(launch, 'running', lambda name, run_dir: host)
    monkeypatch.setattr(launch.TestHost, 'start', lambda self, *a, **k: pytest.fail('started'))
    rc, out, err = _main_json(capsys, ['--run-dir', str(tmp_path), 'up', '--reuse', '--json', '--name', 'h1',
                                       '--topology', 'intel'])
    assert rc == 1 and out == ''
    assert 'h1 is running with topology amd, not intel' in err


@pytest.mark.parametrize('name', ['../h1', '..', 'a/b', '-x', '', 'x' * 64, 'h 1'])
@pytest.mark.parametrize('command', [['status', '--name'], ['down', '--json', '--name'],
                                     ['up', '--reuse', '--json', '--name'], ['ssh', '--name']])
def test_a_name_that_is_not_one_plain_path_component_is_refused(tmp_path, capsys, name, command):
    # a name is a directory of the run directory: "../h1" must not reach (or remove) anything outside it
    outside = tmp_path / 'h1'
    outside.mkdir()
    (outside / 'overlay.qcow2').write_text('keep')
    run = tmp_path / 'run'
    rc, out, err = _main_json(capsys, ['--run-dir', str(run), *command[:-1], '%s=%s' % (command[-1], name)])
    assert rc == 1 and out == ''
    assert 'invalid test host name %r' % name in err
    assert (outside / 'overlay.qcow2').read_text() == 'keep' and not run.exists()


def test_status_names_the_overlay_a_dead_host_left(tmp_path, capsys):
    (tmp_path / 'h1').mkdir()
    (tmp_path / 'h1' / 'overlay.qcow2').write_text('x')
    rc, out, _err = _main_json(capsys, ['--run-dir', str(tmp_path), 'status', '--name', 'h1'])
    assert rc == 0 and launch.json.loads(out) == [{'instance': 'h1', 'running': False, 'leftover': True}]


def test_intel_topology_has_an_sriov_nvme_controller_after_the_other_devices():
    cmd = _host(topology='intel').qemu_command()
    devices = [cmd[i + 1] for i, word in enumerate(cmd) if word == '-device']
    nvme = [d for d in devices if d.startswith('nvme,')]
    assert len(nvme) == 1
    props = dict(p.split('=', 1) for p in nvme[0].split(',')[1:])
    vfs = int(props['sriov_max_vfs'])
    assert vfs == launch.SRIOV_VFS > 1
    # QEMU 7.2's constraints: a subsystem, >= 2 flexible queues and >= 1 interrupt per VF.
    assert props['subsys'] in [d.split('id=')[1].split(',')[0] for d in devices if d.startswith('nvme-subsys,')]
    assert int(props['sriov_vq_flexible']) >= 2 * vfs and int(props['sriov_vi_flexible']) >= vfs
    # Its root port sits in slot 7, after every other device of the root bus (QEMU gives the
    # -drive disk the first free slot, 00:05.0, at the end): the GPUs keep buses 01 and 02, the
    # network card and disk keep 00:04.0 and 00:05.0, and the controller gets bus 03.
    ports = [d for d in devices if d.startswith('pcie-root-port')]
    assert ports[-1] == 'pcie-root-port,id=%s,chassis=3,addr=0x7' % props['bus']
    assert all('addr=' not in p for p in ports[:-1])
    assert devices.index(ports[-1]) > devices.index('virtio-net-pci,netdev=n0')
    assert launch.SRIOV_PF == '0000:03:00.0'


@pytest.mark.parametrize('topology', ['amd', 'noiommu', 'radeon'])
def test_other_topologies_have_no_sriov_device(topology):
    cmd = _host(topology=topology).qemu_command()
    assert not [w for w in cmd if w.startswith(('nvme', 'nvme-subsys'))]
