# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""libvirt connection and the libvirt_hostdev backend: read, plan, define, attach.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Decide, then act: the backend reads the domain's persistent XML (with
secrets, so that defining it back loses nothing), plans the change on the
:mod:`_hostdev` model, and only then defines the new XML (``config``) and/or
hot-plugs the devices (``live``).  Every failure is a typed exception whose
message names the domain, the device and the connection.
"""

from __future__ import annotations

import time
from typing import Any

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._domain_wiring import DomainWiringError, options, wire
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import (
    HostdevChange,
    DomainDefinition,
    HostdevError,
    MdevChange,
    MdevSpec,
    MdevSpecError,
    RomSpec,
    SlotRequest,
    canonical_xml,
    hostdev_xml,
    mdev_hostdev_xml,
    parse_mdev_uuid,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (
    PciAddress,
    PciDevice,
    PciDeviceNotFound,
    is_companion,
    list_addresses,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._reset_health import Quarantine, quarantine_failed, record_path
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._reset_health import check as health_check
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs, SysfsError

try:
    import libvirt
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the managed host
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = _exc

# libvirt-python ships no type information: a connection (virConnect) and a domain (virDomain)
# are Any to mypy, named here so that signatures say which one they take.
Connection = Any
Domain = Any

_ALREADY_ATTACHED = 'already in the domain configuration'
# QEMU's refusal of a second unplug request for a device whose unplug is still pending.
_UNPLUG_IN_PROGRESS = 'already in the process of unplug'
#: Seconds between two reads of the live XML while a live detach is pending.
UNPLUG_POLL = 0.5


class LibvirtError(HostdevError):
    """A libvirt call failed."""


class LibvirtUnreachable(LibvirtError):
    """The libvirt daemon at the URI does not answer."""


class DomainNotFound(LibvirtError):
    """No domain of that name at the URI."""


class DeviceShared(HostdevError):
    """A device is already in another domain's definition."""


class DeviceNotFound(HostdevError):
    """A device the plan needs does not exist in sysfs."""


class DeviceQuarantined(HostdevError):
    """A device to attach is quarantined, or fails its reset-health check now."""


class DomainXmlRejected(LibvirtError):
    """libvirt refused to define the domain_xml given."""


class DomainXmlMismatch(HostdevError):
    """define_xml names another domain."""


class DomainNotPersistent(HostdevError):
    """A definition change was asked of a transient domain."""


class DomainNotRunning(HostdevError):
    """A live change was asked of a domain that is not running."""


class UnplugPending(HostdevError):
    """A live detach was requested, but the guest has not released the device within unplug_timeout."""


def _silence_libvirt() -> None:
    """libvirt prints every error on stderr by default; the module reports them itself."""
    if HAS_LIBVIRT:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def connect(uri: str) -> Connection:
    _silence_libvirt()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LibvirtUnreachable('cannot connect to libvirt at %s: %s' % (uri, exc.get_error_message())) from None
    if conn is None:  # pragma: no cover - old bindings returned None
        raise LibvirtUnreachable('cannot connect to libvirt at %s' % uri)
    return conn


def lookup(conn: Connection, name: str, uri: str) -> Domain:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            try:
                names = sorted(d.name() for d in conn.listAllDomains())
            except libvirt.libvirtError:
                names = []
            raise DomainNotFound('domain %r is not defined at %s (domains there: %s)'
                                 % (name, uri, ', '.join(names) or 'none')) from None
        raise LibvirtError('cannot look up domain %r at %s: %s' % (name, uri, exc.get_error_message())) from None


def persistent_xml(dom: Domain) -> str:
    """The persistent definition, with secrets so that defining it back keeps them."""
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    return dom.XMLDesc(flags)


def _domain_xmls(conn: Connection, uri: str) -> list[tuple[str, str]]:
    """(name, XML) of every domain's persistent definition and running state."""
    out: list[tuple[str, str]] = []
    try:
        domains = conn.listAllDomains()
    except libvirt.libvirtError as exc:
        raise LibvirtError('cannot list the domains at %s: %s' % (uri, exc.get_error_message())) from None
    for dom in domains:
        try:
            name = dom.name()
            if dom.isPersistent():
                out.append((name, persistent_xml(dom)))
            if dom.isActive():
                out.append((name, dom.XMLDesc(0)))
        except libvirt.libvirtError:
            continue  # the domain vanished while we listed
    return out


def all_assignments(conn: Connection, uri: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(PCI address -> domain names, mdev UUID -> domain names) of every definition and running state."""
    pci: dict[str, set[str]] = {}
    mdev: dict[str, set[str]] = {}
    for name, xml in _domain_xmls(conn, uri):
        defn = DomainDefinition(xml)
        for addr in defn.sources():
            pci.setdefault(str(addr), set()).add(name)
        for uuid in defn.mdev_uuids():
            mdev.setdefault(uuid, set()).add(name)
    return ({k: sorted(v) for k, v in sorted(pci.items())}, {k: sorted(v) for k, v in sorted(mdev.items())})


def assignments(conn: Connection, uri: str) -> dict[str, list[str]]:
    """PCI address -> names of the domains whose definition (or running state) holds it."""
    return all_assignments(conn, uri)[0]


class Request:
    """What the module was asked to do (validated)."""

    def __init__(self, domain: str, uri: str, devices: list[PciAddress], state: str = 'present',
                 where: str = 'config', managed: bool = False, companions: bool = True,
                 rom: RomSpec | None = None, guest_address: PciAddress | None = None,
                 allow_shared: bool = False, start: bool = False, restart: bool = False,
                 shutdown_timeout: float = 120.0, define_xml: str | None = None,
                 wiring: dict | None = None, allow_quarantined: bool = False,
                 unplug_timeout: float = 30.0, mdevs: list[MdevSpec] | None = None) -> None:
        self.domain = domain
        self.mdevs = list(mdevs or [])
        self.allow_quarantined = allow_quarantined
        self.uri = uri
        self.devices = devices
        self.state = state
        self.where = where
        self.managed = managed
        self.companions = companions
        self.rom = rom
        self.guest_address = guest_address
        self.allow_shared = allow_shared
        self.start = start
        self.restart = restart
        self.shutdown_timeout = shutdown_timeout
        self.define_xml = define_xml
        self.wiring = wiring
        self.unplug_timeout = unplug_timeout


def slot_requests(devices: list[PciAddress], companions: bool, sysfs: Sysfs | None,
                  domain_sources: list[PciAddress]) -> list[SlotRequest]:
    """Group the listed devices by host slot and add their companion functions.

    A companion is another function of the same slot that exists in sysfs and
    is neither an SR-IOV virtual function nor a bridge.  Without sysfs (state
    absent on a host that no longer shows the device) the companions are the
    other functions of that slot already in the domain.
    """
    by_slot: dict[tuple[int, int, int], list[PciAddress]] = {}
    for addr in devices:
        by_slot.setdefault(addr.slot_key, []).append(addr)
    out = []
    present = list_addresses(sysfs) if (companions and sysfs is not None) else []
    for key in sorted(by_slot):
        listed = by_slot[key]
        functions = list(listed)
        if companions:
            if sysfs is not None:
                for addr in listed:
                    if addr not in present:
                        raise DeviceNotFound(
                            'PCI device %s does not exist under %s: companions=true needs it to find the other '
                            'functions of its slot (set companions=false to use the address as given)'
                            % (addr, sysfs.sys('bus', 'pci', 'devices')))
                is_vf = any(_is_vf(sysfs, a) for a in listed)
                if not is_vf:
                    for addr in present:
                        if addr.slot_key == key and addr not in functions and _is_companion(sysfs, addr):
                            functions.append(addr)
            else:
                functions += [a for a in domain_sources if a.slot_key == key and a not in functions]
        out.append(SlotRequest(functions, listed))
    return out


def _is_vf(sysfs: Sysfs, addr: PciAddress) -> bool:
    try:
        return PciDevice.read(sysfs, addr).physfn is not None
    except (PciDeviceNotFound, SysfsError):
        return False


def _is_companion(sysfs: Sysfs, addr: PciAddress) -> bool:
    try:
        return is_companion(PciDevice.read(sysfs, addr))
    except (PciDeviceNotFound, SysfsError):
        return False


def driver_warnings(sysfs: Sysfs | None, addresses: list[PciAddress], managed: bool,
                    assume_vfio: set[PciAddress] | None = None) -> list[str]:
    """Unmanaged hostdevs need vfio-pci before the domain starts: say so when they are not.

    ``assume_vfio``: addresses an earlier task of the same run moves to vfio-pci (in check mode that
    task only predicted the move); they are taken as on vfio-pci.
    """
    if managed or sysfs is None:
        return []
    out = []
    for addr in addresses:
        if assume_vfio and addr in assume_vfio:
            continue
        try:
            dev = PciDevice.read(sysfs, addr)
        except (PciDeviceNotFound, SysfsError):
            continue
        if dev.driver != 'vfio-pci':
            out.append('%s is bound to %s, not vfio-pci: with managed=false the domain cannot start until '
                       'the device is on vfio-pci (module vfio_bind or role vfio_host), or set managed=true'
                       % (addr, dev.driver or 'no driver'))
    return out


class HostdevBackend:
    """Plan and apply one libvirt_hostdev request."""

    def __init__(self, request: Request, sysfs: Sysfs | None = None, conn: Connection = None) -> None:
        self.req = request
        self.sysfs = sysfs
        self._conn = conn
        self.warnings: list[str] = []
        self.assume_vfio: set[PciAddress] = set()
        self.check_mode = False
        self.mdev_shared: dict[str, list[str]] = {}

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = connect(self.req.uri)
        return self._conn

    def _fail(self, what: str, exc: Exception) -> LibvirtError:
        msg = exc.get_error_message() if hasattr(exc, 'get_error_message') else str(exc)
        return LibvirtError('%s (domain %r at %s): %s' % (what, self.req.domain, self.req.uri, msg))

    def run(self, check_mode: bool) -> dict[str, object]:
        req = self.req
        self.check_mode = check_mode
        conn = self._connection()
        defined = False
        try:
            dom = lookup(conn, req.domain, req.uri)
        except DomainNotFound:
            if req.define_xml is None:
                raise
            if check_mode:
                return self._predict_new(conn)
            dom = self._define(conn)
            defined = True
        try:
            persistent = dom.isPersistent()
        except libvirt.libvirtError as exc:
            raise self._fail('cannot read the domain', exc) from None
        if not persistent and req.where != 'live' and (req.devices or req.mdevs):
            raise DomainNotPersistent('domain %r at %s is transient (it has no persistent definition): '
                                      'use where=live, or define it first' % (req.domain, req.uri))
        before_xml = persistent_xml(dom)
        defn = DomainDefinition(before_xml)
        slots = slot_requests(req.devices, req.companions, self.sysfs if req.state == 'present' else None,
                              defn.sources())
        wanted = sorted({a for s in slots for a in s.functions})
        shared, self.mdev_shared = all_assignments(conn, req.uri)

        changes: list[HostdevChange | MdevChange] = []
        if req.state == 'present':
            changes += self._plan_present(defn, slots, wanted, shared)
            changes += self._plan_mdevs_present(defn)
        else:
            changes += defn.plan_absent(wanted)
            changes += defn.plan_mdev_absent([m.uuid for m in req.mdevs])
        wiring = self._wire(defn, dom)

        config_changed = req.where in ('config', 'both') and (
            any(c.action != 'unchanged' for c in changes)
            or any(r['action'] != 'unchanged' for r in (wiring or {}).get('elements', [])))
        result: dict[str, object] = {'domain': req.domain, 'uri': req.uri, 'wiring': wiring}
        after_xml = defn.to_xml()
        if config_changed and not check_mode:
            try:
                conn.defineXML(defn.to_xml())
            except libvirt.libvirtError as exc:
                raise self._fail('defining the new domain XML failed', exc) from None
            after_xml = canonical_xml(persistent_xml(dom))

        live = self._live(dom, wanted, check_mode) if req.where in ('live', 'both') else []
        power = self._power(dom, config_changed, check_mode)

        if req.where == 'live':
            # The persistent definition is not touched: report what the live plan did.
            changes = [MdevChange(str(c['mdev']), str(c['action'])) if c.get('mdev')
                       else HostdevChange(PciAddress.parse(str(c['address'])), str(c['action'])) for c in live]
            after_xml = canonical_xml(before_xml)
        result.update({
            'unplug_pending': False,
            'defined': defined,
            'changed': defined or config_changed or any(c['action'] != 'unchanged' for c in live) or bool(power),
            'devices': [c.to_dict() for c in changes],
            'live': live,
            'power': power,
            'hostdevs': [h.to_dict() for h in DomainDefinition(after_xml).hostdevs()],
            'mdevs': [h.to_dict() for h in DomainDefinition(after_xml).mdev_hostdevs()],
            'numa_nodes': DomainDefinition(after_xml).numa_nodes(),
            'assignments': shared,
            'mdev_assignments': self.mdev_shared,
            'diff': {
                'before': canonical_xml(before_xml),
                'after': after_xml,
                'before_header': '%s (persistent definition)' % req.domain,
                'after_header': '%s (persistent definition)' % req.domain,
            },
        })
        return result

    def _checked_define_xml(self) -> DomainDefinition:
        defn = DomainDefinition(self.req.define_xml or '')
        if defn.name != self.req.domain:
            raise DomainXmlMismatch('define_xml of domain %r names the domain %r' % (self.req.domain, defn.name))
        return defn

    def _define(self, conn: Connection) -> Domain:
        """Define the domain from define_xml (it does not exist); libvirt's refusal names the domain."""
        self._checked_define_xml()
        try:
            return conn.defineXML(self.req.define_xml)
        except libvirt.libvirtError as exc:
            raise DomainXmlRejected('libvirt at %s rejected the domain_xml of %r: %s'
                                    % (self.req.uri, self.req.domain, exc.get_error_message())) from None

    def _predict_new(self, conn: object) -> dict[str, object]:
        """Check mode for a domain that define_xml would create: plan on the given definition."""
        req = self.req
        defn = self._checked_define_xml()
        slots = slot_requests(req.devices, req.companions, self.sysfs if req.state == 'present' else None, [])
        wanted = sorted({a for s in slots for a in s.functions})
        shared, self.mdev_shared = all_assignments(conn, req.uri)
        changes: list[HostdevChange | MdevChange] = []
        if req.state == 'present':
            # the same plan, and the same warnings, as the real run makes after defining the domain
            changes += self._plan_present(defn, slots, wanted, shared)
            changes += self._plan_mdevs_present(defn)
        wiring = self._wire(defn, None)
        after = defn.to_xml()
        self.warnings.append('domain %r does not exist at %s yet: it would be defined from define_xml' % (req.domain, req.uri))
        return {
            'domain': req.domain, 'uri': req.uri, 'defined': True, 'changed': True,
            'devices': [c.to_dict() for c in changes], 'live': [], 'unplug_pending': False,
            'power': 'started' if req.start and req.state == 'present' else None,
            'hostdevs': [h.to_dict() for h in DomainDefinition(after).hostdevs()],
            'mdevs': [h.to_dict() for h in DomainDefinition(after).mdev_hostdevs()],
            'numa_nodes': DomainDefinition(after).numa_nodes(), 'assignments': shared,
            'mdev_assignments': self.mdev_shared, 'wiring': wiring,
            'diff': {'before': '', 'after': canonical_xml(after), 'before_header': '%s (not defined)' % req.domain,
                     'after_header': '%s (persistent definition)' % req.domain},
        }

    def _wire(self, defn: DomainDefinition, dom: Domain) -> dict | None:
        """Write the requested wiring into ``defn`` (state=present only); the plan and its element records."""
        req = self.req
        if req.wiring is None or req.state != 'present':
            return None
        if req.where == 'live':
            raise DomainWiringError('wiring of domain %r is written into its persistent definition: use where=config '
                                    'or where=both, not live' % req.domain)
        if self.sysfs is None:
            raise DomainWiringError('wiring of domain %r needs the host\'s sysfs' % req.domain)
        active = False
        if dom is not None:
            try:
                active = bool(dom.isActive())
            except libvirt.libvirtError as exc:
                raise self._fail('cannot read the state of the domain', exc) from None
        plan, records = wire(defn, self.sysfs, req.wiring, active)
        if active and any(r['action'] != 'unchanged' for r in records) and not req.restart:
            self.warnings.append('domain %r runs: its new wiring applies when it next starts (or set restart)' % req.domain)
        plan['elements'] = records
        return plan

    def _plan_present(self, defn: DomainDefinition, slots: list, wanted: list[PciAddress],
                      shared: dict[str, list[str]]) -> list[HostdevChange]:
        """Changes that give ``slots`` to the domain, after the sharing check; adds the driver warnings."""
        req = self.req
        self._check_shared(wanted, shared, defn)
        mine = set(defn.sources())
        self._health_gate([a for a in wanted if req.where == 'live' or a not in mine])
        changes: list[HostdevChange] = []
        for slot in slots:
            changes += defn.plan_present(slot, req.managed, req.rom, req.guest_address)
        self.warnings += driver_warnings(self.sysfs, wanted, req.managed, self.assume_vfio)
        return changes

    def _plan_mdevs_present(self, defn: DomainDefinition) -> list[MdevChange]:
        """Changes that give the requested mediated devices to the domain.

        An mdev in another domain's definition is refused (unless allow_shared), as a PCI device
        is; one that does not exist on the host now is planned with a warning (libvirt accepts
        the definition, the domain only starts once the mdev is created, e.g. by gpu_partition).
        """
        req = self.req
        mine = set(defn.mdev_uuids())
        problems = []
        for spec in req.mdevs:
            others = [d for d in self.mdev_shared.get(spec.uuid, []) if d != req.domain]
            if others and spec.uuid not in mine and not req.allow_shared:
                problems.append('mdev %s is already assigned to domain %s' % (spec.uuid, ', '.join(repr(o) for o in others)))
        if problems:
            raise DeviceShared('; '.join(problems) + ': a mediated device can only be given to one domain at a time; '
                               'set allow_shared=true if these domains never run at the same time')
        changes = [defn.plan_mdev_present(spec) for spec in req.mdevs]
        if self.sysfs is not None:
            for spec in req.mdevs:
                path = self.sysfs.sys('bus', 'mdev', 'devices', spec.uuid)
                if not self.sysfs.exists(path):
                    self.warnings.append('mdev %s does not exist on this host now (no %s): domain %r cannot start until '
                                         'it is created (module gpu_partition)' % (spec.uuid, path, req.domain))
        return changes

    def _health_gate(self, adding: list[PciAddress]) -> None:
        """Before devices are added: refuse a quarantined one (unless allow_quarantined), check the others' reset
        health and quarantine (not in check mode) and refuse one whose config space does not answer."""
        if self.sysfs is None or not adding:
            return
        record = Quarantine.load(record_path(self.sysfs))
        devices = []
        for addr in adding:
            try:
                devices.append(PciDevice.read(self.sysfs, addr))
            except (PciDeviceNotFound, SysfsError):
                continue  # not on this host's sysfs: nothing to check (libvirt names it if it is missing)
        failed = [h for h in health_check(self.sysfs, devices, timeout=self.sysfs.timeout) if not h.healthy]
        if failed and not self.check_mode:
            quarantine_failed(self.sysfs, failed, 'libvirt_hostdev')
        problems = ['%s fails its health check: %s' % (h.address, h.reason) for h in failed]
        for addr in adding:
            entry = record.get(addr)
            if entry is None or any(h.address == addr for h in failed):
                continue
            text = '%s is quarantined since %s: %s' % (addr, entry.get('time'), entry.get('reason'))
            if self.req.allow_quarantined:
                self.warnings.append(text + ': attaching it anyway because allow_quarantined is true')
            else:
                problems.append(text)
        if problems:
            raise DeviceQuarantined('; '.join(problems) + '. A quarantined device is not given to domain %r: release '
                                    'it with gpu_quarantine state=cleared once it is repaired (or set '
                                    'allow_quarantined=true for a record you know is stale)' % self.req.domain,
                                    details={'quarantined': sorted({str(h.address) for h in failed}
                                                                   | {str(a) for a in adding if record.get(a) is not None})})

    def _check_shared(self, wanted: list[PciAddress], shared: dict[str, list[str]], defn: DomainDefinition) -> None:
        if self.req.allow_shared:
            return
        mine = set(defn.sources())
        problems = []
        for addr in wanted:
            others = [d for d in shared.get(str(addr), []) if d != self.req.domain]
            if others and addr not in mine:
                problems.append('%s is already assigned to domain %s' % (addr, ', '.join(repr(o) for o in others)))
        if problems:
            raise DeviceShared('; '.join(problems) + ': a PCI device can only be given to one domain at a time; '
                               'set allow_shared=true if these domains never run at the same time')

    def _live(self, dom: Domain, wanted: list[PciAddress], check_mode: bool) -> list[dict[str, object]]:
        req = self.req
        try:
            active = dom.isActive()
        except libvirt.libvirtError as exc:
            raise self._fail('cannot read the state of the domain', exc) from None
        if not active:
            if req.where == 'live':
                raise DomainNotRunning('domain %r at %s is not running: a live change needs a running domain '
                                       '(use where=config to change its definition)' % (req.domain, req.uri))
            self.warnings.append('domain %r is not running: only its persistent definition was changed' % req.domain)
            return []
        live_defn = DomainDefinition(dom.XMLDesc(0))
        out: list[dict[str, object]] = []
        detached: list[PciAddress | str] = []
        for addr in wanted:
            present = live_defn.find(addr)
            if req.state == 'present' and present is None:
                out.append({'address': str(addr), 'action': 'added'})
                if not check_mode:
                    self._attach_live(dom, hostdev_xml(addr, req.managed, req.rom if addr in req.devices else None), addr)
            elif req.state == 'absent' and present is not None:
                out.append({'address': str(addr), 'action': 'removed'})
                if not check_mode:
                    self._detach_live(dom, present.xml(), addr)
                    detached.append(addr)
            else:
                out.append({'address': str(addr), 'action': 'unchanged'})
        for spec in req.mdevs:
            dev = live_defn.find_mdev(spec.uuid)
            if req.state == 'present' and dev is None:
                out.append({'address': None, 'mdev': spec.uuid, 'action': 'added'})
                if not check_mode:
                    self._attach_live(dom, mdev_hostdev_xml(spec), 'mdev %s' % spec.uuid)
            elif req.state == 'absent' and dev is not None:
                out.append({'address': None, 'mdev': spec.uuid, 'action': 'removed'})
                if not check_mode:
                    self._detach_live(dom, dev.xml(), 'mdev %s' % spec.uuid)
                    detached.append(spec.uuid)
            else:
                out.append({'address': None, 'mdev': spec.uuid, 'action': 'unchanged'})
        if detached:
            self._wait_unplugged(dom, detached, out)
        return out

    def _detach_live(self, dom: Domain, xml: str, addr: PciAddress | str) -> None:
        """Ask for the unplug; the guest releases the device later (see _wait_unplugged)."""
        try:
            dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            if _UNPLUG_IN_PROGRESS in (exc.get_error_message() or ''):
                return  # asked before (an earlier run): wait for the same unplug
            raise self._fail('live detach of %s failed' % addr, exc) from None

    def _wait_unplugged(self, dom: Domain, addresses: list[PciAddress | str], live: list[dict[str, object]]) -> None:
        """Wait until the running domain's XML no longer holds ``addresses``, up to unplug_timeout seconds.

        A live detach of a PCI device is asynchronous: libvirt passes the request to QEMU, the
        guest OS releases the device (PCIe native or ACPI hot-plug), and only then is the device
        gone from the live XML. A guest that does not release it in time fails the task:
        the device is still in use by the running guest.
        """
        req = self.req
        deadline = time.monotonic() + req.unplug_timeout
        while True:
            try:
                live_defn = DomainDefinition(dom.XMLDesc(0))
            except libvirt.libvirtError as exc:
                raise self._fail('cannot read the running domain after the live detach', exc) from None
            pending = [a for a in addresses
                       if (live_defn.find_mdev(a) if isinstance(a, str) else live_defn.find(a)) is not None]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(min(UNPLUG_POLL, max(0.0, deadline - time.monotonic())))
        if pending:
            raise UnplugPending(
                'live detach of %s from domain %r at %s is still pending after %g s: the guest has not released '
                'the device (its OS must accept the unplug: PCIe native or ACPI PCI hot-plug). The request stays '
                'queued; run the task again with a longer unplug_timeout, or shut the guest down'
                % (', '.join(str(a) for a in pending), req.domain, req.uri, req.unplug_timeout),
                details={'unplug_pending': True, 'pending': [str(a) for a in pending], 'live': live, 'changed': True})

    def _attach_live(self, dom: Domain, xml: str, addr: PciAddress | str) -> None:
        try:
            dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            if _ALREADY_ATTACHED in (exc.get_error_message() or ''):
                return
            raise self._fail('live attach of %s failed' % addr, exc) from None

    def _power(self, dom: Domain, config_changed: bool, check_mode: bool) -> str | None:
        """Start a stopped domain (start=true) or restart a running one whose definition changed."""
        req = self.req
        try:
            active = dom.isActive()
        except libvirt.libvirtError as exc:
            raise self._fail('cannot read the state of the domain', exc) from None
        if active and req.restart and config_changed:
            if not check_mode:
                self._shutdown(dom)
                self._create(dom)
            return 'restarted'
        if not active and req.start:
            if not check_mode:
                self._create(dom)
            return 'started'
        return None

    def _shutdown(self, dom: Domain) -> None:
        try:
            if self.req.shutdown_timeout > 0:
                dom.shutdown()
                deadline = time.monotonic() + self.req.shutdown_timeout
                while time.monotonic() < deadline and dom.isActive():
                    time.sleep(0.5)
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as exc:
            raise self._fail('stopping the domain for its restart failed', exc) from None

    def _create(self, dom: Domain) -> None:
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            raise self._fail('starting the domain failed', exc) from None


def build_request(params: dict) -> Request:
    """Validate the parameters (raises PciAddressError / HostdevError with the input named)."""
    devices, mdevs = parse_devices(params['devices'])
    guest = PciAddress.parse(params['guest_address']) if params['guest_address'] else None
    if guest is not None and not devices:
        raise HostdevError('guest_address %s places PCI devices; libvirt places mediated devices itself'
                           % params['guest_address'])
    if guest is not None and len({d.slot_key for d in devices}) > 1:
        raise HostdevError('guest_address %s can only place devices of one host slot, got %s'
                           % (params['guest_address'], ', '.join(str(d) for d in devices)))
    if params['unplug_timeout'] < 0:
        raise HostdevError('unplug_timeout must be 0 or more seconds, got %g' % params['unplug_timeout'])
    rom_p = params['rom'] or {}
    rom = RomSpec(rom_p.get('file'), rom_p.get('bar')) if rom_p else None
    return Request(
        domain=params['domain'], uri=params['uri'], devices=devices, state=params['state'],
        where=params['where'], managed=params['managed'], companions=params['companions'], rom=rom,
        guest_address=guest, allow_shared=params['allow_shared'], start=params['start'],
        restart=params['restart'], shutdown_timeout=params['shutdown_timeout'], define_xml=params['define_xml'],
        wiring=options(params['wiring']) if params['wiring'] is not None else None,
        allow_quarantined=bool(params.get('allow_quarantined')),
        unplug_timeout=params['unplug_timeout'], mdevs=mdevs)


MDEV_PREFIX = 'mdev:'
MDEV_KEYS = {'mdev', 'display'}


def parse_devices(entries: list) -> tuple[list[PciAddress], list[MdevSpec]]:
    """Split ``devices`` into PCI addresses and mediated devices; errors name the entry.

    An entry is a PCI address (``0000:41:00.0`` or ``41:00.0``; an SR-IOV virtual function is
    one too), the string ``mdev:<uuid>``, or a dict ``{mdev: <uuid>, display: <bool>}``.
    """
    devices: list[PciAddress] = []
    mdevs: dict[str, MdevSpec] = {}
    for index, entry in enumerate(entries or []):
        if isinstance(entry, dict):
            unknown = sorted(str(k) for k in entry if k not in MDEV_KEYS)
            if unknown or 'mdev' not in entry:
                raise MdevSpecError('devices[%d] %r: a dict entry is a mediated device, {mdev: <uuid>, display: <bool>}%s'
                                    % (index, entry, (' (unknown keys: %s)' % ', '.join(unknown)) if unknown else ''))
            display = entry.get('display')
            if display is not None and not isinstance(display, bool):
                raise MdevSpecError('devices[%d] %r: display must be true or false' % (index, entry))
            spec = MdevSpec(parse_mdev_uuid(entry['mdev'], 'devices[%d] mdev' % index), display)
        elif isinstance(entry, str) and entry.strip().lower().startswith(MDEV_PREFIX):
            spec = MdevSpec(parse_mdev_uuid(entry.strip()[len(MDEV_PREFIX):].strip(), 'devices[%d] mdev' % index))
        elif isinstance(entry, str):
            devices.append(PciAddress.parse(entry))
            continue
        else:
            raise MdevSpecError('devices[%d] %r: expected a PCI address, mdev:<uuid> or {mdev: <uuid>}' % (index, entry))
        earlier = mdevs.get(spec.uuid)
        if earlier is not None and earlier.display is not None and spec.display is not None \
                and earlier.display != spec.display:
            raise MdevSpecError('mdev %s is listed twice with different display settings' % spec.uuid)
        if earlier is None or spec.display is not None:
            mdevs[spec.uuid] = spec
    return devices, list(mdevs.values())


def backend_for(params: dict, sysfs: Sysfs) -> HostdevBackend:
    """The backend for the module's parameters (validated by build_request), with assume_vfio read."""
    backend = HostdevBackend(build_request(params), sysfs)
    backend.assume_vfio = {PciAddress.parse(text) for text in params['assume_vfio']}
    return backend
