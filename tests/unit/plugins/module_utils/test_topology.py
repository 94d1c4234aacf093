"""Where a GPU sits and what it needs: BARs from ``resource``, the PCIe path, the host's NUMA
nodes (plugins/module_utils/_topology.py), through gpu_facts over simulated kernels."""
from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import gather
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress, PciDevice
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._topology import (
    CpuListError,
    format_cpulist,
    numa_nodes,
    parse_cpulist,
    pci_path,
    read_bars,
)
from tests.sim import simkernel

GIB, MIB = 1 << 30, 1 << 20


@pytest.mark.parametrize('text,cpus', [
    ('0-3,8,10-11', [0, 1, 2, 3, 8, 10, 11]), ('5', [5]), ('', []), ('0-1,1-2\n', [0, 1, 2]),
    ('0-7,^2-3', [0, 1, 4, 5, 6, 7]),
])
def test_cpulist_round_trip(text, cpus):
    assert parse_cpulist(text) == cpus
    assert parse_cpulist(format_cpulist(cpus)) == cpus


@pytest.mark.parametrize('text,lenient', [('a-b', [9]), ('3-1', [9]), ('1,-2', [1, 9]), ('0-', [9])])
def test_a_malformed_cpulist_is_named(text, lenient):
    with pytest.raises(CpuListError, match='invalid CPU list'):
        parse_cpulist(text)
    # read leniently (a domain's nodeset), the malformed part is left out
    assert parse_cpulist(text + ',9', strict=False) == lenient


@pytest.fixture(scope='module')
def hgx8(tmp_path_factory: pytest.TempPathFactory) -> str:
    return simkernel.materialize('hgx8', str(tmp_path_factory.mktemp('hgx8')))


def _gpu(doc: dict, address: str) -> dict:
    return next(g for g in doc['gpus'] if g['address'] == address)


def test_an_a100_reports_its_bars_and_where_it_hangs(hgx8: str) -> None:
    doc = gather(Sysfs(hgx8), timeout=2.0)
    gpu = _gpu(doc, '0000:13:00.0')
    assert gpu['bars'] == [
        {'index': 0, 'bytes': 16 * MIB, 'prefetchable': False, 'mem64': False},
        {'index': 1, 'bytes': 128 * GIB, 'prefetchable': True, 'mem64': True},
        {'index': 3, 'bytes': 32 * MIB, 'prefetchable': True, 'mem64': True},
    ]
    assert gpu['bar_bytes'] == 128 * GIB + 48 * MIB
    # root complex 0000:10 -> root port 10:01.0 -> switch 11:00.0 / 12:00.0 -> the GPU
    assert gpu['root_complex'] == '0000:10'
    assert gpu['root_port'] == '0000:10:01.0'
    assert gpu['upstream_bridges'] == ['0000:10:01.0', '0000:11:00.0', '0000:12:00.0']
    assert gpu['numa_node'] == 0
    other = _gpu(doc, '0000:83:00.0')
    assert other['numa_node'] == 1 and other['root_complex'] != gpu['root_complex']


def test_the_host_reports_its_numa_nodes(hgx8: str) -> None:
    host = gather(Sysfs(hgx8), timeout=2.0)['host']
    assert host['numa_nodes'] == [
        {'node': 0, 'cpus': list(range(8)), 'memory_mib': 524288, 'memory_free_mib': 393216,
         'hugepages': [{'size_kib': 2048, 'total': 0, 'free': 0}, {'size_kib': 1048576, 'total': 256, 'free': 192}]},
        {'node': 1, 'cpus': list(range(8, 16)), 'memory_mib': 524288, 'memory_free_mib': 500000,
         'hugepages': [{'size_kib': 2048, 'total': 0, 'free': 0}, {'size_kib': 1048576, 'total': 0, 'free': 0}]},
    ]
    # the kernel's own cross-check: a device's local_cpulist is its node's CPUs
    local = Path(hgx8, 'bus', 'pci', 'devices', '0000:83:00.0', 'local_cpulist').read_text()
    assert parse_cpulist(local) == host['numa_nodes'][1]['cpus']


def test_a_device_on_the_root_bus_has_no_root_port(hgx8: str) -> None:
    sysfs = Sysfs(hgx8)
    dev = PciDevice.read(sysfs, PciAddress.parse('0000:00:17.0'))
    assert pci_path(sysfs, dev) == {'root_complex': '0000:00', 'root_port': None, 'upstream': []}


def test_resource_lines_the_kernel_writes_for_io_unused_and_odd_content(tmp_path: Path, hgx8: str) -> None:
    sysfs = Sysfs(hgx8)
    dev = PciDevice.read(sysfs, PciAddress.parse('0000:13:00.0'))
    res = Path(dev.attr('resource'))
    res.write_text('\n'.join([
        '0x00000000f0000000 0x00000000f0ffffff 0x0000000000040200',   # 16 MiB, 32-bit
        '0x0000000000001000 0x000000000000107f 0x0000000000040101',   # I/O ports: not memory
        '0x0000000000000000 0x0000000000000000 0x0000000000000000',   # unused
        'garbage',
        '0x0000038000000000 0x00000380ffffffff 0x000000000014220c',   # 4 GiB, 64-bit prefetchable
        '0x0000000000000000 0x0000000000000000 0x0000000000000000',
        '0x00000000f1000000 0x00000000f107ffff 0x0000000000046200',   # expansion ROM: not a BAR
    ]) + '\n')
    assert read_bars(sysfs, dev) == [
        {'index': 0, 'bytes': 16 * MIB, 'prefetchable': False, 'mem64': False},
        {'index': 4, 'bytes': 4 * GIB, 'prefetchable': True, 'mem64': True},
    ]
    res.unlink()
    assert read_bars(sysfs, dev) == []


def test_a_kernel_without_numa_files_reports_no_nodes(tmp_path: Path) -> None:
    root = tmp_path / 'sys'
    (root / 'devices' / 'system').mkdir(parents=True)
    assert numa_nodes(Sysfs(str(root))) == []
    node = root / 'devices' / 'system' / 'node' / 'node0'
    node.mkdir(parents=True)
    (node / 'cpulist').write_text('not a list\n')
    assert numa_nodes(Sysfs(str(root))) == [
        {'node': 0, 'cpus': [], 'memory_mib': None, 'memory_free_mib': None, 'hugepages': []}]
