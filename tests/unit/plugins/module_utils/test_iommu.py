"""IOMMU groups, viability and interrupt remapping from simulated trees."""
from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._iommu import (
    HostIommu,
    cmdline_values,
    group_members,
    interrupt_remapping,
    iommu_type,
    list_groups,
    offending_members,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress, PciDevice
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from tests.sim import simkernel

A = PciAddress.parse


@pytest.fixture(scope='module')
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {n: simkernel.materialize(n, str(tmp_path_factory.mktemp(n)))
            for n in ('workstation', 'shared_group', 'iommu_off', 'amd_host', 'hgx8')}


def test_groups(roots: dict) -> None:
    s = Sysfs(roots['workstation'])
    groups = list_groups(s)
    gpu_group = [g for g, m in groups.items() if A('01:00.0') in m][0]
    assert groups[gpu_group] == [A('01:00.0'), A('01:00.1')]
    assert group_members(s, gpu_group) == [A('01:00.0'), A('01:00.1')]
    assert list_groups(Sysfs(roots['iommu_off'])) == {}


@pytest.mark.parametrize('units,expected', [
    ([], None), (['dmar0', 'dmar1'], 'intel'), (['ivhd0'], 'amd'), (['smmu3.0x0000000009050000'], 'other'),
])
def test_iommu_type(units: list, expected: object) -> None:
    assert iommu_type(units) == expected


@pytest.mark.parametrize('name,enabled,kind,ir', [
    ('workstation', True, 'intel', True),
    ('amd_host', True, 'amd', True),
    ('iommu_off', False, None, None),
])
def test_host_state(roots: dict, name: str, enabled: bool, kind: object, ir: object) -> None:
    host = HostIommu(Sysfs(roots[name]))
    assert (host.enabled, host.type, host.interrupt_remapping) == (enabled, kind, ir)


@pytest.mark.parametrize('cmdline,expected', [
    ('quiet', True), ('quiet intremap=off', False), ('nointremap', False),
])
def test_interrupt_remapping_cmdline(roots: dict, cmdline: str, expected: bool) -> None:
    s = Sysfs(roots['workstation'])
    assert interrupt_remapping(s, ['dmar0'], cmdline) is expected


def test_interrupt_remapping_ecap(tmp_path: Path) -> None:
    topo = simkernel.load_topology('workstation')
    topo['iommu']['interrupt_remapping'] = False
    s = Sysfs(simkernel.materialize(topo, str(tmp_path)))
    assert interrupt_remapping(s, ['dmar0'], '') is False


def test_cmdline_values() -> None:
    assert cmdline_values('a intel_iommu=on,sm_on b=1 intel_iommu=igfx_off', 'intel_iommu') == ['on', 'sm_on', 'igfx_off']
    assert cmdline_values('intel_iommu', 'intel_iommu') == []


def test_cmdline_tokens_are_quote_aware(roots: dict) -> None:
    # A quoted value is one token (as the kernel reads it): its words are not arguments of their own.
    assert cmdline_values('dyndbg="x intel_iommu=off y" intel_iommu=on', 'intel_iommu') == ['on']
    s = Sysfs(roots['workstation'])
    units = HostIommu(s).units
    assert interrupt_remapping(s, units, 'dyndbg="file x nointremap y"') is True
    assert interrupt_remapping(s, units, 'a nointremap') is False


def test_offending_members(roots: dict) -> None:
    s = Sysfs(roots['shared_group'])
    host = HostIommu(s)
    group = host.group_of[A('03:00.0')]
    members = [PciDevice.read(s, a) for a in host.groups[group]]
    bad = offending_members(members, {A('03:00.0')})
    assert [str(d.address) for d in bad] == ['0000:03:01.0']  # bridge is fine, 03:00.1 rides along
    assert offending_members(members, {A('03:00.0'), A('03:01.0')}) == []


def test_hgx_switch_ports_are_not_offenders(roots: dict) -> None:
    s = Sysfs(roots['hgx8'])
    host = HostIommu(s)
    for addrs in host.groups.values():
        members = [PciDevice.read(s, a) for a in addrs]
        gpus = {m.address for m in members if m.class_code >> 8 == 0x0302}
        if gpus:
            assert offending_members(members, gpus) == []


def test_interrupt_remapping_from_proc_interrupts(tmp_path: Path) -> None:
    topo = simkernel.load_topology('workstation')
    topo['iommu']['interrupt_remapping'] = False  # the ecap alone would say no
    root = simkernel.materialize(topo, str(tmp_path))
    s = Sysfs(root)
    assert interrupt_remapping(s, ['dmar0'], '') is False
    Path(s.proc('interrupts')).write_text(
        '            CPU0       CPU1\n  0:         35          0   IO-APIC    2-edge      timer\n'
        ' 24:          0        112  IR-PCI-MSI-0000:00:17.0    0-edge      ahci[0000:00:17.0]\n')
    assert interrupt_remapping(s, ['dmar0'], '') is True
    assert interrupt_remapping(s, ['dmar0'], 'intremap=off') is False
    assert interrupt_remapping(s, [], '') is None
