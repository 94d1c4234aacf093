"""Runtime work on real kernels (QEMU test hosts), through ansible-playbook over SSH.

* ``intel`` host, before any reboot or persistent change: vfio_bind moves the discrete GPU's
  whole IOMMU group (01:00.0 display + 01:00.1 HDMI audio) to vfio-pci, a second run is no
  change, and ``state: absent`` gives both functions back to their drivers; the boot GPU
  with the same vendor:device keeps its driver throughout. After the give-back, gpu_quarantine
  finds both functions healthy, with the reset methods the kernel lists for them.
* ``radeon`` host: radeon is loaded on purpose and its probe of the ati-vga (02:00.0) waits
  for firmware that never comes (firmware sysfs fallback forced on), holding the device lock,
  so reading the device's driver_override blocks in the kernel. gpu_facts and vfio_bind must
  report that device as stuck within their time bound instead of hanging the play.

Run by tests/testbed/e2e.sh (needs root, qemu and the test-host image, which it builds).
Each play runs under a subprocess timeout: a hang fails the test instead of the whole run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from conftest import REPO, playbook_env, playbook_json, tool

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402

GPU, AUDIO, AMD_GPU, BOOT_GPU = '0000:01:00.0', '0000:01:00.1', '0000:02:00.0', '0000:00:01.0'
VENDORS = {GPU: '1234', AUDIO: '8086'}   # QEMU's secondary-vga, its ich9-intel-hda
PLAY_TIMEOUT = 600

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='QEMU test hosts need root'),
    pytest.mark.skipif(not (REPO / '.cache' / 'collections').exists() and not os.environ.get('CI'),
                       reason='collection not installed (run scripts/install-collection.sh)'),
]


# Started by the session fixture ``testbed_hosts`` (tests/conftest.py) together with the hosts
# of the other runtime modules; the intel host is used again by test_awx_runner.py.
TESTBED_HOSTS = ('intel', 'radeon')


@pytest.fixture(scope='module')
def hosts(testbed_hosts: Dict[str, launch.TestHost]) -> Iterator[Dict[str, launch.TestHost]]:
    """The intel host and the radeon host; the radeon one is stopped when this module is done."""
    yield testbed_hosts
    testbed_hosts['radeon'].stop()


def _play(host: launch.TestHost, tmp_path: Path, tasks: List[dict], name: str = 'play') -> dict:
    book = tmp_path / ('%s.yml' % name)
    book.write_text(json.dumps([{'name': name, 'hosts': 'gpu_hosts', 'gather_facts': False, 'tasks': tasks}]))
    return playbook_json(_playbook(host, tmp_path, book, name=name))


def _playbook(host: launch.TestHost, tmp_path: Path, book: Path, extra_vars: Optional[dict] = None,
              args: Sequence[str] = (), name: str = 'play') -> subprocess.CompletedProcess:
    """``book`` against ``host`` (group gpu_hosts) with ``extra_vars``, as a user runs it; the JSON callback's output."""
    inv = tmp_path / ('%s-inventory.yml' % name)
    host.write_inventory(inv, group='gpu_hosts')
    argv = [tool('ansible-playbook'), str(book), '-i', str(inv)] + list(args)
    if extra_vars is not None:
        path = tmp_path / ('%s-vars.json' % name)
        path.write_text(json.dumps(extra_vars))
        argv += ['-e', '@%s' % path]
    env = playbook_env(REPO / '.cache' / 'collections', {
        'ANSIBLE_CALLBACK_PLUGINS': str(REPO / 'tests' / 'callback_plugins'),
        'ANSIBLE_STDOUT_CALLBACK': 'fleetgpu_json',
        'ANSIBLE_PYTHON_INTERPRETER': '/usr/bin/python3',
        'ANSIBLE_HOST_KEY_CHECKING': 'False',
        'ANSIBLE_TIMEOUT': '30',
    })
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=PLAY_TIMEOUT, cwd=str(tmp_path),
                          check=False)


def _result(doc: dict, task: str) -> dict:
    found = [t for t in doc['tasks'] if t['task'] == task]
    assert found, 'task %r did not run: %s' % (task, json.dumps(doc)[:3000])
    return found[-1]


def _drivers(host: launch.TestHost) -> Dict[str, str]:
    out = host.ssh(['for a in %s; do d=/sys/bus/pci/devices/$a; if [ -e $d/driver ]; then '
                    'echo $a $(basename $(readlink $d/driver)); else echo $a none; fi; done'
                    % ' '.join((BOOT_GPU, GPU, AUDIO))]).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def test_vfio_bind_binds_and_restores_the_gpu_group_at_runtime(hosts, tmp_path):
    host = hosts['intel']
    before = _drivers(host)
    assert before == {BOOT_GPU: 'bochs-drm', GPU: 'bochs-drm', AUDIO: 'snd_hda_intel'}, before
    bind = {'fleetgpu.passthrough.vfio_bind': {'devices': [GPU], 'include_group': True}}
    doc = _play(host, tmp_path, [
        dict({'name': 'check'}, **bind, check_mode=True, diff=True),
        dict({'name': 'bind'}, **bind),
        dict({'name': 'again'}, **bind),
    ], 'bind')
    check, done, again = _result(doc, 'check'), _result(doc, 'bind'), _result(doc, 'again')
    assert check['status'] == 'ok' and check['result']['changed'] is True, check
    assert done['status'] == 'ok' and done['result']['changed'] is True, done
    assert sorted(d['address'] for d in done['result']['devices']) == [GPU, AUDIO]
    assert {d['driver_after'] for d in done['result']['devices']} == {'vfio-pci'}
    assert again['status'] == 'ok' and again['result']['changed'] is False, again
    now = _drivers(host)
    assert now == {BOOT_GPU: 'bochs-drm', GPU: 'vfio-pci', AUDIO: 'vfio-pci'}, now
    group = done['result']['devices'][0]['group']
    host.ssh(['test', '-c', '/dev/vfio/%s' % group])

    doc = _play(host, tmp_path, [
        {'name': 'restore', 'fleetgpu.passthrough.vfio_bind': {'devices': [GPU, AUDIO], 'state': 'absent'}},
        {'name': 'restore again', 'fleetgpu.passthrough.vfio_bind': {'devices': [GPU, AUDIO], 'state': 'absent'}},
        {'name': 'health', 'fleetgpu.passthrough.gpu_quarantine': {'addresses': [GPU, AUDIO]}},
    ], 'restore')
    restore, again = _result(doc, 'restore'), _result(doc, 'restore again')
    assert restore['status'] == 'ok' and restore['result']['changed'] is True, restore
    assert again['status'] == 'ok' and again['result']['changed'] is False, again
    assert _drivers(host) == before
    # reset health after the give-back: vfio_bind's own check and gpu_quarantine find both functions healthy,
    # with the reset methods the kernel lists for them (read, never triggered); nothing is quarantined
    assert restore['result']['quarantined'] == [], restore
    health = _result(doc, 'health')
    print('gpu_quarantine on the test host: %.2fs' % health['seconds'])
    assert health['status'] == 'ok' and health['result']['changed'] is False, health
    listed = host.ssh(['for a in %s; do echo $a $(cat /sys/bus/pci/devices/$a/reset_method 2>/dev/null || echo -); done'
                       % ' '.join((GPU, AUDIO))]).stdout
    kernel = {a: (None if m == ['-'] else m) for a, *m in (line.split() for line in listed.splitlines() if line.strip())}
    devices = {d['address']: d for d in health['result']['devices']}
    assert sorted(devices) == [GPU, AUDIO], devices
    for address, dev in devices.items():
        assert dev['healthy'] is True and dev['quarantined'] is False and dev['problems'] == [], dev
        assert dev['config_readable'] is True and dev['config_vendor_id'] == VENDORS[address], dev
        assert dev['reset_method'] == kernel[address], (dev, kernel)
        assert dev['driver'] == before[address], dev
    assert health['result']['quarantined'] == {}
    host.ssh(['test', '!', '-e', '/var/lib/fleetgpu-passthrough/quarantine.json'])


LSPCI_MEMORY = re.compile(r'^\s*Memory at \S+ \((32|64)-bit, (prefetchable|non-prefetchable)\)(?: \[\w+\])* '
                          r'\[size=([0-9]+)([KMG]?)\]', re.M)
UNITS = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
PCI_ADDRESS = re.compile(r'^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$')


def test_gpu_facts_reports_bars_pcie_path_and_numa_as_the_kernel_does(hosts, tmp_path):
    """BARs as lspci reads them from config space, the PCIe path as the device's sysfs directory
    says, the NUMA node as nproc and /proc/meminfo say (a one-node host)."""
    host = hosts['intel']
    doc = _play(host, tmp_path, [{'name': 'facts', 'fleetgpu.passthrough.gpu_facts': {'addresses': [GPU, AMD_GPU]}}],
                'topology')
    facts = _result(doc, 'facts')['result']['ansible_facts']['gpu_passthrough']
    assert [g['address'] for g in facts['gpus']] == [GPU, AMD_GPU]
    for gpu in facts['gpus']:
        lspci = host.ssh(['lspci', '-v', '-s', gpu['address']]).stdout
        want = [(int(size) * UNITS[unit], kind == 'prefetchable', bits == '64')
                for bits, kind, size, unit in LSPCI_MEMORY.findall(lspci)]
        assert want, lspci
        assert [(b['bytes'], b['prefetchable'], b['mem64']) for b in gpu['bars']] == want, (gpu['bars'], lspci)
        assert gpu['bar_bytes'] == sum(size for size, _pf, _m64 in want)
        path = host.ssh(['readlink', '-f', '/sys/bus/pci/devices/%s' % gpu['address']]).stdout.strip()
        chain = [part for part in path.split('/') if PCI_ADDRESS.match(part)]
        assert chain[-1] == gpu['address'] and len(chain) == 2, path    # behind its own root port
        assert gpu['upstream_bridges'] == chain[:-1] and gpu['root_port'] == chain[0], (gpu, path)
        assert gpu['root_complex'] == '0000:00'
    cpus = int(host.ssh(['nproc', '--all']).stdout)
    meminfo = host.ssh(['cat', '/proc/meminfo']).stdout
    memtotal_kib = int(re.search(r'^MemTotal:\s+([0-9]+) kB', meminfo, re.M).group(1))
    nodes = facts['host']['numa_nodes']
    assert [n['node'] for n in nodes] == [0] and nodes[0]['cpus'] == list(range(cpus)), nodes
    assert nodes[0]['memory_mib'] == memtotal_kib // 1024, (nodes, memtotal_kib)
    assert {p['size_kib'] for p in nodes[0]['hugepages']} >= {2048}, nodes


@pytest.fixture(scope='module')
def stuck_host(hosts) -> Iterator[launch.TestHost]:
    """The radeon host once 02:00.0 is really stuck: radeon's probe waits for its firmware.

    The launcher loaded radeon with the firmware sysfs fallback forced on (launch.load_radeon):
    the probe sits in request_firmware() holding the device lock, so reading driver_override
    blocks in the kernel. The fixture waits for that state (the pending firmware load shows up
    under /sys/class/firmware) and proves it (a read of driver_override still blocks after 10 s),
    and ends the wait afterwards.
    """
    host = hosts['radeon']
    pending = host.ssh(['sh', '-c', "'for i in $(seq 120); do ls -d /sys/class/firmware/radeon* 2>/dev/null "
                        "&& exit 0; sleep 1; done; exit 1'"], timeout=200, check=False)
    if pending.returncode != 0:
        dmesg = host.ssh(['sh', '-c', "'dmesg | grep -i -e radeon -e firmware | tail -20'"], check=False).stdout
        pytest.fail('radeon did not start waiting for its firmware within 120 s; dmesg:\n%s' % dmesg)
    # A reader of driver_override sleeps uninterruptibly on the device lock: `timeout` could not
    # end it, so it runs detached and is looked at after 10 s.
    probe = host.ssh(['sh', '-c', "'setsid cat /sys/bus/pci/devices/%s/driver_override >/dev/null 2>&1 </dev/null & "
                      "p=$!; sleep 10; if kill -0 $p 2>/dev/null; then echo blocked $(cat /proc/$p/wchan); "
                      "else echo answered; fi'" % AMD_GPU], timeout=120)
    assert probe.stdout.startswith('blocked'), 'driver_override of %s answered: the device is not stuck (%s)' % (
        AMD_GPU, probe.stdout.strip())
    yield host
    host.release_radeon()


def test_gpu_facts_reports_the_stuck_device_instead_of_hanging(stuck_host, tmp_path):
    host = stuck_host
    doc = _play(host, tmp_path, [
        {'name': 'facts', 'fleetgpu.passthrough.gpu_facts': {'timeout': 5}},
    ], 'facts')
    res = _result(doc, 'facts')
    assert res['status'] == 'ok', res
    gpus = {g['address']: g for g in res['result']['ansible_facts']['gpu_passthrough']['gpus']}
    stuck = gpus[AMD_GPU]
    assert stuck['stuck'], stuck
    assert stuck['state'] == 'unusable', stuck
    assert any('stuck' in r or 'did not return' in r or 'time' in r for r in stuck['state_reasons']), stuck
    # The other GPUs read normally.
    assert gpus[GPU]['stuck'] == [] and gpus[GPU]['driver'] == 'bochs-drm'
    assert gpus[BOOT_GPU]['state'] == 'boot-vga'


def test_vfio_bind_fails_clearly_on_the_stuck_device_instead_of_hanging(stuck_host, tmp_path):
    host = stuck_host
    doc = _play(host, tmp_path, [
        {'name': 'bind stuck', 'fleetgpu.passthrough.vfio_bind': {'devices': [AMD_GPU], 'timeout': 5},
         'ignore_errors': True},
        {'name': 'facts after', 'fleetgpu.passthrough.gpu_facts': {'timeout': 5, 'addresses': [GPU]}},
    ], 'bindstuck')
    res = _result(doc, 'bind stuck')
    assert res['status'] == 'ignored', res
    assert AMD_GPU in res['result']['msg'], res['result']['msg']
    # The play went on: the host still answers and other devices are untouched.
    after = _result(doc, 'facts after')
    assert after['status'] == 'ok'
    assert after['result']['ansible_facts']['gpu_passthrough']['gpus'][0]['driver'] == 'bochs-drm'
