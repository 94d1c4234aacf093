"""The <hostdev> model of _hostdev.py on plain domain XML (lxml only, no libvirt)."""
from __future__ import annotations

import pytest
from lxml import etree

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import (
    DomainDefinition,
    DomainXmlError,
    PlacementError,
    RomSpec,
    SlotRequest,
    canonical_xml,
    hostdev_xml,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._topology import parse_cpulist

A = PciAddress.parse

Q35 = '''<domain type='kvm'>
  <name>q35vm</name>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0' multifunction='on'/>
    </controller>
    <controller type='pci' index='2' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x1'/>
    </controller>
    <controller type='usb' index='0' model='qemu-xhci'>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </controller>
    {extra}
  </devices>
</domain>'''

I440FX = '''<domain type='kvm'>
  <name>pcvm</name>
  <devices>
    <controller type='pci' index='0' model='pci-root'/>
    <video><address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/></video>
    <controller type='usb' index='0'><address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/></controller>
    {extra}
  </devices>
</domain>'''


def hostdev(src: str, guest: str | None = None, managed: str = 'no', multifunction: bool = False) -> str:
    s = A(src)
    xml = ("<hostdev mode='subsystem' type='pci' managed='%s'><source><address domain='0x%04x' bus='0x%02x' "
           "slot='0x%02x' function='0x%x'/></source>" % (managed, s.domain, s.bus, s.slot, s.function))
    if guest:
        g = A(guest)
        xml += ("<address type='pci' domain='0x%04x' bus='0x%02x' slot='0x%02x' function='0x%x'%s/>"
                % (g.domain, g.bus, g.slot, g.function, " multifunction='on'" if multifunction else ''))
    return xml + '</hostdev>'


def q35(*hostdevs: str) -> DomainDefinition:
    return DomainDefinition(Q35.format(extra=''.join(hostdevs)))


def summary(defn: DomainDefinition) -> list[tuple[str, str | None, bool, bool]]:
    return [(str(h.source), str(h.guest) if h.guest else None, h.managed, h.multifunction) for h in defn.hostdevs()]


@pytest.mark.parametrize('functions,listed,expected', [
    # GPU + audio on a new slot: the empty root port 2 is used, fn0 multifunction.
    (['41:00.0', '41:00.1'], ['41:00.0'],
     [('0000:41:00.0', '0000:02:00.0', False, True), ('0000:41:00.1', '0000:02:00.1', False, False)]),
    # A single function: no multifunction flag.
    (['41:00.0'], ['41:00.0'], [('0000:41:00.0', '0000:02:00.0', False, False)]),
    # Four functions (GPU, audio, USB, UCSI) mirror the host functions.
    (['41:00.0', '41:00.1', '41:00.2', '41:00.3'], ['41:00.0'],
     [('0000:41:00.0', '0000:02:00.0', False, True), ('0000:41:00.1', '0000:02:00.1', False, False),
      ('0000:41:00.2', '0000:02:00.2', False, False), ('0000:41:00.3', '0000:02:00.3', False, False)]),
    # Without host function 0 the guest functions are numbered from 0.
    (['41:00.1', '41:00.3'], ['41:00.1'],
     [('0000:41:00.1', '0000:02:00.0', False, True), ('0000:41:00.3', '0000:02:00.1', False, False)]),
])
def test_present_places_one_slot_multifunction(functions: list[str], listed: list[str], expected: list) -> None:
    defn = q35()
    changes = defn.plan_present(SlotRequest([A(f) for f in functions], [A(f) for f in listed]), managed=False)
    assert [c.action for c in changes] == ['added'] * len(functions)
    assert summary(defn) == expected
    companions = [c.companion_of for c in changes]
    assert companions[0] is None
    assert all(str(c) == str(A(listed[0])) for c in companions[1:])


def test_present_adds_a_root_port_when_none_is_free() -> None:
    defn = q35(hostdev('05:00.0', '02:00.0'))
    defn.plan_present(SlotRequest([A('41:00.0'), A('41:00.1')], [A('41:00.0')]), managed=False)
    ports = [c for c in defn.root.iter('controller') if c.get('model') == 'pcie-root-port']
    assert [p.get('index') for p in ports] == ['1', '2', '3']
    assert summary(defn)[1:] == [('0000:41:00.0', '0000:03:00.0', False, True), ('0000:41:00.1', '0000:03:00.1', False, False)]
    # A second slot in the same run gets yet another port.
    defn.plan_present(SlotRequest([A('42:00.0')], [A('42:00.0')]), managed=False)
    assert summary(defn)[-1] == ('0000:42:00.0', '0000:04:00.0', False, False)


def test_present_on_i440fx_takes_lowest_free_bus0_slot() -> None:
    defn = DomainDefinition(I440FX.format(extra=''))
    defn.plan_present(SlotRequest([A('41:00.0'), A('41:00.1')], [A('41:00.0')]), managed=True)
    assert summary(defn) == [('0000:41:00.0', '0000:00:03.0', True, True), ('0000:41:00.1', '0000:00:03.1', True, False)]


# What libvirt 9 keeps of a diskless i440fx domain without video or USB: not one guest PCI address.
BARE_I440FX = '''<domain type='qemu'>
  <name>bare</name>
  <devices>
    <controller type='usb' index='0' model='none'/>
    <controller type='pci' index='0' model='pci-root'/>
    <memballoon model='none'/>
  </devices>
</domain>'''


def test_present_on_a_definition_without_addresses_still_shares_one_slot() -> None:
    """GPU and audio on one multifunction slot, past the PIIX3's slot 1 that the XML does not show;
    a lone function is left to libvirt."""
    defn = DomainDefinition(BARE_I440FX)
    defn.plan_present(SlotRequest([A('01:00.0'), A('01:00.1')], [A('01:00.0')]), managed=False)
    assert summary(defn) == [('0000:01:00.0', '0000:00:02.0', False, True), ('0000:01:00.1', '0000:00:02.1', False, False)]
    alone = DomainDefinition(BARE_I440FX)
    alone.plan_present(SlotRequest([A('02:00.0')], [A('02:00.0')]), managed=False)
    assert summary(alone) == [('0000:02:00.0', None, False, False)]


@pytest.mark.parametrize('existing,functions,managed,expected_actions', [
    # Already there, same settings: nothing to do.
    ([hostdev('41:00.0', '02:00.0', multifunction=True), hostdev('41:00.1', '02:00.1')],
     ['41:00.0', '41:00.1'], False, ['unchanged', 'unchanged']),
    # Managed flag differs: updated in place, not duplicated.
    ([hostdev('41:00.0', '02:00.0')], ['41:00.0'], True, ['updated']),
    # GPU there alone, audio joins it: audio added on the same guest slot, fn0 gets multifunction.
    ([hostdev('41:00.0', '02:00.0')], ['41:00.0', '41:00.1'], False, ['updated', 'added']),
])
def test_present_is_idempotent_and_merges(existing: list[str], functions: list[str], managed: bool,
                                          expected_actions: list[str]) -> None:
    defn = q35(*existing)
    changes = defn.plan_present(SlotRequest([A(f) for f in functions], [A(functions[0])]), managed=managed)
    assert [c.action for c in changes] == expected_actions
    assert len(defn.hostdevs()) == len(functions)
    assert [s for s, _g, _m, _mf in summary(defn)] == [str(A(f)) for f in functions]
    if len(functions) == 2:
        assert summary(defn)[0][1:] == ('0000:02:00.0', managed, True)
        assert summary(defn)[1][1] == '0000:02:00.1'
    # A second plan on the result changes nothing.
    again = defn.plan_present(SlotRequest([A(f) for f in functions], [A(functions[0])]), managed=managed)
    assert {c.action for c in again} == {'unchanged'}


def test_rom_applies_to_listed_devices_only_and_merges() -> None:
    defn = q35()
    slot = SlotRequest([A('41:00.0'), A('41:00.1')], [A('41:00.0')])
    defn.plan_present(slot, managed=False, rom=RomSpec(file='/srv/gpu.rom', bar_on=True))
    assert [h.rom for h in defn.hostdevs()] == [{'bar': 'on', 'file': '/srv/gpu.rom'}, None]
    changes = defn.plan_present(slot, managed=False, rom=RomSpec(bar_on=False))
    assert [c.action for c in changes] == ['updated', 'unchanged']
    assert defn.hostdevs()[0].rom == {'bar': 'off', 'file': '/srv/gpu.rom'}
    # <rom> sits right after <source>, where libvirt's schema puts it.
    assert [c.tag for c in defn.hostdevs()[0].elem] == ['source', 'rom', 'address']


def test_guest_address_moves_existing_entries_and_refuses_taken_slots() -> None:
    defn = q35(hostdev('41:00.0', '02:00.0'))
    changes = defn.plan_present(SlotRequest([A('41:00.0'), A('41:00.1')], [A('41:00.0')]), managed=False,
                                guest_address=A('0000:09:00.0'))
    assert [c.action for c in changes] == ['updated', 'added']
    assert summary(defn) == [('0000:41:00.0', '0000:09:00.0', False, True), ('0000:41:00.1', '0000:09:00.1', False, False)]
    with pytest.raises(PlacementError, match='guest address 0000:01:00.0 .* taken'):
        defn.plan_present(SlotRequest([A('42:00.0')], [A('42:00.0')]), managed=False, guest_address=A('01:00.0'))


@pytest.mark.parametrize('existing,remove,expected_actions,left', [
    ([hostdev('41:00.0', '02:00.0'), hostdev('41:00.1', '02:00.1')], ['41:00.0', '41:00.1'],
     ['removed', 'removed'], []),
    ([hostdev('41:00.0', '02:00.0'), hostdev('42:00.0', '03:00.0')], ['41:00.0'], ['removed'], ['0000:42:00.0']),
    ([], ['41:00.0'], ['unchanged'], []),
    ([hostdev('42:00.0')], ['41:00.0'], ['unchanged'], ['0000:42:00.0']),
])
def test_absent(existing: list[str], remove: list[str], expected_actions: list[str], left: list[str]) -> None:
    defn = q35(*existing)
    changes = defn.plan_absent([A(a) for a in remove])
    assert [c.action for c in changes] == expected_actions
    assert [str(s) for s in defn.sources()] == left


def test_other_hostdev_kinds_are_ignored() -> None:
    usb = "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0x5678'/></source></hostdev>"
    defn = q35(usb, hostdev('41:00.0', '02:00.0'))
    assert [str(s) for s in defn.sources()] == ['0000:41:00.0']
    assert len(defn.root.findall('devices/hostdev')) == 2


@pytest.mark.parametrize('xml,message', [
    ('<domain><name>x', 'cannot be parsed'),
    ('<network><name>x</name></network>', 'expected a <domain>'),
])
def test_bad_xml(xml: str, message: str) -> None:
    with pytest.raises(DomainXmlError, match=message):
        DomainDefinition(xml)


def test_canonical_form_makes_diffs_show_only_changes() -> None:
    before = Q35.format(extra='')
    defn = DomainDefinition(before)
    defn.plan_present(SlotRequest([A('41:00.0')], [A('41:00.0')]), managed=False)
    old = canonical_xml(before).splitlines()
    new = defn.to_xml().splitlines()
    added = [line for line in new if line not in old]
    assert added and all('hostdev' in line or 'address' in line or 'source' in line for line in added)
    assert canonical_xml(defn.to_xml()) == defn.to_xml()


def test_standalone_hostdev_xml_and_sources() -> None:
    xml = hostdev_xml(A('41:00.1'), managed=True, rom=RomSpec(bar_on=False))
    elem = etree.fromstring(xml)
    assert elem.get('managed') == 'yes'
    assert elem.find('source/address').attrib == {'domain': '0x0000', 'bus': '0x41', 'slot': '0x00', 'function': '0x1'}
    assert elem.find('rom').get('bar') == 'off'
    assert DomainDefinition(Q35.format(extra=hostdev('41:00.1'))).sources() == [A('41:00.1')]


@pytest.mark.parametrize('nodeset,expected', [
    ('1', [1]), ('0-3', [0, 1, 2, 3]), ('0-3,^2', [0, 1, 3]), ('0,2', [0, 2]), ('x,1', [1]), ('', []),
])
def test_numa_nodes_of_the_domain(nodeset: str, expected: list[int]) -> None:
    assert parse_cpulist(nodeset, strict=False) == expected
    xml = Q35.format(extra='').replace('<devices>', "<numatune><memory mode='strict' nodeset='%s'/></numatune><devices>" % nodeset)
    assert DomainDefinition(xml).numa_nodes() == expected
    assert q35().numa_nodes() == []


def test_read_only_definition_without_lxml_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """libvirt_gpu_info reads with virsh and the standard library where lxml is missing."""
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _hostdev
    xml = Q35.replace('<devices>', '<devices>\n    <hostdev mode="subsystem" type="pci" managed="no"><source>'
                                   '<address domain="0x0000" bus="0x41" slot="0x00" function="0x0"/></source></hostdev>', 1)
    xml = xml.replace('<name>q35vm</name>', '<name>q35vm</name><numatune><memory mode="strict" nodeset="0-1"/></numatune>')
    with_lxml = DomainDefinition(xml)
    monkeypatch.setattr(_hostdev, 'HAS_LXML', False)
    plain = DomainDefinition(xml, read_only=True)
    assert plain.sources() == with_lxml.sources() == [A('0000:41:00.0')]
    assert plain.numa_nodes() == with_lxml.numa_nodes() == [0, 1]
    assert plain.name == 'q35vm'
    with pytest.raises(DomainXmlError, match='lxml is not installed'):
        DomainDefinition(xml)   # a change needs lxml
    with pytest.raises(DomainXmlError, match='DTD or entities'):
        DomainDefinition('<!DOCTYPE d [<!ENTITY x "y">]><domain/>', read_only=True)
    with pytest.raises(DomainXmlError, match='cannot be parsed'):
        DomainDefinition('<domain>', read_only=True)
