"""Mediated devices (vGPUs) and SR-IOV virtual functions in libvirt_hostdev: parsing of the
``devices`` entries, the ``<hostdev type='mdev'>`` model, and the backend through libvirt's
in-memory test:///default driver (which stores mdev hostdevs as the qemu driver does)."""
from __future__ import annotations

import itertools
import os

import pytest

libvirt = pytest.importorskip('libvirt')

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import (  # noqa: E402
    DomainDefinition,
    MdevSpec,
    MdevSpecError,
    mdev_hostdev_xml,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddressError  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_hostdev import (  # noqa: E402
    DeviceShared,
    HostdevBackend,
    build_request,
    parse_devices,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.modules.libvirt_hostdev import argument_spec  # noqa: E402
from tests.sim import simkernel  # noqa: E402

URI = 'test:///default'
U1 = '9d5b7c2e-58a1-4f0e-9c1d-2b1f6f0e7a31'
U2 = '1f0e2d3c-4b5a-4968-8776-a5b4c3d2e1f0'
_names = itertools.count()

DOMAIN = '''<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
    {graphics}
  </devices>
</domain>'''


@pytest.fixture(scope='module')
def sriov(tmp_path_factory: pytest.TempPathFactory) -> Sysfs:
    return Sysfs(simkernel.materialize('sriov', str(tmp_path_factory.mktemp('sriov'))))


@pytest.fixture()
def conn():
    c = libvirt.open(URI)
    created = []

    def define(graphics: bool = True) -> str:
        name = 'mdev%d' % next(_names)
        c.defineXML(DOMAIN.format(name=name, graphics="<graphics type='vnc' port='-1'/>" if graphics else ''))
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


def params(**kw) -> dict:
    out = {k: v.get('default') for k, v in argument_spec().items()}
    out.update({'uri': URI, 'unplug_timeout': 30.0, 'shutdown_timeout': 120.0})
    out.update(kw)
    return out


def run(conn, sysfs: Sysfs | None, check: bool = False, **kw) -> tuple[dict, list[str]]:
    backend = HostdevBackend(build_request(params(**kw)), sysfs, conn=conn)
    return backend.run(check), backend.warnings


def mdevs(conn, name: str) -> list[dict]:
    xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return [h.to_dict() for h in DomainDefinition(xml).mdev_hostdevs()]


# -- the entries of ``devices`` ------------------------------------------------------------

def test_entries_split_into_pci_addresses_and_mdevs() -> None:
    devices, specs = parse_devices(['41:00.4', 'mdev:%s' % U1.upper(), {'mdev': U2, 'display': True},
                                    {'mdev': U1}])
    assert [str(d) for d in devices] == ['0000:41:00.4']
    # case folded, listed once; a later entry without display does not undo an earlier one
    assert specs == [MdevSpec(U1), MdevSpec(U2, True)]


@pytest.mark.parametrize('entry,needle', [
    ('mdev:not-a-uuid', "devices[0] mdev 'not-a-uuid' is not a UUID"),
    ({'mdev': 'xyz'}, "devices[0] mdev 'xyz' is not a UUID"),
    ({'uuid': U1}, 'a dict entry is a mediated device, {mdev: <uuid>, display: <bool>} (unknown keys: uuid)'),
    ({'mdev': U1, 'display': 'yes'}, 'display must be true or false'),
    (42, "devices[0] 42: expected a PCI address, mdev:<uuid> or {mdev: <uuid>}"),
])
def test_bad_entries_are_refused_naming_them(entry, needle) -> None:
    with pytest.raises(MdevSpecError) as exc:
        parse_devices([entry])
    assert needle in str(exc.value)
    assert isinstance(exc.value, FleetGpuError)


def test_a_bad_pci_address_is_still_a_pci_address_error() -> None:
    with pytest.raises(PciAddressError):
        parse_devices(['41:00.9'])


def test_the_same_mdev_with_two_display_settings_is_refused() -> None:
    with pytest.raises(MdevSpecError, match='listed twice with different display settings'):
        parse_devices([{'mdev': U1, 'display': True}, {'mdev': U1, 'display': False}])


def test_guest_address_is_for_pci_devices_only() -> None:
    with pytest.raises(FleetGpuError, match='libvirt places mediated devices itself'):
        build_request(params(domain='x', devices=['mdev:%s' % U1], guest_address='06:00.0'))


def test_standalone_mdev_xml_is_what_libvirt_documents() -> None:
    xml = mdev_hostdev_xml(MdevSpec(U1, True))
    assert xml == ('<hostdev mode="subsystem" type="mdev" model="vfio-pci" display="on"><source>'
                   '<address uuid="%s"/></source></hostdev>' % U1)
    assert 'display' not in mdev_hostdev_xml(MdevSpec(U1))


# -- the backend -----------------------------------------------------------------------------

def test_mdev_check_real_repeat_and_diff(conn, tmp_path) -> None:
    name = conn.define()
    # the mdev exists on this (simulated) host: no warning
    (tmp_path / 'sys' / 'bus' / 'mdev' / 'devices' / U1).mkdir(parents=True)
    sysfs = Sysfs(str(tmp_path / 'sys'))
    before = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    plan, warnings = run(conn, sysfs, check=True, domain=name, devices=[{'mdev': U1, 'display': True}])
    assert plan['changed'] is True and warnings == []
    assert plan['devices'] == [{'address': None, 'mdev': U1, 'action': 'added', 'guest_address': None,
                                'companion_of': None, 'display': True, 'detail': ''}]
    assert conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    assert "type=\"mdev\"" in plan['diff']['after'] and 'type="mdev"' not in plan['diff']['before']

    real, _ = run(conn, sysfs, domain=name, devices=[{'mdev': U1, 'display': True}])
    assert real['changed'] is True
    assert [(m['uuid'], m['model'], m['display']) for m in mdevs(conn, name)] == [(U1, 'vfio-pci', True)]
    assert real['mdevs'] == mdevs(conn, name)
    assert plan['diff']['after'].count('<hostdev') == real['diff']['after'].count('<hostdev') == 1

    again, _ = run(conn, sysfs, domain=name, devices=['mdev:%s' % U1])
    assert again['changed'] is False and again['devices'][0]['action'] == 'unchanged'
    assert again['mdev_assignments'] == {U1: [name]}
    check_again, _ = run(conn, sysfs, check=True, domain=name, devices=[{'mdev': U1, 'display': True}])
    assert check_again['changed'] is False

    # display off is an update of the same entry, not a second one
    off, _ = run(conn, sysfs, domain=name, devices=[{'mdev': U1, 'display': False}])
    assert off['changed'] is True and off['devices'][0]['action'] == 'updated'
    assert [(m['uuid'], m['display']) for m in mdevs(conn, name)] == [(U1, False)]


def test_mdev_absent_and_absent_of_absent(conn) -> None:
    name = conn.define()
    run(conn, None, domain=name, devices=['mdev:%s' % U1, 'mdev:%s' % U2])
    assert sorted(m['uuid'] for m in mdevs(conn, name)) == sorted([U1, U2])
    gone, _ = run(conn, None, domain=name, devices=['mdev:%s' % U1], state='absent')
    assert gone['changed'] is True and gone['devices'][0]['action'] == 'removed'
    assert [m['uuid'] for m in mdevs(conn, name)] == [U2]
    again, _ = run(conn, None, domain=name, devices=['mdev:%s' % U1], state='absent')
    assert again['changed'] is False and again['devices'][0]['detail'] == 'not in the domain'


def test_display_without_graphics_is_refused_naming_domain_and_uuid(conn) -> None:
    name = conn.define(graphics=False)
    with pytest.raises(MdevSpecError) as exc:
        run(conn, None, domain=name, devices=[{'mdev': U1, 'display': True}])
    assert U1 in str(exc.value) and repr(name) in str(exc.value) and '<graphics>' in str(exc.value)
    assert mdevs(conn, name) == []
    # without display the same domain takes it
    ok, _ = run(conn, None, domain=name, devices=[{'mdev': U1}])
    assert ok['changed'] is True


def test_mdev_of_another_domain_is_refused_unless_allowed(conn) -> None:
    first, second = conn.define(), conn.define()
    run(conn, None, domain=first, devices=['mdev:%s' % U1])
    with pytest.raises(DeviceShared, match="mdev %s is already assigned to domain '%s'" % (U1, first)):
        run(conn, None, domain=second, devices=['mdev:%s' % U1])
    assert mdevs(conn, second) == []
    shared, _ = run(conn, None, domain=second, devices=['mdev:%s' % U1], allow_shared=True)
    assert shared['changed'] is True


def test_missing_mdev_is_attached_to_the_definition_with_a_warning(conn, tmp_path) -> None:
    name = conn.define()
    res, warnings = run(conn, Sysfs(str(tmp_path)), domain=name, devices=['mdev:%s' % U2])
    assert res['changed'] is True
    assert any('mdev %s does not exist on this host now' % U2 in w and 'gpu_partition' in w for w in warnings), warnings


def test_mdev_and_pci_devices_in_one_task_and_a_virtual_function_has_no_companions(conn, sriov) -> None:
    name = conn.define()
    vfs = sorted(a for a in os.listdir(sriov.sys('bus', 'pci', 'devices'))
                 if os.path.lexists(sriov.sys('bus', 'pci', 'devices', a, 'physfn')))
    assert vfs, 'the sriov topology has virtual functions'
    res, _ = run(conn, sriov, domain=name, devices=[vfs[0], 'mdev:%s' % U1], managed=True)
    assert [(d['address'], d['mdev'] if 'mdev' in d else None, d['action']) for d in res['devices']] == [
        (vfs[0], None, 'added'), (None, U1, 'added')]
    assert [h['address'] for h in res['hostdevs']] == [vfs[0]]
    assert [m['uuid'] for m in res['mdevs']] == [U1]
