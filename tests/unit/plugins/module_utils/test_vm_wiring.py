"""The wiring of a VM with GPUs (plugins/module_utils/_vm_wiring.py), from the gpu_facts of a
simulated two-socket HGX host: pinning on the GPUs' node, memory binding, hugepages, the MMIO
window, and the errors that name what is short."""
from __future__ import annotations

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import gather
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vm_wiring import (
    MIN_MMIO64_MIB,
    WiringError,
    mmio64_window_mib,
    plan,
)
from tests.sim import simkernel

GIB = 1 << 30


@pytest.fixture(scope='module')
def hgx8(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return gather(Sysfs(simkernel.materialize('hgx8', str(tmp_path_factory.mktemp('hgx8')))), timeout=2.0)


def _gpus(facts: dict, *addresses: str) -> list:
    return [next(g for g in facts['gpus'] if g['address'] == a) for a in addresses]


def test_one_gpu_pins_on_its_node_with_strict_memory_and_1g_pages(hgx8: dict) -> None:
    # node 1 has no 1 GiB pages reserved: named, with how many to reserve
    with pytest.raises(WiringError, match=r'NUMA node 1 has 0 free 1048576 KiB hugepages, fewer than the 64 the VM '
                                          r'needs \(65536 MiB\); reserve 64 more'):
        plan(hgx8['host'], _gpus(hgx8, '0000:83:00.0'), vcpus=4, memory_mib=65536, hugepage_kib=1048576)
    wiring = plan(hgx8['host'], _gpus(hgx8, '0000:13:00.0'), vcpus=4, memory_mib=65536, hugepage_kib=1048576)
    assert wiring['node'] == 0
    assert wiring['vcpu_pins'] == {'0': 4, '1': 5, '2': 6, '3': 7}
    assert wiring['emulator_cpus'] == '0-3'
    assert wiring['numatune'] == {'mode': 'strict', 'nodeset': '0'}
    assert wiring['hugepages'] == {'size_kib': 1048576, 'pages': 64}
    # 128 GiB + 48 MiB of BARs, plus headroom, to the next power of two
    assert wiring['mmio64_mib'] == 256 * 1024
    assert wiring['pcihole64_kib'] == 256 * 1024 * 1024
    assert wiring['ovmf_fw_cfg'] == {'name': 'opt/ovmf/X-PciMmio64Mb', 'value': str(256 * 1024)}


def test_gpus_on_two_nodes_are_refused_unless_the_spread_is_allowed(hgx8: dict) -> None:
    gpus = _gpus(hgx8, '0000:13:00.0', '0000:83:00.0', '0000:84:00.0')
    with pytest.raises(WiringError, match='sit on NUMA nodes 0, 1'):
        plan(hgx8['host'], gpus, vcpus=2, memory_mib=4096)
    wiring = plan(hgx8['host'], gpus, vcpus=2, memory_mib=4096, allow_spread=True)
    assert wiring['node'] == 1    # where most of its GPUs are
    assert wiring['mmio64_mib'] == 512 * 1024


def test_shortages_are_named(hgx8: dict) -> None:
    gpu = _gpus(hgx8, '0000:83:00.0')
    with pytest.raises(WiringError, match=r'NUMA node 1 has 8 CPUs \(8-15\), fewer than the 9 vCPUs'):
        plan(hgx8['host'], gpu, vcpus=9, memory_mib=4096)
    with pytest.raises(WiringError, match='NUMA node 1 has 500000 MiB free, less than the 600000 MiB'):
        plan(hgx8['host'], gpu, vcpus=2, memory_mib=600000)
    # preferred binds nothing strictly: no memory check
    assert plan(hgx8['host'], gpu, vcpus=2, memory_mib=600000, numa_mode='preferred')['numatune'] == {
        'mode': 'preferred', 'nodeset': '1'}
    with pytest.raises(WiringError, match='no 4 KiB hugepages'):
        plan(hgx8['host'], gpu, vcpus=2, memory_mib=4096, hugepage_kib=4)
    with pytest.raises(WiringError, match='not a whole number of 1048576 KiB hugepages'):
        plan(hgx8['host'], gpu, vcpus=2, memory_mib=1536, hugepage_kib=1048576)
    with pytest.raises(WiringError, match="numa_mode must be one of strict, preferred, not 'interleave'"):
        plan(hgx8['host'], gpu, vcpus=2, memory_mib=4096, numa_mode='interleave')
    with pytest.raises(WiringError, match='must be positive'):
        plan(hgx8['host'], gpu, vcpus=0, memory_mib=4096)


def test_the_window_fits_every_bar_and_never_shrinks_below_ovmf_default() -> None:
    assert mmio64_window_mib([]) == MIN_MMIO64_MIB
    small = {'bars': [{'bytes': 256 << 20}], 'bar_bytes': 256 << 20}
    assert mmio64_window_mib([small]) == MIN_MMIO64_MIB
    # eight 128 GiB BARs: 1 TiB plus headroom -> 2 TiB
    big = {'bars': [{'bytes': 128 * GIB}], 'bar_bytes': 128 * GIB}
    assert mmio64_window_mib([big] * 8) == 2 * 1024 * 1024
    # a window is a power of two at least as large as the largest BAR
    for count in range(1, 9):
        window = mmio64_window_mib([big] * count)
        assert window & (window - 1) == 0 and window * (1 << 20) >= count * 128 * GIB * 1.25


def test_a_one_node_host_without_numa_node_numbers_uses_node_0() -> None:
    host = {'numa_nodes': [{'node': 0, 'cpus': [0, 1], 'memory_mib': 2048, 'memory_free_mib': 1024,
                            'hugepages': [{'size_kib': 2048, 'total': 0, 'free': 0}]}]}
    wiring = plan(host, [{'address': '0000:01:00.0', 'numa_node': None, 'bars': [], 'bar_bytes': 0}], vcpus=1,
                  memory_mib=512)
    assert wiring['node'] == 0 and wiring['vcpu_pins'] == {'0': 1} and wiring['emulator_cpus'] == '0'
    # no NUMA information at all: nothing pinned, the window still computed
    bare = plan({}, [{'address': '0000:01:00.0', 'numa_node': None}], vcpus=1, memory_mib=512)
    assert bare['node'] is None and bare['vcpu_pins'] is None and bare['mmio64_mib'] == MIN_MMIO64_MIB


def test_pages_and_memory_the_running_vm_holds_count_as_its_own() -> None:
    """A second run on a running VM sees the node's pages in use by that VM: they are not missing."""
    host = {'numa_nodes': [{'node': 0, 'cpus': [0, 1, 2, 3], 'memory_mib': 8192, 'memory_free_mib': 1024,
                            'hugepages': [{'size_kib': 2048, 'total': 1024, 'free': 0}]}]}
    gpus = [{'address': '0000:01:00.0', 'numa_node': 0, 'bar_bytes': 1 << 28, 'bars': []}]
    with pytest.raises(WiringError, match='reserve 1024 more'):
        plan(host, gpus, 2, 2048, hugepage_kib=2048)
    assert plan(host, gpus, 2, 2048, hugepage_kib=2048, held_pages=1024)['hugepages'] == {'size_kib': 2048, 'pages': 1024}
    with pytest.raises(WiringError, match='1024 MiB free, less than the 2048 MiB'):
        plan(host, gpus, 2, 2048)
    assert plan(host, gpus, 2, 2048, held_mib=2048)['numatune'] == {'mode': 'strict', 'nodeset': '0'}
