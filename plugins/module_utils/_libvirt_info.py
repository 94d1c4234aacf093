# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Read-only inventory of a libvirt host: every domain, its PCI hostdevs, power state, NUMA pinning.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

One connection, one pass over the domains.  A host without the libvirt Python
binding or without an answering daemon is reported as ``available: false`` with
the reason: the fleet play goes on and the controller simply places no VM there.
"""

from __future__ import annotations

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import HAS_LXML, DomainDefinition
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._libvirt import HAS_LIBVIRT, libvirt

_STATES = {
    0: 'no state', 1: 'running', 2: 'blocked', 3: 'paused', 4: 'shutting down', 5: 'shut off', 6: 'crashed',
    7: 'suspended',
}


def read(uri: str) -> dict[str, object]:
    """{available, uri, error, domains: [{name, state, active, persistent, hostdevs, numa_nodes}]}."""
    out: dict[str, object] = {'available': False, 'uri': uri, 'error': None, 'domains': []}
    if not HAS_LIBVIRT:
        out['error'] = 'the libvirt Python binding is not installed on this host'
        return out
    if not HAS_LXML:
        out['error'] = 'the lxml Python library is not installed on this host'
        return out
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
        out['available'] = True
        return out
    finally:
        conn.close()


def _domain(dom: object) -> dict[str, object] | None:
    try:
        name = dom.name()  # type: ignore[attr-defined]
        state = dom.state()[0]  # type: ignore[attr-defined]
        active = bool(dom.isActive())  # type: ignore[attr-defined]
        persistent = bool(dom.isPersistent())  # type: ignore[attr-defined]
        xmls = []
        if persistent:
            xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))  # type: ignore[attr-defined]
        if active:
            xmls.append(dom.XMLDesc(0))  # type: ignore[attr-defined]
    except libvirt.libvirtError:
        return None  # the domain vanished while we listed
    hostdevs: set[str] = set()
    numa: list[int] = []
    for xml in xmls:
        defn = DomainDefinition(xml)
        hostdevs.update(str(a) for a in defn.sources())
        numa = numa or defn.numa_nodes()
    return {'name': name, 'state': _STATES.get(state, 'unknown'), 'active': active, 'persistent': persistent,
            'hostdevs': sorted(hostdevs), 'numa_nodes': numa}
