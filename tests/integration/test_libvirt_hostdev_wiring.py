"""libvirt_hostdev's ``wiring`` through ansible-playbook against a real libvirtd (issue 16).

A VM with two A100s of the simulated two-socket host ``hgx8`` (node 0: CPUs 0-7, 1 GiB pages
192 free; node 1: CPUs 8-15, no hugepages; every A100 has 128 GiB of BARs) gets its vCPUs,
emulator, memory and hugepages on the GPUs' node and a 64-bit MMIO window for their BARs. The
private libvirtd (tests/integration/libvirtd.py) must accept the definition; a second run
changes nothing; check mode predicts the same elements and defines nothing; what the user wrote
stays; each refusal names the domain and what is short, and leaves the definition as it was.
"""
from __future__ import annotations

import itertools
import json
from typing import Iterator

import pytest

from tests.integration import libvirtd as private
from tests.integration.test_libvirt_hostdev import play, results, task_yaml
from tests.sim import simkernel

pytestmark = pytest.mark.skipif(private.available() is not None, reason=str(private.available()))

_names = itertools.count()

# 4 vCPUs, 16 GiB, q35 + SeaBIOS, and settings of the user's own that must survive
BIOS_XML = '''<domain type="qemu">
  <name>{name}</name>
  <memory unit="GiB">16</memory>
  <vcpu>4</vcpu>
  <cputune><shares>2048</shares></cputune>
  <os><type arch="x86_64" machine="q35">hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>{emulator}</emulator>
    <controller type="pci" model="pcie-root"/>
  </devices>
</domain>
'''

EFI_XML = '''<domain type="qemu">
  <name>{name}</name>
  <memory unit="GiB">8</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch="x86_64" machine="q35">hvm</type>
    <loader readonly="yes" type="pflash">/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
  </os>
  <features><acpi/></features>
  <devices>
    <emulator>{emulator}</emulator>
    <controller type="pci" model="pcie-root"/>
  </devices>
</domain>
'''

NODE0_GPUS = ['0000:13:00.0', '0000:14:00.0']
# 2 x 128 GiB of BARs + a quarter = 320 GiB, rounded up to a power of two
WINDOW_MIB = 512 * 1024


@pytest.fixture(scope='module')
def daemon() -> Iterator[private.PrivateLibvirtd]:
    d = private.PrivateLibvirtd()
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(autouse=True)
def _fresh(daemon: private.PrivateLibvirtd) -> Iterator[None]:
    """Each test's domains go with it (they hold the same simulated GPUs)."""
    yield
    daemon.clear_domains()


@pytest.fixture(scope='module')
def hgx8(tmp_path_factory: pytest.TempPathFactory) -> str:
    return simkernel.materialize('hgx8', str(tmp_path_factory.mktemp('hgx8')))


def _define(daemon: private.PrivateLibvirtd, template: str) -> str:
    name = 'wiring-it-%d' % next(_names)
    daemon.define(name, template.format(name=name, emulator=private.emulator()))
    return name


def _elements(result: dict) -> dict[str, str]:
    return {e['element']: e['action'] for e in result['wiring']['elements']}


def test_gpus_of_one_node_get_pins_memory_pages_and_window_check_real_repeat(run_playbook, daemon, hgx8) -> None:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import DomainDefinition
    name = _define(daemon, BIOS_XML)
    before = daemon.domain_xml(name)
    args = {'domain': name, 'uri': daemon.uri, 'devices': NODE0_GPUS, 'sysfs_root': hgx8,
            'wiring': {'hugepages': '1G'}}
    proc = run_playbook(play(task_yaml('plan', args, check=True)), args=('--diff',))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert daemon.domain_xml(name) == before, 'check mode changed the definition'
    plan = results(proc)[0]['result']
    proc = run_playbook(play(task_yaml('wire', args), task_yaml('again', args),
                             task_yaml('again in check mode', args, check=True)), args=('--diff',))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wire, again, again_check = [t['result'] for t in results(proc)]
    assert [wire['changed'], again['changed'], again_check['changed']] == [True, False, False]

    # check mode predicted exactly the elements the real run wrote
    assert plan['changed'] is True and plan['wiring'] == {**wire['wiring'], 'elements': plan['wiring']['elements']}
    assert _elements(plan) == _elements(wire)
    assert _elements(wire) == {
        'cputune/vcpupin[@vcpu=0]': 'added', 'cputune/vcpupin[@vcpu=1]': 'added',
        'cputune/vcpupin[@vcpu=2]': 'added', 'cputune/vcpupin[@vcpu=3]': 'added',
        'cputune/emulatorpin': 'added', 'numatune/memory': 'added', 'memoryBacking/hugepages': 'added',
        "devices/controller[@model='pcie-root']/pcihole64": 'added'}
    assert set(_elements(again).values()) == {'unchanged'}
    w = wire['wiring']
    assert (w['node'], w['vcpu_pins'], w['emulator_cpus']) == (0, {'0': 4, '1': 5, '2': 6, '3': 7}, '0-3')
    assert w['hugepages'] == {'size_kib': 1048576, 'pages': 16}
    assert (w['mmio64_mib'], w['gpus'], w['firmware']) == (WINDOW_MIB, NODE0_GPUS, 'bios')

    # what libvirt keeps: the wiring, the devices, and the user's own <shares>
    root = DomainDefinition(daemon.domain_xml(name)).root
    assert [(p.get('vcpu'), p.get('cpuset')) for p in root.findall('cputune/vcpupin')] == [
        ('0', '4'), ('1', '5'), ('2', '6'), ('3', '7')]
    assert root.find('cputune/emulatorpin').get('cpuset') == '0-3'
    assert root.findtext('cputune/shares') == '2048'
    assert dict(root.find('numatune/memory').attrib) == {'mode': 'strict', 'nodeset': '0'}
    page = root.find('memoryBacking/hugepages/page')
    # libvirt reads a page's nodeset as guest cells: the host node is numatune's
    assert dict(page.attrib) == {'size': '1048576', 'unit': 'KiB'}
    hole = root.find("devices/controller[@model='pcie-root']/pcihole64")
    assert (hole.text, hole.get('unit')) == (str(WINDOW_MIB * 1024), 'KiB')
    assert sorted(h.to_dict()['address'] for h in DomainDefinition(daemon.domain_xml(name)).hostdevs()) == NODE0_GPUS
    # the diff shows the wiring
    assert '<numatune>' not in wire['diff']['before'] and 'nodeset="0"' in wire['diff']['after']

    # libvirt turns it into QEMU's settings: the 64-bit hole on the q35 host bridge (the pages
    # are left out here: this machine has no hugetlbfs mounted for libvirt; the vfio driver is
    # named because this machine cannot tell libvirt it supports VFIO)
    live = DomainDefinition(daemon.domain_xml(name, inactive=False))
    live.root.remove(live.root.find('memoryBacking'))
    conn = daemon.connect()
    try:
        argv = conn.domainXMLToNative('qemu-argv', live.to_xml().replace('<source>', "<driver name='vfio'/><source>"), 0)
    finally:
        conn.close()
    assert 'q35-pcihost.pci-hole64-size=%dK' % (WINDOW_MIB * 1024) in argv, argv
    assert '"host-nodes":[0],"policy":"bind"' in argv, argv


def test_no_pinning_no_numa_no_window_writes_only_what_is_asked(run_playbook, daemon, hgx8) -> None:
    name = _define(daemon, BIOS_XML)
    args = {'domain': name, 'uri': daemon.uri, 'devices': NODE0_GPUS[:1], 'sysfs_root': hgx8,
            'wiring': {'pin_cpus': False, 'numa_mode': 'preferred', 'mmio64': False}}
    proc = run_playbook(play(task_yaml('wire', args)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = results(proc)[0]['result']
    assert _elements(result) == {'numatune/memory': 'added'}
    xml = daemon.domain_xml(name)
    assert 'vcpupin' not in xml and 'pcihole64' not in xml and "<memory mode='preferred' nodeset='0'/>" in xml


def test_uefi_guest_gets_ovmf_mmio_setting(run_playbook, daemon, hgx8) -> None:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import DomainDefinition
    name = _define(daemon, EFI_XML)
    args = {'domain': name, 'uri': daemon.uri, 'devices': ['0000:83:00.0'], 'sysfs_root': hgx8,
            'wiring': {'numa_mode': 'none'}}
    proc = run_playbook(play(task_yaml('wire', args), task_yaml('again', args)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wire, again = [t['result'] for t in results(proc)]
    assert (wire['changed'], again['changed']) == (True, False)
    # one A100 on node 1: 160 GiB -> 256 GiB, on OVMF's own fw_cfg file
    assert (wire['wiring']['node'], wire['wiring']['mmio64_mib'], wire['wiring']['firmware']) == (1, 262144, 'efi')
    xml = daemon.domain_xml(name)
    assert 'name=opt/ovmf/X-PciMmio64Mb,string=262144' in xml
    assert 'pcihole64' not in xml and '<numatune' not in xml
    pins = DomainDefinition(xml).root.findall('cputune/vcpupin')
    assert [(p.get('vcpu'), p.get('cpuset')) for p in pins] == [('0', '14'), ('1', '15')]


@pytest.mark.parametrize('devices,wiring,expected', [
    (['0000:13:00.0', '0000:83:00.0'], {}, 'sit on NUMA nodes 0, 1'),
    (NODE0_GPUS, {'hugepages': '2M'}, 'has 0 free 2048 KiB hugepages, fewer than the 8192'),
    (['0000:83:00.0'], {'hugepages': '1G'}, 'has 0 free 1048576 KiB hugepages, fewer than the 16'),
    (NODE0_GPUS, {'hugepages': 'huge'}, "wiring.hugepages: 'huge' is not a page size"),
])
def test_refusals_name_the_domain_and_what_is_short_and_change_nothing(run_playbook, daemon, hgx8, devices,
                                                                       wiring, expected) -> None:
    name = _define(daemon, BIOS_XML)
    before = daemon.domain_xml(name)
    args = {'domain': name, 'uri': daemon.uri, 'devices': devices, 'sysfs_root': hgx8, 'wiring': wiring}
    proc = run_playbook(play(task_yaml('wire', args)))
    assert proc.returncode != 0
    result = results(proc)[0]['result']
    assert expected in result['msg'], result['msg']
    if 'is not a page size' not in expected:
        assert "domain '%s'" % name in result['msg']
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert daemon.domain_xml(name) == before


def test_more_vcpus_than_the_node_has_and_live_wiring_are_refused(run_playbook, daemon, hgx8) -> None:
    name = _define(daemon, BIOS_XML.replace('<vcpu>4</vcpu>', '<vcpu>12</vcpu>'))
    args = {'domain': name, 'uri': daemon.uri, 'devices': NODE0_GPUS, 'sysfs_root': hgx8, 'wiring': {}}
    proc = run_playbook(play(task_yaml('wire', args, ignore=True),
                             task_yaml('live', {**args, 'where': 'live'}, ignore=True)))
    first, live = [t['result'] for t in results(proc)]
    assert 'NUMA node 0 has 8 CPUs (0-7), fewer than the 12 vCPUs asked for' in first['msg']
    assert 'use where=config or where=both, not live' in live['msg']
    assert json.dumps(first).count('Traceback') == 0


def test_guest_numa_puts_the_gpus_behind_an_expander_bus_of_the_vcpus_cell(run_playbook, daemon, hgx8) -> None:
    """guest_numa: one guest cell, a pcie-expander-bus bound to it, each GPU slot on a root port
    of its own on that bus; libvirt accepts it and QEMU gets a pxb-pcie on NUMA node 0 with the
    GPUs behind it; a second run moves nothing."""
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import DomainDefinition
    name = _define(daemon, BIOS_XML)
    args = {'domain': name, 'uri': daemon.uri, 'devices': NODE0_GPUS, 'sysfs_root': hgx8,
            'wiring': {'guest_numa': True, 'numa_mode': 'preferred'}}
    proc = run_playbook(play(task_yaml('plan', args, check=True), task_yaml('wire', args), task_yaml('again', args)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan, wire, again = [t['result'] for t in results(proc)]
    assert (plan['changed'], wire['changed'], again['changed']) == (True, True, False)
    assert _elements(plan) == _elements(wire)
    topo = wire['wiring']['guest_numa']
    assert again['wiring']['guest_numa'] == topo and len(topo['root_ports']) == 2
    root = DomainDefinition(daemon.domain_xml(name)).root
    cell = root.find('cpu/numa/cell')
    assert (cell.get('id'), cell.get('cpus'), cell.get('memory')) == ('0', '0-3', str(16 * 1024 * 1024))
    ctls = {int(c.get('index')): c for c in root.findall("devices/controller[@type='pci']")}
    expander = ctls[topo['expander_index']]
    assert (expander.get('model'), expander.findtext('target/node')) == ('pcie-expander-bus', '0')
    for port, hostdev in zip(topo['root_ports'], DomainDefinition(daemon.domain_xml(name)).hostdevs()):
        assert int(ctls[port].find('address').get('bus'), 16) == topo['expander_index']
        assert hostdev.guest.bus == port
    conn = daemon.connect()
    try:
        argv = conn.domainXMLToNative('qemu-argv', daemon.domain_xml(name, inactive=False).replace(
            '<source>', "<driver name='vfio'/><source>"), 0)
    finally:
        conn.close()
    assert '"driver":"pxb-pcie"' in argv and '"numa_node":0' in argv, argv
    assert '-numa node,nodeid=0,cpus=0-3' in argv, argv
