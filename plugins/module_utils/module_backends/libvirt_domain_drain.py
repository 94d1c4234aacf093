# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The libvirt_domain_drain engine: stop the running domains that hold PCI host devices, start them again.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

A domain that holds a device through VFIO cannot be migrated, so a host that is about to
reboot is drained: its running domains are asked to shut down (ACPI, ``virDomainShutdown``),
waited for up to ``timeout`` seconds, and only with ``force`` destroyed when they did not stop.
Which domains hold PCI host devices is libvirt_gpu_info's reading (:func:`running_domains`).

Decide, then act: the domains to stop (or start) are read first; that list is what check mode
returns, and the real run acts on exactly that list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import checked_timeout
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_gpu_info import running_domains
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_hostdev import (
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    Connection,
    Domain,
    LibvirtError,
    connect,
    libvirt,
    lookup,
)

__all__ = ['HAS_LIBVIRT', 'LIBVIRT_IMPORT_ERROR', 'POLICIES', 'STATES', 'run']

STATES = ('drained', 'started')
POLICIES = ('shutdown', 'refuse')
# seconds between two looks at the domains that were asked to shut down
POLL = 0.5


class DrainError(FleetGpuError, ValueError):
    """The module's input is wrong (names the option)."""


class DrainRefused(FleetGpuError):
    """policy=refuse and a domain that holds a PCI host device runs."""


class DrainTimeout(FleetGpuError):
    """A domain was still running when the timeout ran out, and force is false."""


@dataclass
class Request:
    state: str = 'drained'
    domains: Optional[list[str]] = None
    policy: str = 'shutdown'
    timeout: float = 300.0
    force: bool = False
    uri: str = 'qemu:///system'


@dataclass
class Outcome:
    changed: bool = False
    stopped: list[str] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    hostdevs: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def result(self, req: Request) -> dict[str, object]:
        return {'changed': self.changed, 'state': req.state, 'policy': req.policy, 'uri': req.uri,
                'stopped': self.stopped, 'forced': self.forced, 'started': self.started, 'running': self.running,
                'hostdevs': self.hostdevs}


def build_request(params: dict) -> Request:
    """Validate the module's parameters; every error names the option and the value."""
    state = params.get('state', 'drained')
    if state not in STATES:
        raise DrainError('state must be one of %s, got %r' % (', '.join(STATES), state))
    policy = params.get('policy', 'shutdown')
    if policy not in POLICIES:
        raise DrainError('policy must be one of %s, got %r' % (', '.join(POLICIES), policy))
    timeout = checked_timeout(params.get('timeout', 300.0), 'timeout')
    domains = params.get('domains')
    if domains is not None:
        bad = [d for d in domains if not isinstance(d, str) or not d.strip()]
        if bad:
            raise DrainError('domains must be domain names, got %r' % (bad,))
        domains = sorted(set(domains))
    if state == 'started' and domains is None:
        raise DrainError('state=started needs domains: the names of the domains to start again '
                         '(the stopped list a drained run returned)')
    return Request(state=state, domains=domains, policy=policy, timeout=timeout, force=bool(params.get('force')),
                   uri=params.get('uri') or 'qemu:///system')


class Drain:
    """Stop or start the domains of one request; ``conn``, ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(self, req: Request, conn: Connection | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 poll: float = POLL) -> None:
        self.req = req
        self._conn = conn
        self.clock = clock
        self.sleep = sleep
        self.poll = poll

    def run(self, check_mode: bool) -> Outcome:
        own = self._conn is None
        conn: Connection = connect(self.req.uri) if own else self._conn
        try:
            if self.req.state == 'started':
                return self._start(conn, check_mode)
            return self._drain(conn, check_mode)
        finally:
            if own:
                try:
                    conn.close()
                except libvirt.libvirtError:
                    pass

    # ---- drained ----

    def _targets(self, conn: Connection) -> dict[str, list[str]]:
        """Running domain -> its PCI host devices: those that hold one, or the named ones that run."""
        try:
            running = running_domains(conn)
        except libvirt.libvirtError as exc:
            raise LibvirtError('cannot list the running domains at %s: %s' % (self.req.uri, exc.get_error_message())) from None
        if self.req.domains is None:
            return {name: [str(a) for a in devs] for name, devs in sorted(running.items()) if devs}
        for name in self.req.domains:
            lookup(conn, name, self.req.uri)  # an unknown name fails here, naming the domains there
        return {name: [str(a) for a in running[name]] for name in self.req.domains if name in running}

    def _drain(self, conn: Connection, check_mode: bool) -> Outcome:
        targets = self._targets(conn)
        out = Outcome(hostdevs=targets)
        names = sorted(targets)
        if not names:
            return out
        if self.req.policy == 'refuse':
            raise DrainRefused(
                'policy=refuse: %s %s at %s (PCI host devices: %s); devices passed through cannot be migrated, '
                'and nothing was stopped. Shut %s down first, or use policy=shutdown'
                % (_list(names), 'runs' if len(names) == 1 else 'run', self.req.uri, _devices(targets),
                   'it' if len(names) == 1 else 'them'),
                details={'running': names, 'hostdevs': targets, 'stopped': []})
        out.changed = True
        doms = {name: lookup(conn, name, self.req.uri) for name in names}
        transient = [n for n in names if not _persistent(doms[n])]
        if transient:
            one = len(transient) == 1
            out.warnings.append('%s %s transient: once stopped, libvirt forgets %s, so state=started cannot start %s again'
                                % (_list(transient), 'is' if one else 'are', 'it' if one else 'them', 'it' if one else 'them'))
        if check_mode:
            out.stopped = names
            return out
        for name, dom in doms.items():
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                if _active(dom):
                    raise LibvirtError('asking domain %r at %s to shut down failed: %s'
                                       % (name, self.req.uri, exc.get_error_message()),
                                       details={'stopped': _stopped(doms, names)}) from None
        deadline = self.clock() + self.req.timeout
        left = [n for n in names if _active(doms[n])]
        while left and self.clock() < deadline:
            self.sleep(min(self.poll, max(0.0, deadline - self.clock())))
            left = [n for n in left if _active(doms[n])]
        if left and not self.req.force:
            stopped = [n for n in names if n not in left]
            raise DrainTimeout(
                '%s still running at %s %g s after the shutdown request (timeout); %s. '
                'Shut %s down in the guest, raise timeout, or set force=true to power %s off'
                % (_list(left), self.req.uri, self.req.timeout,
                   ('stopped: %s' % ', '.join(stopped)) if stopped else 'no other domain was stopped',
                   'it' if len(left) == 1 else 'them', 'it' if len(left) == 1 else 'them'),
                details={'stopped': stopped, 'running': left, 'forced': [], 'hostdevs': targets, 'changed': bool(stopped)})
        for name in left:
            try:
                doms[name].destroy()
            except libvirt.libvirtError as exc:
                if _active(doms[name]):
                    raise LibvirtError('powering off domain %r at %s failed: %s'
                                       % (name, self.req.uri, exc.get_error_message()),
                                       details={'stopped': _stopped(doms, names)}) from None
        if left:
            out.forced = left
            out.warnings.append('%s did not shut down within %g s and %s powered off (force=true): '
                                'the guest had no chance to flush its disks'
                                % (_list(left), self.req.timeout, 'was' if len(left) == 1 else 'were'))
        out.stopped = names
        return out

    # ---- started ----

    def _start(self, conn: Connection, check_mode: bool) -> Outcome:
        out = Outcome()
        names = self.req.domains or []
        doms = {name: lookup(conn, name, self.req.uri) for name in names}
        for name in names:
            if _active(doms[name]):
                out.running.append(name)
                continue
            out.started.append(name)
            out.running.append(name)
            if check_mode:
                continue
            try:
                doms[name].create()
            except libvirt.libvirtError as exc:
                raise LibvirtError('starting domain %r at %s failed: %s' % (name, self.req.uri, exc.get_error_message()),
                                   details={'started': out.started[:-1]}) from None
        out.changed = bool(out.started)
        return out


def _active(dom: Domain) -> bool:
    """Whether the domain runs; a transient domain that stopped is gone, so not running."""
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise


def _persistent(dom: Domain) -> bool:
    try:
        return bool(dom.isPersistent())
    except libvirt.libvirtError:
        return True


def _stopped(doms: dict[str, Domain], names: list[str]) -> list[str]:
    out = []
    for name in names:
        try:
            if not _active(doms[name]):
                out.append(name)
        except libvirt.libvirtError:
            pass
    return out


def _list(names: list[str]) -> str:
    return ('domain %s' if len(names) == 1 else 'domains %s') % ', '.join(names)


def _devices(targets: dict[str, list[str]]) -> str:
    return '; '.join('%s: %s' % (name, ', '.join(devs) or 'none') for name, devs in sorted(targets.items()))


def run(params: dict, check_mode: bool, conn: Connection | None = None) -> tuple[dict[str, object], list[str]]:
    """The module's result and warnings for its parameters."""
    req = build_request(params)
    out = Drain(req, conn=conn).run(check_mode)
    return out.result(req), out.warnings
