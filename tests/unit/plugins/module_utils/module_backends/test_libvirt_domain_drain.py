"""The libvirt_domain_drain engine through libvirt's in-memory test:///default driver.

That driver stops a domain at once on a shutdown request; a guest that ignores the request (no OS,
ACPI off) is a domain whose shutdown() does nothing (:class:`Deaf`). The clock is simulated, so a
300 s timeout takes no time.
"""
from __future__ import annotations

import itertools
from typing import Any

import pytest

libvirt = pytest.importorskip('libvirt')

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_domain_drain import (  # noqa: E402
    Drain,
    DrainError,
    DrainRefused,
    DrainTimeout,
    build_request,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_hostdev import DomainNotFound  # noqa: E402

URI = 'test:///default'
_names = itertools.count()

DOMAIN = '''<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>{hostdevs}</devices>
</domain>'''
HOSTDEV = ("<hostdev mode='subsystem' type='pci' managed='no'><source>"
           "<address domain='0x0000' bus='0x{bus:02x}' slot='0x00' function='0x0'/></source></hostdev>")


class Deaf:
    """A domain whose guest ignores the shutdown request (no OS in it, or ACPI off)."""

    def __init__(self, dom: Any) -> None:
        self._dom = dom
        self.asked = 0

    def shutdown(self) -> int:
        self.asked += 1
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dom, name)


class Conn:
    """test:///default, with the named domains deaf to shutdown requests."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.deaf: dict[str, Deaf] = {}

    def lookupByName(self, name: str) -> Any:
        dom = self._conn.lookupByName(name)
        if name in self.deaf:
            self.deaf[name]._dom = dom
            return self.deaf[name]
        return dom

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += max(seconds, 0.01)


@pytest.fixture()
def conn():
    raw = libvirt.open(URI)
    c = Conn(raw)
    created: list[str] = []

    def define(devices: int = 1, start: bool = True, deaf: bool = False) -> str:
        name = 'drain%d' % next(_names)
        xml = DOMAIN.format(name=name, hostdevs=''.join(HOSTDEV.format(bus=0x40 + 2 * len(created) + i) for i in range(devices)))
        dom = raw.defineXML(xml)
        if start:
            dom.create()
        if deaf:
            c.deaf[name] = Deaf(dom)
        created.append(name)
        return name

    c.define = define  # type: ignore[attr-defined]
    yield c
    for name in created:
        try:
            dom = raw.lookupByName(name)
        except libvirt.libvirtError:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    # the driver's own domain 'test' runs and holds no device: leave it running
    raw.close()


def drain(conn: Conn, check: bool = False, **params: Any) -> tuple[dict, list[str], Clock]:
    params.setdefault('uri', URI)
    clock = Clock()
    engine = Drain(build_request(params), conn=conn, clock=clock, sleep=clock.sleep)
    out = engine.run(check)
    return out.result(engine.req), out.warnings, clock


def active(conn: Conn, name: str) -> bool:
    return bool(conn._conn.lookupByName(name).isActive())


def test_graceful_stop_of_the_domains_holding_devices_only_then_second_run_no_change(conn) -> None:
    held, idle, stopped_already = conn.define(devices=2), conn.define(devices=0), conn.define(start=False)
    res, warnings, _clock = drain(conn)
    assert res['changed'] is True and warnings == []
    # only the running domain that holds a device; the driver's own 'test' domain (no device) runs on
    assert res['stopped'] == [held] and res['forced'] == []
    assert res['hostdevs'] == {held: ['0000:%02x:00.0' % b for b in (0x40, 0x41)]}
    assert not active(conn, held) and active(conn, idle) and active(conn, 'test') and not active(conn, stopped_already)
    again, _w, _c = drain(conn)
    assert again['changed'] is False and again['stopped'] == [] and again['hostdevs'] == {}


def test_check_mode_predicts_exactly_and_stops_nothing(conn) -> None:
    a, b = conn.define(), conn.define(deaf=True)
    predicted, _w, _c = drain(conn, check=True, force=True)
    assert predicted['changed'] is True and predicted['stopped'] == sorted([a, b])
    assert active(conn, a) and active(conn, b) and conn.deaf[b].asked == 0
    real, _w, _c = drain(conn, force=True)
    assert real['stopped'] == predicted['stopped'] and real['changed'] is True
    assert drain(conn, check=True)[0]['changed'] is False


def test_timeout_without_force_fails_naming_the_domain_and_reports_the_stopped_ones(conn) -> None:
    good, deaf = conn.define(), conn.define(deaf=True)
    clock = Clock()
    engine = Drain(build_request({'uri': URI, 'timeout': 300}), conn=conn, clock=clock, sleep=clock.sleep)
    with pytest.raises(DrainTimeout) as err:
        engine.run(False)
    msg = str(err.value)
    assert 'domain %s still running at %s 300 s after the shutdown request' % (deaf, URI) in msg
    assert 'stopped: %s' % good in msg and 'force=true' in msg
    assert err.value.details['stopped'] == [good] and err.value.details['running'] == [deaf]
    assert err.value.details['changed'] is True
    # waited the whole timeout, no longer
    assert 1300.0 <= clock.now < 1301.0
    assert active(conn, deaf) and not active(conn, good) and conn.deaf[deaf].asked == 1


def test_timeout_with_force_destroys_and_warns_naming_it(conn) -> None:
    deaf = conn.define(deaf=True)
    res, warnings, clock = drain(conn, timeout=30, force=True)
    assert res['stopped'] == [deaf] and res['forced'] == [deaf] and res['changed'] is True
    assert not active(conn, deaf)
    assert len(warnings) == 1 and deaf in warnings[0] and 'did not shut down within 30 s' in warnings[0]
    assert 1030.0 <= clock.now < 1031.0


def test_refuse_policy_fails_before_any_change_naming_the_domains(conn) -> None:
    a, b = conn.define(), conn.define(deaf=True)
    with pytest.raises(DrainRefused) as err:
        drain(conn, policy='refuse')
    msg = str(err.value)
    assert msg.startswith('policy=refuse: domains %s, %s run at %s' % (a, b, URI))
    assert '0000:' in msg and 'nothing was stopped' in msg
    assert err.value.details['running'] == [a, b] and err.value.details['stopped'] == []
    assert active(conn, a) and active(conn, b) and conn.deaf[b].asked == 0
    # nothing running with a device: refuse has nothing to refuse
    drain(conn, force=True)
    res, _w, _c = drain(conn, policy='refuse')
    assert res['changed'] is False and res['stopped'] == []


def test_named_domains_are_stopped_whether_they_hold_a_device_or_not_and_unknown_names_fail(conn) -> None:
    idle, held = conn.define(devices=0), conn.define()
    res, _w, _c = drain(conn, domains=[idle])
    assert res['stopped'] == [idle] and not active(conn, idle) and active(conn, held)
    with pytest.raises(DomainNotFound, match="domain 'nosuch' is not defined at test:///default"):
        drain(conn, domains=['nosuch'])
    assert active(conn, held)


def test_started_starts_what_is_stopped_and_is_idempotent(conn) -> None:
    a, b = conn.define(), conn.define()
    stopped, _w, _c = drain(conn)
    assert set(stopped['stopped']) >= {a, b}
    predicted, _w, _c = drain(conn, check=True, state='started', domains=[a, b])
    assert predicted['changed'] is True and predicted['started'] == [a, b] and not active(conn, a)
    res, _w, _c = drain(conn, state='started', domains=[a, b])
    assert res['started'] == [a, b] and res['running'] == [a, b] and active(conn, a) and active(conn, b)
    again, _w, _c = drain(conn, state='started', domains=[a, b])
    assert again['changed'] is False and again['started'] == [] and again['running'] == [a, b]
    with pytest.raises(DomainNotFound, match="'gone'"):
        drain(conn, state='started', domains=[a, 'gone'])


@pytest.mark.parametrize('params, needle', [
    ({'policy': 'ask'}, "policy must be one of shutdown, refuse, got 'ask'"),
    ({'state': 'paused'}, "state must be one of drained, started, got 'paused'"),
    ({'timeout': -1}, 'timeout must be a number of seconds greater than 0 and at most 3600, got -1'),
    ({'timeout': 0}, 'timeout must be a number of seconds greater than 0'),
    ({'timeout': float('inf')}, 'timeout must be a number of seconds greater than 0'),
    ({'state': 'started'}, 'state=started needs domains'),
    ({'domains': ['']}, "domains must be domain names, got ['']"),
])
def test_bad_input_is_refused_naming_it(params: dict, needle: str) -> None:
    with pytest.raises(FleetGpuError) as err:
        build_request(params)
    assert needle in str(err.value)
    assert isinstance(err.value, (DrainError, FleetGpuError))


def test_a_transient_domain_is_stopped_with_a_warning_that_it_cannot_come_back(conn) -> None:
    name = 'transient%d' % next(_names)
    conn._conn.createXML(DOMAIN.format(name=name, hostdevs=HOSTDEV.format(bus=0x70)), 0)
    res, warnings, _c = drain(conn)
    assert name in res['stopped']
    assert any(name in w and 'transient' in w for w in warnings)
    with pytest.raises(DomainNotFound):
        drain(conn, state='started', domains=[name])
