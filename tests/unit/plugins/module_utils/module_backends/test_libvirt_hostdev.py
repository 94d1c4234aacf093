"""The libvirt_hostdev backend through libvirt's in-memory test:///default driver,
with companions read from simulated kernel trees."""
from __future__ import annotations

import itertools

import pytest

libvirt = pytest.importorskip('libvirt')

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import (  # noqa: E402
    DomainDefinition,
    HostdevError,
    RomSpec,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_hostdev import (  # noqa: E402
    DeviceNotFound,
    DeviceQuarantined,
    DeviceShared,
    DomainNotFound,
    DomainNotPersistent,
    DomainNotRunning,
    HostdevBackend,
    LibvirtUnreachable,
    Request,
    slot_requests,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._reset_health import Quarantine, record_path  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs  # noqa: E402
from tests.sim import simkernel  # noqa: E402

URI = 'test:///default'
A = PciAddress.parse
_names = itertools.count()

DOMAIN = '''<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </controller>
    <controller type='usb' index='0' model='qemu-xhci'>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </controller>
    <graphics type='vnc' port='-1' passwd='s3cret'/>
  </devices>
</domain>'''


@pytest.fixture(scope='module')
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {name: Sysfs(simkernel.materialize(name, str(tmp_path_factory.mktemp(name))))
            for name in ('amd_gpu', 'workstation', 'sriov')}


@pytest.fixture()
def conn():
    c = libvirt.open(URI)
    created = []

    def define(name: str | None = None, start: bool = False) -> str:
        name = name or 'vm%d' % next(_names)
        dom = c.defineXML(DOMAIN.format(name=name))
        if start:
            dom.create()
        created.append(name)
        return name

    c.define = define  # type: ignore[attr-defined]
    yield c
    for name in created:
        try:
            dom = c.lookupByName(name)
        except libvirt.libvirtError:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    c.close()


def run(conn, sysfs: Sysfs | None, check: bool = False, **kw) -> tuple[dict, list[str]]:
    kw.setdefault('uri', URI)
    kw['devices'] = [A(d) for d in kw.get('devices', [])]
    backend = HostdevBackend(Request(**kw), sysfs, conn=conn)
    return backend.run(check), backend.warnings


def hostdevs(conn, name: str) -> list[tuple[str, str | None, bool]]:
    xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return [(h.to_dict()['address'], h.to_dict()['guest_address'], h.multifunction) for h in DomainDefinition(xml).hostdevs()]


def test_gpu_with_all_companions_on_one_guest_slot(conn, trees) -> None:
    name = conn.define()
    res, warnings = run(conn, trees['amd_gpu'], domain=name, devices=['0d:00.0'])
    assert res['changed'] is True
    assert [(d['address'], d['action'], d['companion_of']) for d in res['devices']] == [
        ('0000:0d:00.0', 'added', None),
        ('0000:0d:00.1', 'added', '0000:0d:00.0'),
        ('0000:0d:00.2', 'added', '0000:0d:00.0'),
        ('0000:0d:00.3', 'added', '0000:0d:00.0'),
    ]
    # A new root port (index 2) holds the four functions, mirrored, fn0 multifunction.
    assert hostdevs(conn, name) == [
        ('0000:0d:00.0', '0000:02:00.0', True), ('0000:0d:00.1', '0000:02:00.1', False),
        ('0000:0d:00.2', '0000:02:00.2', False), ('0000:0d:00.3', '0000:02:00.3', False)]
    # Not on vfio-pci in that tree: the unmanaged default says what to do.
    assert any('0000:0d:00.0 is bound to amdgpu, not vfio-pci' in w for w in warnings)
    # The definition was read with its secrets and defined back with them.
    assert "passwd='s3cret'" in conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)


def test_check_mode_plans_and_defines_nothing_then_real_then_idempotent(conn, trees) -> None:
    name = conn.define()
    before = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    planned, _w = run(conn, trees['workstation'], check=True, domain=name, devices=['01:00.0'])
    assert planned['changed'] is True
    assert [d['action'] for d in planned['devices']] == ['added', 'added']
    assert conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    assert '<hostdev' not in planned['diff']['before'] and planned['diff']['after'].count('<hostdev') == 2

    real, _w = run(conn, trees['workstation'], domain=name, devices=['01:00.0'])
    assert real['changed'] is True
    assert real['diff']['after'].count('<hostdev') == 2
    again, _w = run(conn, trees['workstation'], domain=name, devices=['01:00.0'])
    assert again['changed'] is False
    assert {d['action'] for d in again['devices']} == {'unchanged'}
    again_check, _w = run(conn, trees['workstation'], check=True, domain=name, devices=['01:00.0'])
    assert again_check['changed'] is False
    assert again['diff']['before'] == again['diff']['after']


def test_absent_removes_device_and_companions_and_absent_of_absent_is_no_change(conn, trees) -> None:
    name = conn.define()
    run(conn, trees['workstation'], domain=name, devices=['01:00.0'])
    res, _w = run(conn, trees['workstation'], domain=name, devices=['01:00.0'], state='absent')
    assert res['changed'] is True
    assert [(d['address'], d['action']) for d in res['devices']] == [('0000:01:00.0', 'removed'), ('0000:01:00.1', 'removed')]
    assert hostdevs(conn, name) == []
    res, _w = run(conn, trees['workstation'], domain=name, devices=['01:00.0'], state='absent')
    assert res['changed'] is False


def test_companions_false_and_sriov_virtual_functions_are_not_companions(conn, trees) -> None:
    name = conn.define()
    res, _w = run(conn, trees['workstation'], domain=name, devices=['01:00.0'], companions=False)
    assert [d['address'] for d in res['devices']] == ['0000:01:00.0']
    # The PF 01:00.0 of the sriov tree has its VFs at 01:00.4-7 in the same slot: never companions.
    slots = slot_requests([A('01:00.0')], True, trees['sriov'], [])
    assert [str(a) for a in slots[0].functions] == ['0000:01:00.0']
    # And a VF never drags its siblings along.
    slots = slot_requests([A('01:00.5')], True, trees['sriov'], [])
    assert [str(a) for a in slots[0].functions] == ['0000:01:00.5']


def test_device_in_another_domain_is_refused_naming_it_unless_allowed(conn, trees) -> None:
    first = conn.define()
    second = conn.define()
    run(conn, trees['workstation'], domain=first, devices=['01:00.0'])
    with pytest.raises(DeviceShared, match=r"0000:01:00.0 is already assigned to domain '%s'.*allow_shared" % first):
        run(conn, trees['workstation'], domain=second, devices=['01:00.0'])
    assert hostdevs(conn, second) == []
    res, _w = run(conn, trees['workstation'], domain=second, devices=['01:00.0'], allow_shared=True)
    assert res['changed'] is True
    assert res['assignments']['0000:01:00.0'] == [first]


def test_rom_managed_and_guest_address(conn, trees) -> None:
    name = conn.define()
    res, warnings = run(conn, trees['workstation'], domain=name, devices=['01:00.0'], managed=True,
                        rom=RomSpec(file='/srv/vbios.rom', bar_on=True), guest_address=A('0000:07:00.0'))
    assert warnings == []  # managed: libvirt detaches the driver itself
    assert hostdevs(conn, name) == [('0000:01:00.0', '0000:07:00.0', True), ('0000:01:00.1', '0000:07:00.1', False)]
    assert [h['rom'] for h in res['hostdevs']] == [{'bar': 'on', 'file': '/srv/vbios.rom'}, None]
    assert all(h['managed'] for h in res['hostdevs'])


def test_empty_device_list_reports_only(conn, trees) -> None:
    name = conn.define()
    other = conn.define()
    run(conn, trees['workstation'], domain=other, devices=['01:00.0'])
    res, _w = run(conn, trees['workstation'], domain=name, devices=[])
    assert res['changed'] is False and res['devices'] == []
    assert res['assignments'] == {'0000:01:00.0': [other], '0000:01:00.1': [other]}


def test_errors_name_what_is_wrong(conn, trees) -> None:
    with pytest.raises(DomainNotFound, match=r"domain 'nosuchvm' is not defined at test:///default \(domains there: .*test"):
        run(conn, trees['workstation'], domain='nosuchvm', devices=['01:00.0'])
    name = conn.define()
    with pytest.raises(DeviceNotFound, match=r'PCI device 0000:99:00.0 does not exist under .*companions=false'):
        run(conn, trees['workstation'], domain=name, devices=['99:00.0'])
    with pytest.raises(DomainNotRunning, match=r"domain '%s' at test:///default is not running.*where=config" % name):
        run(conn, trees['workstation'], domain=name, devices=['01:00.0'], where='live')
    with pytest.raises(LibvirtUnreachable, match=r'cannot connect to libvirt at qemu:///system\?socket=/nonexistent/sock'):
        HostdevBackend(Request(domain=name, uri='qemu:///system?socket=/nonexistent/sock', devices=[]), None).run(False)


def test_start_and_restart(conn, trees) -> None:
    name = conn.define()
    res, _w = run(conn, trees['workstation'], check=True, domain=name, devices=['01:00.0'], start=True)
    assert res['power'] == 'started' and not conn.lookupByName(name).isActive()
    res, _w = run(conn, trees['workstation'], domain=name, devices=['01:00.0'], start=True)
    assert res['power'] == 'started' and conn.lookupByName(name).isActive()
    # Running, definition unchanged: no restart.
    res, _w = run(conn, trees['workstation'], domain=name, devices=['01:00.0'], restart=True, shutdown_timeout=0)
    assert res['power'] is None and res['changed'] is False
    # Running, definition changed: restarted (forced at once with shutdown_timeout=0).
    res, _w = run(conn, trees['workstation'], domain=name, devices=['01:00.0'], managed=True, restart=True,
                  shutdown_timeout=0)
    assert res['power'] == 'restarted' and res['changed'] is True
    assert conn.lookupByName(name).isActive()


def test_where_both_on_a_stopped_domain_changes_the_definition_and_warns(conn, trees) -> None:
    name = conn.define()
    res, warnings = run(conn, trees['workstation'], domain=name, devices=['01:00.0'], where='both')
    assert res['changed'] is True and res['live'] == []
    assert any('is not running: only its persistent definition was changed' in w for w in warnings)


def test_transient_domain_takes_live_changes_only(conn, trees) -> None:
    name = 'transient%d' % next(_names)
    dom = conn.createXML(DOMAIN.format(name=name), 0)
    try:
        with pytest.raises(DomainNotPersistent, match=r"domain '%s' .* is transient.*where=live" % name):
            run(conn, trees['workstation'], domain=name, devices=['01:00.0'])
        # Reading the assignments (no devices) works on any domain.
        res, _w = run(conn, trees['workstation'], domain=name, devices=[])
        assert res['changed'] is False
    finally:
        dom.destroy()


def test_define_xml_defines_a_missing_domain_check_mode_predicts_and_existing_ones_are_never_redefined(conn, trees) -> None:
    name = 'defined%d' % next(_names)
    xml = DOMAIN.format(name=name)
    planned, warnings = run(conn, trees['workstation'], check=True, domain=name, devices=['01:00.0'], define_xml=xml)
    assert planned['defined'] is True and planned['changed'] is True
    assert [d['action'] for d in planned['devices']] == ['added', 'added']
    assert planned['diff']['before'] == '' and planned['diff']['after'].count('<hostdev') == 2
    assert any('would be defined from define_xml' in w for w in warnings)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(name)  # check mode defined nothing

    real, _w = run(conn, trees['workstation'], domain=name, devices=['01:00.0'], define_xml=xml)
    try:
        assert real['defined'] is True and real['changed'] is True
        assert [h[0] for h in hostdevs(conn, name)] == ['0000:01:00.0', '0000:01:00.1']
        # the domain exists now: define_xml (even a different one) is not used again
        other = xml.replace('64</memory>', '128</memory>')
        again, _w = run(conn, trees['workstation'], domain=name, devices=['01:00.0'], define_xml=other)
        assert again['defined'] is False and again['changed'] is False
        assert '128' not in conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).split('</memory>')[0][-8:]
    finally:
        conn.lookupByName(name).undefine()


@pytest.mark.parametrize('xml,error,needle', [
    (DOMAIN.format(name='someone-else'), 'DomainXmlMismatch', "define_xml of domain 'newvm' names the domain 'someone-else'"),
    (DOMAIN.format(name='newvm').replace("type='test'", "type='nonsense'"), 'DomainXmlRejected',
     "libvirt at test:///default rejected the domain_xml of 'newvm'"),
    ('<domain><name>newvm', 'DomainXmlError', 'domain XML cannot be parsed'),
])
def test_define_xml_errors_name_the_domain(conn, trees, xml: str, error: str, needle: str) -> None:
    with pytest.raises(HostdevError) as info:
        run(conn, trees['workstation'], domain='newvm', devices=['01:00.0'], define_xml=xml)
    assert type(info.value).__name__ == error and needle in str(info.value)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName('newvm')


def test_wiring_of_a_domain_define_xml_would_create_is_predicted_as_the_real_run_writes_it(conn, trees) -> None:
    """Check mode on a domain that does not exist yet (the fleet's first check run): the wiring is
    planned on define_xml, and the real run writes the same elements."""
    name = 'wired%d' % next(_names)
    xml = DOMAIN.format(name=name).replace('<os>', '<vcpu>1</vcpu><os>')
    kw = {'domain': name, 'devices': ['01:00.0'], 'define_xml': xml, 'wiring': {'numa_mode': 'preferred'}}
    planned, _w = run(conn, trees['workstation'], check=True, **kw)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(name)
    real, _w = run(conn, trees['workstation'], **kw)
    try:
        assert planned['wiring'] == real['wiring']
        assert {e['element']: e['action'] for e in real['wiring']['elements']} == {
            'cputune/vcpupin[@vcpu=0]': 'added', 'cputune/emulatorpin': 'added', 'numatune/memory': 'added',
            "devices/controller[@model='pcie-root']/pcihole64": 'added'}
        again, _w = run(conn, trees['workstation'], **kw)
        assert again['changed'] is False
    finally:
        conn.lookupByName(name).undefine()


# ----------------------------------------------------------------------------- reset health before an attach
def _quarantine(sysfs: Sysfs, address: str, reason: str = 'its config space cannot be read (Input/output error)') -> None:
    rec = Quarantine.load(record_path(sysfs))
    rec.entries[address] = {'address': address, 'reason': reason, 'time': '2026-01-01T00:00:00Z', 'source': 'test'}
    rec.save()


def test_a_quarantined_device_is_refused_unless_allowed_and_a_device_already_given_is_not_checked(conn, tmp_path) -> None:
    sysfs = Sysfs(simkernel.materialize('workstation', str(tmp_path / 'ws')))
    _quarantine(sysfs, '0000:01:00.1')  # the audio companion
    name = conn.define()
    before = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    with pytest.raises(DeviceQuarantined) as info:
        run(conn, sysfs, domain=name, devices=['01:00.0'])
    assert '0000:01:00.1 is quarantined since 2026-01-01T00:00:00Z: its config space cannot be read' in str(info.value)
    assert 'allow_quarantined' in str(info.value) and 'gpu_quarantine state=cleared' in str(info.value)
    assert info.value.details['quarantined'] == ['0000:01:00.1']
    assert conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before

    res, warnings = run(conn, sysfs, domain=name, devices=['01:00.0'], allow_quarantined=True)
    assert res['changed'] is True and [d['action'] for d in res['devices']] == ['added', 'added']
    assert any('0000:01:00.1 is quarantined' in w and 'allow_quarantined is true' in w for w in warnings)
    # already in the definition: nothing is added, nothing is refused
    again, _w = run(conn, sysfs, domain=name, devices=['01:00.0'])
    assert again['changed'] is False


def test_a_device_whose_config_space_does_not_answer_is_quarantined_and_refused(conn, tmp_path) -> None:
    sysfs = Sysfs(simkernel.materialize('workstation', str(tmp_path / 'ws')))
    with open(sysfs.sys('bus/pci/devices/0000:01:00.0/config'), 'r+b') as handle:
        handle.write(b'\xff' * 4)
    name = conn.define()
    for check in (True, False):
        with pytest.raises(DeviceQuarantined) as info:
            run(conn, sysfs, check=check, domain=name, devices=['01:00.0'], allow_quarantined=True)
        assert '0000:01:00.0 fails its health check: its config space reads vendor id ffff' in str(info.value)
        entries = Quarantine.load(record_path(sysfs)).entries
        # check mode writes nothing; the real run records it
        assert list(entries) == ([] if check else ['0000:01:00.0'])
    assert entries['0000:01:00.0']['source'] == 'libvirt_hostdev'
    assert hostdevs(conn, name) == []
