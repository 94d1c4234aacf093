"""Live attach and detach of the libvirt_hostdev backend on a running domain of libvirt's
test:///default driver, whose guest is faked at one seam: the driver has no hot-plug, so
``GuestDomain`` keeps the live hostdevs itself and behaves as QEMU with a guest OS does - an
attach shows at once, a detach only asks the guest, which releases the device after a number of
reads of the live XML (0: at once; None: never), and a second request for a pending unplug is
refused with QEMU's message."""
from __future__ import annotations

import itertools
import time

import pytest

libvirt = pytest.importorskip('libvirt')

from lxml import etree  # noqa: E402

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import DomainDefinition, HostdevError  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import libvirt_hostdev as backend  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_hostdev import (  # noqa: E402
    HostdevBackend,
    Request,
    UnplugPending,
    build_request,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.modules.libvirt_hostdev import argument_spec  # noqa: E402

URI = 'test:///default'
A = PciAddress.parse
GPU = '0000:02:00.0'
_names = itertools.count()

DOMAIN = '''<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
  </devices>
</domain>'''


class GuestError(libvirt.libvirtError):
    """A libvirt error with the message QEMU would give (libvirtError reads it from libvirt's last error)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg

    def get_error_message(self) -> str:
        return self.msg


class GuestDomain:
    """A running test:///default domain with live PCI hostdevs and a guest that releases them late."""

    def __init__(self, dom, release_after: int | None) -> None:
        self._dom = dom
        self.release_after = release_after
        self.hostdevs: dict[str, str] = {}       # host address -> hostdev XML in the running domain
        self.pending: dict[str, int | None] = {}  # host address -> reads of the live XML until released
        self.calls: list[tuple[str, str]] = []
        self.reads = 0
        self.polls = 0  # reads while an unplug was pending

    def __getattr__(self, name: str):
        return getattr(self._dom, name)

    @staticmethod
    def _source(xml: str) -> str:
        return str(DomainDefinition('<domain><devices>%s</devices></domain>' % xml).sources()[0])

    def XMLDesc(self, flags: int = 0) -> str:
        xml = self._dom.XMLDesc(flags)
        if flags & libvirt.VIR_DOMAIN_XML_INACTIVE:
            return xml
        self.reads += 1
        self.polls += bool(self.pending)
        for addr, left in list(self.pending.items()):
            if left is not None:
                left -= 1
                self.pending[addr] = left
                if left <= 0:
                    del self.pending[addr]
                    del self.hostdevs[addr]
        root = etree.fromstring(xml)
        devices = root.find('devices')
        for hostdev in self.hostdevs.values():
            devices.append(etree.fromstring(hostdev))
        return etree.tostring(root, encoding='unicode')

    def attachDeviceFlags(self, xml: str, flags: int) -> int:
        assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
        addr = self._source(xml)
        self.calls.append(('attach', addr))
        self.hostdevs[addr] = xml
        return 0

    def detachDeviceFlags(self, xml: str, flags: int) -> int:
        assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
        addr = self._source(xml)
        self.calls.append(('detach', addr))
        if addr in self.pending:
            # the guest is notified again, and now answers within release_after reads
            self.pending[addr] = self.release_after
            raise GuestError("internal error: unable to execute QEMU command 'device_del': "
                             "Device hostdev0 is already in the process of unplug")
        if self.release_after == 0:
            del self.hostdevs[addr]
        else:
            self.pending[addr] = self.release_after
        return 0


class Conn:
    """The test:///default connection, handing out the GuestDomain for its domain."""

    def __init__(self, conn, guest: GuestDomain) -> None:
        self._conn = conn
        self.guest = guest

    def __getattr__(self, name: str):
        return getattr(self._conn, name)

    def lookupByName(self, name: str):
        return self.guest if name == self.guest.name() else self._conn.lookupByName(name)

    def listAllDomains(self, flags: int = 0) -> list:
        return [self.guest if d.name() == self.guest.name() else d for d in self._conn.listAllDomains(flags)]


@pytest.fixture()
def guest():
    conn = libvirt.open(URI)
    name = 'live%d' % next(_names)
    dom = conn.defineXML(DOMAIN.format(name=name))
    dom.create()
    made: list[Conn] = []

    def make(release_after: int | None = 0) -> Conn:
        made.append(Conn(conn, GuestDomain(dom, release_after)))
        return made[-1]

    yield make
    dom.destroy()
    dom.undefine()
    conn.close()


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, 'UNPLUG_POLL', 0.01)


def run(conn: Conn, check: bool = False, **kw) -> dict:
    kw['devices'] = [A(d) for d in kw.get('devices', [GPU])]
    kw.setdefault('companions', False)
    kw.setdefault('where', 'live')
    return HostdevBackend(Request(domain=conn.guest.name(), uri=URI, **kw), None, conn=conn).run(check)


def live_sources(conn: Conn) -> list[str]:
    return [str(a) for a in DomainDefinition(conn.guest.XMLDesc(0)).sources()]


def test_attach_then_a_detach_the_guest_completes_at_once(guest) -> None:
    conn = guest(release_after=0)
    plan = run(conn, check=True)
    assert plan['changed'] is True and plan['live'] == [{'address': GPU, 'action': 'added'}]
    assert conn.guest.calls == []
    done = run(conn)
    assert done['changed'] is True and done['live'] == [{'address': GPU, 'action': 'added'}]
    assert live_sources(conn) == [GPU]
    assert run(conn)['changed'] is False

    plan = run(conn, check=True, state='absent')
    assert plan['changed'] is True and plan['live'] == [{'address': GPU, 'action': 'removed'}]
    assert ('detach', GPU) not in conn.guest.calls and live_sources(conn) == [GPU]
    done = run(conn, state='absent')
    assert done['changed'] is True and done['unplug_pending'] is False
    assert done['live'] == [{'address': GPU, 'action': 'removed'}]
    assert done['devices'] == [{'address': GPU, 'action': 'removed', 'guest_address': None, 'companion_of': None,
                                'detail': ''}]
    assert live_sources(conn) == []
    again = run(conn, state='absent')
    assert again['changed'] is False and again['live'] == [{'address': GPU, 'action': 'unchanged'}]
    assert conn.guest.calls.count(('detach', GPU)) == 1
    # The persistent definition was never touched.
    assert DomainDefinition(conn.guest.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).sources() == []


def test_a_detach_returns_only_once_the_guest_has_released_the_device(guest) -> None:
    conn = guest(release_after=4)
    run(conn)
    done = run(conn, state='absent', unplug_timeout=30)
    assert done['changed'] is True and done['unplug_pending'] is False
    # the module read the live XML until the guest let go, at the fourth read after the request
    assert conn.guest.polls == 4
    assert live_sources(conn) == []


def test_a_guest_that_never_releases_the_device_fails_naming_domain_and_device(guest) -> None:
    conn = guest(release_after=None)
    run(conn)
    name = conn.guest.name()
    started = time.monotonic()
    with pytest.raises(UnplugPending) as err:
        run(conn, state='absent', unplug_timeout=0.3)
    waited = time.monotonic() - started
    assert 0.3 <= waited < 5, waited
    msg = str(err.value)
    assert "live detach of %s from domain '%s' at %s is still pending after 0.3 s" % (GPU, name, URI) in msg
    assert 'unplug_timeout' in msg
    result = err.value.result()
    assert result['unplug_pending'] is True and result['pending'] == [GPU] and result['changed'] is True
    assert result['live'] == [{'address': GPU, 'action': 'removed'}]
    assert live_sources(conn) == [GPU]

    # unplug_timeout=0: one read right after the request, no waiting.
    started = time.monotonic()
    with pytest.raises(UnplugPending, match='still pending after 0 s'):
        run(conn, state='absent', unplug_timeout=0)
    assert time.monotonic() - started < 1

    # The guest answers at last: the next run's request meets QEMU's "already in the process of
    # unplug", and the run waits for that same unplug.
    conn.guest.release_after = 2
    done = run(conn, state='absent')
    assert done['changed'] is True and done['unplug_pending'] is False and live_sources(conn) == []
    assert conn.guest.calls.count(('detach', GPU)) == 3


def test_check_mode_of_a_pending_detach_predicts_and_asks_nothing(guest) -> None:
    conn = guest(release_after=None)
    run(conn)
    plan = run(conn, check=True, state='absent', unplug_timeout=0)
    assert plan['changed'] is True and plan['unplug_pending'] is False
    assert ('detach', GPU) not in conn.guest.calls and live_sources(conn) == [GPU]


def params(**kw) -> dict:
    out = {name: spec.get('default') for name, spec in argument_spec().items()}
    out.update(domain='vm1', devices=[GPU], **kw)
    return out


def test_unplug_timeout_is_passed_on_and_a_negative_one_is_refused_naming_it() -> None:
    assert build_request(params()).unplug_timeout == 30.0
    assert build_request(params(unplug_timeout=0.0)).unplug_timeout == 0.0
    with pytest.raises(HostdevError, match=r'^unplug_timeout must be 0 or more seconds, got -1$'):
        build_request(params(unplug_timeout=-1.0))
