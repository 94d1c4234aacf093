"""Hugepages reserved at boot (plugins/module_utils/_hugepages.py, filters hugepages_plan and
hugepages_shortfall): the kernel arguments, the checks against the host's gpu_facts (a simulated
two-socket HGX host and the one-node QEMU test host's shape), and the shortfall after a boot."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.filter.hugepages_plan import hugepages_plan
from ansible_collections.fleetgpu.passthrough.plugins.filter.hugepages_shortfall import hugepages_shortfall
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import gather
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hugepages import (
    HugepagesError,
    plan,
    shortfall,
    size_kib,
    size_text,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from tests.sim import simkernel


@pytest.fixture(scope='module')
def hgx8(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return gather(Sysfs(simkernel.materialize('hgx8', str(tmp_path_factory.mktemp('hgx8')))), timeout=2.0)


@pytest.fixture(scope='module')
def one_node(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return gather(Sysfs(simkernel.materialize('identical_pair', str(tmp_path_factory.mktemp('pair')))), timeout=2.0)


@pytest.mark.parametrize('given, kib, text', [
    ('2M', 2048, '2M'), ('1G', 1048576, '1G'), ('2048kB', 2048, '2M'), ('2048K', 2048, '2M'), (2048, 2048, '2M'),
    ('1048576', 1048576, '1G'), ('2MiB', 2048, '2M'), ('1g', 1048576, '1G'), ('64K', 64, '64K'),
])
def test_sizes_in_the_spellings_the_kernel_and_users_use(given: object, kib: int, text: str) -> None:
    assert size_kib(given, 'size') == kib
    assert size_text(kib) == text


@pytest.mark.parametrize('given', ['', 'huge', '0', '2T', '-2M', True, None, 1.5, [2048]])
def test_bad_sizes_are_named(given: object) -> None:
    with pytest.raises(HugepagesError, match=r'^size .* is not a page size'):
        size_kib(given, 'size')


@pytest.mark.parametrize('entries, default, args', [
    ([{'size': '2M', 'count': 64}], '', ['hugepagesz=2M', 'hugepages=64']),
    ([{'size': '1G', 'count': 8, 'node': 1}, {'size': '1G', 'count': 4, 'node': 0}], '',
     ['hugepagesz=1G', 'hugepages=0:4,1:8']),
    ([{'size': 1048576, 'count': '3', 'node': '0'}], '1G', ['default_hugepagesz=1G', 'hugepagesz=1G', 'hugepages=0:3']),
    ([], '1G', ['default_hugepagesz=1G']),
    ([], '', []),
    (None, '', []),
])
def test_arguments_rendered_in_the_kernels_order(hgx8: dict, entries: list, default: str, args: list) -> None:
    result = plan(entries, hgx8, default)
    assert result['args'] == args
    # kernel_cmdline takes them as one change: no contradiction, appended in this order
    assert CmdlineChange(['intel_iommu=on'] + args).apply(['quiet']) == ['quiet', 'intel_iommu=on'] + args


def test_expected_pages_per_node_or_spread(hgx8: dict) -> None:
    assert plan([{'size': '2M', 'count': 64}], hgx8)['expected'] == [{'node': None, 'size_kib': 2048, 'count': 64}]
    assert plan([{'size': '1G', 'count': 2, 'node': 1}, {'size': '1G', 'count': 1, 'node': 0}], hgx8)['expected'] == [
        {'node': 0, 'size_kib': 1048576, 'count': 1}, {'node': 1, 'size_kib': 1048576, 'count': 2}]


@pytest.mark.parametrize('entries, default, message', [
    ('2M', '', r"^vfio_host_hugepages must be a list of \{size, count, node\} entries, not '2M'$"),
    (['2M'], '', r"^vfio_host_hugepages\[0\] '2M' is not a \{size, count, node\} entry$"),
    ([{'size': '2M', 'count': 1, 'numa': 0}], '', r'^vfio_host_hugepages\[0\] has unknown key\(s\) numa'),
    ([{'count': 1}], '', r'^vfio_host_hugepages\[0\] has no size$'),
    ([{'size': '2M'}], '', r'^vfio_host_hugepages\[0\] has no count$'),
    ([{'size': '4M', 'count': 1}], '', r"^vfio_host_hugepages\[0\]\.size '4M': this host's kernel offers no 4M hugepages "
                                       r'\(it offers: 2M, 1G'),
    ([{'size': '2M', 'count': -1}], '', r'^vfio_host_hugepages\[0\]\.count -1 is not a positive number'),
    ([{'size': '2M', 'count': 'lots'}], '', r"^vfio_host_hugepages\[0\]\.count 'lots' is not a whole number$"),
    ([{'size': '2M', 'count': 1, 'node': 2}], '', r'^vfio_host_hugepages\[0\]\.node 2 is not a NUMA node of this host '
                                                  r'\(it has: 0, 1\)$'),
    ([{'size': '2M', 'count': 1, 'node': 0}, {'size': '2M', 'count': 1, 'node': 0}], '',
     r'^vfio_host_hugepages\[1\] names node 0 a second time$'),
    ([{'size': '2M', 'count': 1, 'node': 0}, {'size': '2M', 'count': 1}], '',
     r'^vfio_host_hugepages\[1\] has no node, but other entries do'),
    ([{'size': '2M', 'count': 1}, {'size': '2M', 'count': 1, 'node': 1}], '',
     r'^vfio_host_hugepages\[1\] names node 1, but an entry before it has no node'),
    ([{'size': '2M', 'count': 1, 'node': 0}, {'size': '1G', 'count': 1, 'node': 1}], '',
     r'^vfio_host_hugepages\[1\]\.size 1G differs from the 2M of the entries before it: one page size per host'),
    ([{'size': '1G', 'count': 480, 'node': 1}], '',
     r'^vfio_host_hugepages asks for 480 pages of 1G \(491520 MiB\) on node 1, which has 524288 MiB of memory: more '
     r'than 90% of it'),
    ([], 'big', r"^vfio_host_default_hugepagesz 'big' is not a page size"),
    ([], '16G', r"^vfio_host_default_hugepagesz '16G': this host's kernel offers no 16G hugepages"),
])
def test_bad_reservations_name_the_option_and_entry(hgx8: dict, entries: object, default: str, message: str) -> None:
    with pytest.raises(HugepagesError, match=message):
        plan(entries, hgx8, default)
    # the filter returns the same sentence instead of raising (the role asserts on it)
    result = hugepages_plan(entries, hgx8, default)
    assert result['args'] == [] and result['error'] == str(pytest.raises(HugepagesError, plan, entries, hgx8, default).value)


def test_spread_reservation_is_checked_against_the_whole_host(hgx8: dict, one_node: dict) -> None:
    # 900 GiB of 1 TiB across both nodes is allowed, 16 GiB on a 16 GiB host is not
    assert plan([{'size': '1G', 'count': 900}], hgx8)['args'] == ['hugepagesz=1G', 'hugepages=900']
    with pytest.raises(HugepagesError, match='on the host, which has 16384 MiB'):
        plan([{'size': '1G', 'count': 16}], one_node)


def test_a_host_that_offers_no_1g_pages(one_node: dict) -> None:
    facts = copy.deepcopy(one_node)
    for node in facts['host']['numa_nodes']:
        node['hugepages'] = [p for p in node['hugepages'] if p['size_kib'] == 2048]
    with pytest.raises(HugepagesError, match=r"offers no 1G hugepages \(it offers: 2M; 1G needs a CPU with pdpe1gb\)"):
        plan([{'size': '1G', 'count': 1}], facts)


def _with_pages(facts: dict, totals: dict) -> dict:
    facts = copy.deepcopy(facts)
    for node in facts['host']['numa_nodes']:
        for pages in node['hugepages']:
            pages['total'] = totals.get((node['node'], pages['size_kib']), 0)
    return facts


def test_shortfall_per_node_and_spread(hgx8: dict) -> None:
    per_node = plan([{'size': '1G', 'count': 8, 'node': 0}, {'size': '1G', 'count': 8, 'node': 1}], hgx8)['expected']
    spread = plan([{'size': '1G', 'count': 16}], hgx8)['expected']
    full = _with_pages(hgx8, {(0, 1048576): 8, (1, 1048576): 8})
    assert shortfall(full, per_node) == [] and shortfall(full, spread) == []
    short = _with_pages(hgx8, {(0, 1048576): 8, (1, 1048576): 5})
    (problem,) = shortfall(short, per_node)
    assert problem.startswith('node 1 has 5 of the 8 1G hugepages asked for: at boot the kernel found no more free memory')
    (problem,) = hugepages_shortfall(short, spread)
    assert problem.startswith('the host (all nodes) has 13 of the 16 1G hugepages asked for')
    # more than asked for (a runtime sysctl on top) is not a problem
    assert shortfall(_with_pages(hgx8, {(0, 1048576): 9, (1, 1048576): 8}), per_node) == []


def test_shortfall_of_a_size_the_kernel_does_not_report(one_node: dict) -> None:
    facts = copy.deepcopy(one_node)
    facts['host']['numa_nodes'][0]['hugepages'] = []
    assert shortfall(facts, [{'node': 0, 'size_kib': 2048, 'count': 4}]) == [
        'node 0 reports no 2M hugepages at all (asked for 4)']
