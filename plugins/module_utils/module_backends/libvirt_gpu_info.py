# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Read-only inventory of a libvirt host: every domain, its PCI hostdevs, power state, NUMA pinning.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

One connection, one pass over the domains.  A host whose Python lacks the libvirt
binding (or lxml) is read with the libvirt client program instead (``virsh -r``, the
XML parsed by the standard library), so the fleet can still place VMs there; role
vfio_host installs the binding before libvirt_gpu changes anything.  A host without
an answering daemon (or without either way to read it) is reported as
``available: false`` with the reason: the fleet play goes on and the controller
simply places no VM there.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Tuple

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import (
    HAS_LXML,
    DomainDefinition,
    DomainXmlError,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_hostdev import HAS_LIBVIRT, Connection, Domain, libvirt

_STATES = {
    0: 'no state', 1: 'running', 2: 'blocked', 3: 'paused', 4: 'shutting down', 5: 'shut off', 6: 'crashed',
    7: 'suspended',
}


# run(argv) -> (rc, stdout, stderr), as AnsibleModule.run_command; virsh is the path of the program or None
Runner = Callable[[list], Tuple[int, str, str]]


def read(uri: str, run: Optional[Runner] = None, virsh: Optional[str] = None) -> dict[str, object]:
    """{available, uri, error, via, python_modules_missing, python_interpreter, assignments, mdev_assignments,
    domains: [{name, state, active, persistent, hostdevs, mdevs, config_hostdevs, numa_nodes}]}."""
    missing = [name for name, ok in (('libvirt', HAS_LIBVIRT), ('lxml', HAS_LXML)) if not ok]
    out: dict[str, object] = {'available': False, 'uri': uri, 'error': None, 'domains': [], 'via': None,
                              'python_modules_missing': missing, 'python_interpreter': sys.executable,
                              'assignments': {}, 'mdev_assignments': {}}
    if missing:
        if run is not None and virsh:
            return _read_virsh(out, uri, run, virsh)
        out['error'] = ('the Python modules %s are not installed on this host, and virsh (the libvirt client) is '
                        'not there to read it without them' % ', '.join(missing))
        return out
    out['via'] = 'python'
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        out['error'] = 'no libvirt at %s: %s' % (uri, exc.get_error_message())
        return out
    try:
        try:
            domains = conn.listAllDomains()
        except libvirt.libvirtError as exc:
            out['error'] = 'cannot list the domains at %s: %s' % (uri, exc.get_error_message())
            return out
        rows = []
        for dom in domains:
            row = _domain(dom)
            if row is not None:
                rows.append(row)
        out['domains'] = sorted(rows, key=lambda d: str(d['name']))
        out['assignments'] = _assignments(rows)
        out['mdev_assignments'] = _assignments(rows, 'mdevs')
        out['available'] = True
        return out
    finally:
        conn.close()


def running_live_xml(uri: str) -> list[tuple[str, str]]:
    """(name, live XML) of every running domain at ``uri``.

    Empty when the libvirt binding is missing or the daemon does not answer: callers use this to name
    the users of a device, not to decide that it is free. A domain that stops while listed is left out.
    """
    found: list[tuple[str, str]] = []
    if not HAS_LIBVIRT:
        return found
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError:
        return found
    try:
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                found.append((dom.name(), dom.XMLDesc(0)))
            except libvirt.libvirtError:
                continue  # it stopped (a transient one vanished) while we listed
    except libvirt.libvirtError:
        pass
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
    return found


def _running_definitions(uri: str) -> list[tuple[str, DomainDefinition]]:
    out = []
    for name, xml in running_live_xml(uri):
        try:
            out.append((name, DomainDefinition(xml, read_only=True)))
        except DomainXmlError:
            continue
    return out


def running_hostdevs(uri: str) -> dict[PciAddress, list[str]]:
    """PCI host device -> names of the running domains that hold it (their live XML); see running_live_xml."""
    found: dict[PciAddress, list[str]] = {}
    for name, definition in _running_definitions(uri):
        for address in definition.sources():
            if name not in found.setdefault(address, []):
                found[address].append(name)
    return found


def running_mdevs(uri: str) -> dict[str, list[str]]:
    """Mediated-device UUID -> names of the running domains whose live XML has it; see running_live_xml."""
    found: dict[str, list[str]] = {}
    for name, definition in _running_definitions(uri):
        for uid in definition.mdev_uuids():
            if name not in found.setdefault(uid, []):
                found[uid].append(name)
    return found


def running_domains(conn: Connection) -> dict[str, list[PciAddress]]:
    """Name of every running domain on ``conn`` -> the PCI host devices of its live definition (may be empty).

    A domain whose live XML cannot be parsed is left out; a domain that stops while listed too.
    libvirt's error on listing propagates (``libvirt.libvirtError``).
    """
    found: dict[str, list[PciAddress]] = {}
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            name = dom.name()
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError:
            continue  # it stopped (a transient one vanished) while we listed
        try:
            found[name] = DomainDefinition(xml, read_only=True).sources()
        except DomainXmlError:
            continue
    return found


def _domain(dom: Domain) -> dict[str, object] | None:
    try:
        name = dom.name()
        state = dom.state()[0]
        active = bool(dom.isActive())
        persistent = bool(dom.isPersistent())
        xmls = []
        if persistent:
            xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        if active:
            xmls.append(dom.XMLDesc(0))
    except libvirt.libvirtError:
        return None  # the domain vanished while we listed
    hostdevs: set[str] = set()
    mdevs: set[str] = set()
    config: list[dict[str, object]] = []
    numa: list[int] = []
    for index, xml in enumerate(xmls):
        defn = DomainDefinition(xml)
        hostdevs.update(str(a) for a in defn.sources())
        mdevs.update(u.lower() for u in defn.mdev_uuids())
        numa = numa or defn.numa_nodes()
        if persistent and index == 0:
            config = _config_hostdevs(defn)
    return {'name': name, 'state': _STATES.get(state, 'unknown'), 'active': active, 'persistent': persistent,
            'hostdevs': sorted(hostdevs), 'mdevs': sorted(mdevs), 'config_hostdevs': config, 'numa_nodes': numa}


def _config_hostdevs(defn: DomainDefinition) -> list[dict[str, object]]:
    """The PCI hostdevs of a persistent definition as libvirt_hostdev returns them (address, guest_address,
    managed, multifunction, rom)."""
    return [h.to_dict() for h in defn.hostdevs() if h.source is not None]


def _assignments(rows: list[dict[str, object]], key: str = 'hostdevs') -> dict[str, list[str]]:
    """Host PCI address (``key`` hostdevs) or mdev UUID (``key`` mdevs) -> names of the domains whose definition or
    running state holds it (for PCI, the same map libvirt_hostdev returns as ``assignments``)."""
    out: dict[str, set[str]] = {}
    for row in rows:
        held = row[key]
        for addr in held if isinstance(held, list) else []:
            out.setdefault(str(addr), set()).add(str(row['name']))
    return {addr: sorted(names) for addr, names in sorted(out.items())}


class _VirshReadError(Exception):
    """A domain listed by virsh whose definition could not be read."""


_VIRSH_STATES = {'running': 'running', 'idle': 'blocked', 'paused': 'paused', 'in shutdown': 'shutting down',
                 'shut off': 'shut off', 'crashed': 'crashed', 'pmsuspended': 'suspended'}


def _read_virsh(out: dict[str, object], uri: str, run: Runner, virsh: str) -> dict[str, object]:
    """The same inventory through ``virsh --readonly`` (for a host whose Python lacks the binding)."""
    out['via'] = 'virsh'
    base = [virsh, '--readonly', '--quiet', '-c', uri]
    rc, stdout, stderr = run(base + ['list', '--all', '--name'])
    if rc != 0:
        out['error'] = 'no libvirt at %s (virsh): %s' % (uri, (stderr or stdout).strip())
        return out
    rows = []
    try:
        for name in [line.strip() for line in stdout.splitlines() if line.strip()]:
            row = _domain_virsh(base, name, run)
            if row is not None:
                rows.append(row)
    except _VirshReadError as exc:
        # a domain whose devices cannot be read could hold any GPU: place nothing on this host
        out['error'] = 'cannot read the domains at %s (virsh): %s' % (uri, exc)
        return out
    out['domains'] = sorted(rows, key=lambda d: str(d['name']))
    out['assignments'] = _assignments(rows)
    out['mdev_assignments'] = _assignments(rows, 'mdevs')
    out['available'] = True
    return out


def _domain_virsh(base: list, name: str, run: Runner) -> dict[str, object] | None:
    rc, info, _err = run(base + ['dominfo', name])
    if rc != 0:
        return None  # the domain vanished while we listed
    fields = {}
    for line in info.splitlines():
        key, sep, value = line.partition(':')
        if sep:
            fields[key.strip().lower()] = value.strip()
    state = _VIRSH_STATES.get(fields.get('state', ''), 'unknown')
    active = fields.get('id', '-') != '-'   # a running (or preserved crashed) domain has an id
    persistent = fields.get('persistent') == 'yes'
    hostdevs: set[str] = set()
    mdevs: set[str] = set()
    config: list[dict[str, object]] = []
    numa: list[int] = []
    for args in ((['dumpxml', '--inactive', name],) if persistent else ()) + ((['dumpxml', name],) if active else ()):
        rc, xml, err = run(base + args)
        if rc != 0:
            raise _VirshReadError('%s of %r failed: %s' % (' '.join(args[:-1]), name, (err or xml).strip()))
        try:
            defn = DomainDefinition(xml, read_only=True)
        except DomainXmlError as exc:
            raise _VirshReadError('the definition of %r: %s' % (name, exc)) from None
        hostdevs.update(str(a) for a in defn.sources())
        mdevs.update(u.lower() for u in defn.mdev_uuids())
        numa = numa or defn.numa_nodes()
        if '--inactive' in args:
            config = _config_hostdevs(defn)
    return {'name': name, 'state': state, 'active': active, 'persistent': persistent,
            'hostdevs': sorted(hostdevs), 'mdevs': sorted(mdevs), 'config_hostdevs': config, 'numa_nodes': numa}
