"""Writing a VM's wiring into its libvirt definition (plugins/module_utils/_domain_wiring.py):
only the owned elements change, a second write changes nothing, what the user wrote stays."""
from __future__ import annotations

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._domain_wiring import FW_CFG_NAME, apply, shape
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import DomainDefinition, DomainXmlError

BIOS_Q35 = """<domain type='kvm'>
  <name>train01</name>
  <memory unit='GiB'>64</memory>
  <vcpu placement='static'>4</vcpu>
  <cputune><shares>2048</shares><vcpupin vcpu='7' cpuset='1'/></cputune>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
    <disk type='file' device='disk'><source file='/var/lib/libvirt/images/train01.qcow2'/><target dev='vda'/></disk>
  </devices>
</domain>"""

EFI = """<domain type='kvm'>
  <name>infer01</name>
  <memory unit='KiB'>8388608</memory>
  <vcpu>2</vcpu>
  <memoryBacking><locked/></memoryBacking>
  <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices/>
</domain>"""

WIRING = {'node': 1, 'vcpu_pins': {'0': 12, '1': 13, '2': 14, '3': 15}, 'emulator_cpus': '8-11',
          'numatune': {'mode': 'strict', 'nodeset': '1'}, 'hugepages': {'size_kib': 1048576, 'pages': 64},
          'mmio64_mib': 262144, 'pcihole64_kib': 268435456,
          'ovmf_fw_cfg': {'name': FW_CFG_NAME, 'value': '262144'}}


def test_shape_reads_vcpus_memory_and_firmware() -> None:
    assert shape(DomainDefinition(BIOS_Q35)) == {'vcpus': 4, 'memory_mib': 65536, 'firmware': 'bios', 'pcie': True}
    assert shape(DomainDefinition(EFI)) == {'vcpus': 2, 'memory_mib': 8192, 'firmware': 'efi', 'pcie': False}


def test_a_bios_guest_gets_pins_memory_pages_and_pcihole64_and_keeps_the_rest() -> None:
    defn = DomainDefinition(BIOS_Q35)
    records = apply(defn, WIRING)
    actions = {r['element']: r['action'] for r in records}
    assert actions == {
        'cputune/vcpupin[@vcpu=0]': 'added', 'cputune/vcpupin[@vcpu=1]': 'added',
        'cputune/vcpupin[@vcpu=2]': 'added', 'cputune/vcpupin[@vcpu=3]': 'added',
        'cputune/vcpupin[@vcpu=7]': 'removed',   # a pin of a vCPU the domain does not have
        'cputune/emulatorpin': 'added', 'numatune/memory': 'added', 'memoryBacking/hugepages': 'added',
        "devices/controller[@model='pcie-root']/pcihole64": 'added',
    }
    root = defn.root
    assert [(p.get('vcpu'), p.get('cpuset')) for p in root.findall('cputune/vcpupin')] == [
        ('0', '12'), ('1', '13'), ('2', '14'), ('3', '15')]
    assert root.find('cputune/shares').text == '2048'      # the user's own setting stays
    assert root.find('cputune/emulatorpin').get('cpuset') == '8-11'
    assert dict(root.find('numatune/memory').attrib) == {'mode': 'strict', 'nodeset': '1'}
    assert dict(root.find('memoryBacking/hugepages/page').attrib) == {'size': '1048576', 'unit': 'KiB'}
    hole = root.find("devices/controller[@model='pcie-root']/pcihole64")
    assert hole.text == '268435456' and hole.get('unit') == 'KiB'
    assert root.find('sysinfo') is None
    assert root.find('devices/disk/source').get('file') == '/var/lib/libvirt/images/train01.qcow2'
    # libvirt's element order: memoryBacking before vcpu, cputune and numatune after it
    tags = [c.tag for c in root]
    assert tags.index('memory') < tags.index('memoryBacking') < tags.index('vcpu') < tags.index('cputune') \
        < tags.index('numatune') < tags.index('os')
    # a second write changes nothing
    again = DomainDefinition(defn.to_xml())
    assert {r['action'] for r in apply(again, WIRING)} == {'unchanged'}
    assert again.to_xml() == defn.to_xml()


def test_an_efi_guest_gets_the_ovmf_window_and_keeps_locked_memory() -> None:
    defn = DomainDefinition(EFI)
    wiring = dict(WIRING, vcpu_pins={'0': 14, '1': 15}, hugepages={'size_kib': 2048, 'pages': 4096})
    records = {r['element']: r for r in apply(defn, wiring)}
    entry = records['qemu:commandline -fw_cfg %s' % FW_CFG_NAME]
    assert entry['action'] == 'added' and entry['after'] == 'name=%s,string=262144' % FW_CFG_NAME
    ns = '{http://libvirt.org/schemas/domain/qemu/1.0}'
    assert [a.get('value') for a in defn.root.find(ns + 'commandline')] == ['-fw_cfg', entry['after']]
    assert defn.root.find('devices/controller') is None     # no pcihole64 for OVMF
    assert defn.root.find('memoryBacking/locked') is not None
    assert defn.root.find('memoryBacking/hugepages/page').get('size') == '2048'
    # a changed window is an update of that one element
    records = {r['element']: r['action'] for r in apply(defn, dict(wiring, mmio64_mib=524288))}
    assert records['qemu:commandline -fw_cfg %s' % FW_CFG_NAME] == 'updated'
    assert len(defn.root.find('{http://libvirt.org/schemas/domain/qemu/1.0}commandline')) == 2
    assert [a for e, a in records.items() if a != 'unchanged'] == ['updated']


def test_no_numa_information_writes_only_the_window() -> None:
    defn = DomainDefinition(BIOS_Q35)
    records = apply(defn, {'node': None, 'vcpu_pins': None, 'emulator_cpus': None, 'numatune': None,
                           'hugepages': None, 'mmio64_mib': 32768, 'pcihole64_kib': 33554432})
    assert [r['element'] for r in records] == ["devices/controller[@model='pcie-root']/pcihole64"]
    assert defn.root.find('numatune') is None


@pytest.mark.parametrize('xml,message', [
    ("<domain><name>x</name><memory>1</memory></domain>", "domain 'x' has no vCPU count"),
    ("<domain><name>x</name><vcpu>1</vcpu></domain>", "domain 'x' has no memory size"),
    ("<domain><name>x</name><vcpu>1</vcpu><memory unit='parsecs'>1</memory></domain>", "unknown memory unit 'parsecs'"),
])
def test_a_definition_without_what_the_wiring_needs_is_named(xml: str, message: str) -> None:
    with pytest.raises(DomainXmlError, match=message):
        shape(DomainDefinition(xml))


def test_guest_numa_needs_q35_and_keeps_a_slot_already_on_the_expander() -> None:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._domain_wiring import (
        DomainWiringError,
        guest_topology,
    )
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress
    i440fx = BIOS_Q35.replace("machine='q35'", "machine='pc'").replace("model='pcie-root'", "model='pci-root'")
    with pytest.raises(DomainWiringError, match="guest_numa needs a q35"):
        guest_topology(DomainDefinition(i440fx), [PciAddress.parse('0000:41:00.0')], [])
    placed = BIOS_Q35.replace('</devices>', """
    <controller type='pci' index='1' model='pcie-expander-bus'><target busNr='254'><node>0</node></target></controller>
    <controller type='pci' index='2' model='pcie-root-port'><address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></controller>
    <hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x41' slot='0x00' function='0x0'/></source>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></hostdev>
  </devices>""").replace('<vcpu placement', '<cpu><numa><cell id="0" cpus="0-3" memory="67108864" unit="KiB"/></numa></cpu><vcpu placement')
    defn = DomainDefinition(placed)
    records: list[dict] = []
    assert guest_topology(defn, [PciAddress.parse('0000:41:00.0')], records) == {
        'cell': 0, 'expander_index': 1, 'root_ports': [2]}
    assert {r['action'] for r in records} == {'unchanged'}, records
