# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: gpu_placement
short_description: Resolve per-domain GPU requests to concrete host GPUs
version_added: 0.1.0
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
description:
  - Takes the host's C(gpu_passthrough) facts (from M(fleetgpu.passthrough.gpu_facts)), the domains'
    GPU requests and the current assignments of host PCI devices to libvirt domains, and returns the
    concrete GPU addresses for each domain.
  - Only GPUs in state C(available) or C(vfio-ready) are handed out, never a GPU that another domain
    holds, and never the boot GPU unless O(allow_boot_vga) is true (then a boot GPU that nothing else
    holds is usable). A GPU that gpu_facts reports C(quarantined) (it failed its reset-health check, see
    M(fleetgpu.passthrough.gpu_quarantine)) is never handed out. A domain keeps the GPUs it already has when
    they fit its request, so a second run resolves to the same devices.
  - GPUs on the NUMA node a request names come first; without one, GPUs on the nodes the domain's
    memory is pinned to (O(numa)). Then GPUs already on vfio-pci (C(vfio-ready)) come before GPUs still
    on their host driver, then the PCI address decides.
  - Every input is checked; a malformed one fails with a message naming its path
    (for example C(libvirt_gpu_domains[0].numa_node)), never a raw Python error.
  - When the host cannot satisfy every request, the filter fails before anything changes and says,
    per request, what was asked and how many GPUs of which kind are free.
options:
  _input:
    description: The C(gpu_passthrough) facts (a dict with a C(gpus) list).
    type: dict
    required: true
  domains:
    description:
      - The requests, as in the role variable C(libvirt_gpu_domains) - each C(name), C(gpus) (one of
        C(count), C(addresses), or C(match) with C(count)), optional C(numa_node), C(start), C(binding)
        (V(static) or V(dynamic)), C(domain_xml) and C(wiring) (passed through to the result; C(wiring) is
        checked for unknown keys).
      - C(match.name) matches a GPU whose PCI device name (or vendor and device name) equals it, compared
        literally and case-insensitively - so C(GP104GL [Tesla P4]) works as written - or, failing that, whose
        names match it as a case-insensitive regular expression.
    type: list
    elements: dict
    required: true
  assignments:
    description: Host PCI address -> names of the domains that hold it (the C(assignments) return value of M(fleetgpu.passthrough.libvirt_hostdev)).
    type: dict
    default: {}
  numa:
    description:
      - Domain name -> host NUMA nodes its memory is pinned to (the C(numa_nodes) return value of
        M(fleetgpu.passthrough.libvirt_hostdev)). Used for requests without C(numa_node).
    type: dict
    default: {}
  state:
    description:
      - V(present) resolves what each domain should get.
      - V(absent) resolves which of its current GPUs each domain gives back (every GPU of the domain that fits the request; C(count) is ignored).
    type: str
    default: present
    choices: [present, absent]
  allow_boot_vga:
    description:
      - Let a boot GPU be handed out (the host was told to give it away with C(vfio_host_allow_boot_vga)).
        A boot GPU that is also in use or unusable is still refused.
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Decide which GPU goes where
  ansible.builtin.set_fact:
    placement: "{{ ansible_facts.gpu_passthrough | fleetgpu.passthrough.gpu_placement(domains, assignments) }}"
  vars:
    domains:
      - name: train01
        gpus: {match: {vendor_id: "10de", device_id: "2204"}, count: 2}
        numa_node: 1
      - name: desktop
        gpus: {addresses: ["0000:0a:00.0"]}
    assignments: {"0000:0a:00.0": [desktop]}
'''

RETURN = r'''
_value:
  description: One entry per domain, in request order.
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    devices:
      description: The GPU addresses the domain should hold (present) or give back (absent).
      type: list
      elements: str
    kept:
      description: Of those, the ones the domain already held.
      type: list
      elements: str
    added:
      description: Of those, the ones newly given to it.
      type: list
      elements: str
    start:
      description: The request's C(start) flag.
      type: bool
    binding:
      description: The request's C(binding) when it is V(dynamic) (absent for the default V(static)).
      type: str
    domain_xml:
      description: The request's C(domain_xml), when it has one.
      type: str
    wiring:
      description: The request's C(wiring), when it has one (the option of M(fleetgpu.passthrough.libvirt_hostdev)).
      type: dict
'''

import re

from ansible.errors import AnsibleFilterError

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vm_wiring import WiringError, check_wiring_keys

USABLE_STATES = ('available', 'vfio-ready')
# static: the GPU stays on vfio-pci (role vfio_host binds it); dynamic: it stays on its host driver and
# libvirt moves it (managed hostdevs) when its domain starts and stops.
BINDINGS = ('static', 'dynamic')


class PlacementRequestError(ValueError):
    """A request that is malformed or cannot be satisfied."""


def _norm_id(value: object, what: str, domain: str) -> str:
    text = str(value).strip().lower()
    if text.startswith('0x'):
        text = text[2:]
    if not re.match(r'^[0-9a-f]{4}$', text):
        raise PlacementRequestError('domain %r: %s %r is not four hex digits (e.g. 10de)' % (domain, what, value))
    return text


def _norm_addr(value: object, domain: str) -> str:
    text = str(value).strip().lower()
    if re.match(r'^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$', text):
        text = '0000:' + text
    if not re.match(r'^[0-9a-f]{4,5}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$', text):
        raise PlacementRequestError('domain %r: %r is not a PCI address (e.g. 0000:41:00.0)' % (domain, value))
    return text


class _Request:
    def __init__(self, entry: object, index: int) -> None:
        where = 'libvirt_gpu_domains[%d]' % index
        if not isinstance(entry, dict):
            raise PlacementRequestError('%s must be a mapping with name and gpus, got a %s' % (where, type(entry).__name__))
        if not entry.get('name') or not isinstance(entry['name'], str):
            raise PlacementRequestError('%s needs a name' % where)
        self.name = str(entry['name'])
        gpus = entry.get('gpus')
        if not isinstance(gpus, dict):
            raise PlacementRequestError('domain %r (%s.gpus): gpus must be a mapping with count, addresses or match, got %s'
                                        % (self.name, where, 'nothing' if gpus is None else 'a %s' % type(gpus).__name__))
        kinds = [k for k in ('addresses', 'match') if gpus.get(k) is not None]
        if len(kinds) > 1:
            raise PlacementRequestError('domain %r: gpus takes addresses or match, not both' % self.name)
        addresses = gpus.get('addresses') or []
        if not isinstance(addresses, list):
            raise PlacementRequestError('domain %r (%s.gpus.addresses): addresses must be a list of PCI addresses, got a %s'
                                        % (self.name, where, type(addresses).__name__))
        self.addresses = [_norm_addr(a, self.name) for a in addresses]
        self.match = gpus.get('match') or None
        count = gpus.get('count')
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, (int, str)):
                raise PlacementRequestError('domain %r (%s.gpus.count): count %r is not a number' % (self.name, where, count))
            try:
                count = int(count)
            except ValueError:
                raise PlacementRequestError('domain %r (%s.gpus.count): count %r is not a number'
                                            % (self.name, where, count)) from None
        if self.addresses:
            if count is not None and count != len(self.addresses):
                raise PlacementRequestError('domain %r: count %s differs from the %d addresses listed'
                                            % (self.name, count, len(self.addresses)))
            self.count = len(self.addresses)
        else:
            if count is None:
                raise PlacementRequestError('domain %r: gpus needs count (or addresses)' % self.name)
            self.count = count
            if self.count < 0:
                raise PlacementRequestError('domain %r: count %d is negative' % (self.name, self.count))
        self.vendor_id = self.device_id = None
        self.name_re = None
        self.name_literal: str | None = None
        if self.match is not None:
            if not isinstance(self.match, dict):
                raise PlacementRequestError('domain %r (%s.gpus.match): match must be a mapping (vendor_id, device_id, name), '
                                            'got a %s' % (self.name, where, type(self.match).__name__))
            if not (self.match.get('vendor_id') or self.match.get('name')):
                raise PlacementRequestError('domain %r: match needs vendor_id (and device_id) or name' % self.name)
            if self.match.get('vendor_id'):
                self.vendor_id = _norm_id(self.match['vendor_id'], 'vendor_id', self.name)
            if self.match.get('device_id'):
                self.device_id = _norm_id(self.match['device_id'], 'device_id', self.name)
            if self.match.get('name'):
                self.name_literal = str(self.match['name']).strip().casefold()
                try:
                    self.name_re = re.compile(str(self.match['name']), re.IGNORECASE)
                except re.error:
                    self.name_re = None  # not a regular expression: matched literally only
        numa = entry.get('numa_node')
        if numa is not None:
            if isinstance(numa, bool) or not isinstance(numa, (int, str)):
                raise PlacementRequestError('domain %r (%s.numa_node): %r is not a NUMA node number'
                                            % (self.name, where, numa))
            try:
                numa = int(numa)
            except ValueError:
                raise PlacementRequestError('domain %r (%s.numa_node): %r is not a NUMA node number'
                                            % (self.name, where, numa)) from None
        self.numa_node = numa
        self.start = bool(entry.get('start', False))
        self.binding = entry.get('binding', 'static')
        if self.binding not in BINDINGS:
            raise PlacementRequestError('domain %r (%s.binding): %r is not one of %s'
                                        % (self.name, where, self.binding, ', '.join(BINDINGS)))
        self.domain_xml = entry.get('domain_xml')
        self.wiring = entry.get('wiring')
        if self.wiring is not None:
            try:
                self.wiring = check_wiring_keys(self.wiring, '%s.wiring' % where)
            except WiringError as exc:
                raise PlacementRequestError('domain %r (%s)' % (self.name, exc)) from None

    def _name_fits(self, gpu: dict) -> bool:
        device = str(gpu.get('device_name') or '').casefold()
        full = ' '.join(str(n) for n in (gpu.get('vendor_name'), gpu.get('device_name')) if n).casefold()
        if self.name_literal and self.name_literal in (device, full):
            return True
        if self.name_re is None:
            return False
        text = ' '.join(str(gpu.get(k) or '') for k in ('vendor_name', 'device_name', 'subsystem_name', 'vendor_device'))
        return bool(self.name_re.search(text))

    def fits(self, gpu: dict) -> bool:
        if self.addresses:
            return gpu['address'] in self.addresses
        if self.vendor_id and gpu.get('vendor_id') != self.vendor_id:
            return False
        if self.device_id and gpu.get('device_id') != self.device_id:
            return False
        if self.name_literal is not None and not self._name_fits(gpu):
            return False
        return True

    def describe(self) -> str:
        if self.addresses:
            return 'the GPU(s) %s' % ', '.join(self.addresses)
        what = []
        if self.vendor_id:
            what.append('%s:%s' % (self.vendor_id, self.device_id or '*'))
        if self.name_literal is not None:
            what.append('name %r' % (self.match or {}).get('name'))
        return '%d GPU(s)%s' % (self.count, (' matching ' + ' and '.join(what)) if what else '')


def _kind(gpu: dict) -> str:
    name = ' '.join(n for n in (gpu.get('vendor_name'), gpu.get('device_name')) if n)
    return '%s%s' % (gpu.get('vendor_device') or '%s:%s' % (gpu.get('vendor_id'), gpu.get('device_id')),
                     ' (%s)' % name if name else '')


def _free_summary(free: list[dict], first: bool) -> str:
    after = '' if first else ' once the domains listed before it are served'
    if not free:
        return 'no GPU is free on this host%s' % after
    counts: dict[str, int] = {}
    for gpu in free:
        counts[_kind(gpu)] = counts.get(_kind(gpu), 0) + 1
    return 'free on this host%s: %s' % (after, ', '.join('%d x %s' % (n, k) for k, n in sorted(counts.items())))


def _usable(gpu: dict, allow_boot_vga: bool = False) -> bool:
    if gpu.get('quarantined'):
        return False  # failed its reset-health check (gpu_quarantine): never handed out
    if gpu.get('boot_vga'):
        # a boot GPU given away on purpose: usable when nothing but its being the boot GPU stands in the way
        return allow_boot_vga and gpu.get('state') in USABLE_STATES + ('boot-vga',) and len(gpu.get('state_reasons') or []) <= 1
    return gpu.get('state') in USABLE_STATES


def _check_inputs(facts: object, domains: object, assignments: object, numa: object) -> None:
    if not isinstance(facts, dict) or not isinstance(facts.get('gpus'), list):
        raise PlacementRequestError('the GPU facts have no gpus list: run fleetgpu.passthrough.gpu_facts first '
                                    '(or pass its result as libvirt_gpu_facts)')
    for i, gpu in enumerate(facts['gpus']):
        if not isinstance(gpu, dict) or not isinstance(gpu.get('address'), str):
            raise PlacementRequestError('the GPU facts: gpus[%d] must be a mapping with an address' % i)
    if domains is not None and not isinstance(domains, list):
        raise PlacementRequestError('libvirt_gpu_domains must be a list of domains, got a %s' % type(domains).__name__)
    if assignments is not None and not isinstance(assignments, dict):
        raise PlacementRequestError('assignments must be a mapping of PCI address to domain names, got a %s'
                                    % type(assignments).__name__)
    for addr, names in (assignments or {}).items():
        if not isinstance(names, list):
            raise PlacementRequestError('assignments[%s] must be a list of domain names, got a %s' % (addr, type(names).__name__))
    if numa is not None and not isinstance(numa, dict):
        raise PlacementRequestError('numa must be a mapping of domain name to NUMA nodes, got a %s' % type(numa).__name__)
    for name, nodes in (numa or {}).items():
        if not isinstance(nodes, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in nodes):
            raise PlacementRequestError('numa[%s] must be a list of NUMA node numbers, got %r' % (name, nodes))


def place(facts: dict, domains: list, assignments: dict | None = None, state: str = 'present',
          numa: dict | None = None, allow_boot_vga: bool = False) -> list[dict]:
    _check_inputs(facts, domains, assignments, numa)
    if state not in ('present', 'absent'):
        raise PlacementRequestError('state must be present or absent, got %r' % (state,))
    gpus = sorted(facts['gpus'], key=lambda g: g['address'])
    by_addr = {g['address']: g for g in gpus}
    holders: dict[str, list[str]] = {str(a).lower(): list(n) for a, n in (assignments or {}).items()}
    requests = [_Request(entry, i) for i, entry in enumerate(domains or [])]
    names = [r.name for r in requests]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlacementRequestError('domain(s) listed more than once: %s' % ', '.join(dupes))

    taken: set[str] = {a for a, n in holders.items() if n}
    out: list[dict] = []
    problems: list[str] = []
    for req in requests:
        own = [g for g in gpus if req.name in holders.get(g['address'], [])]
        if state == 'absent':
            back = [g['address'] for g in own if req.fits(g)]
            out.append(_entry(req, back, [], []))
            continue
        for addr in req.addresses:
            gpu = by_addr.get(addr)
            if gpu is None:
                problems.append('domain %r asks for %s, which is not a GPU on this host (GPUs here: %s)'
                                % (req.name, addr, ', '.join(by_addr) or 'none'))
                continue
            others = [d for d in holders.get(addr, []) if d != req.name]
            if others:
                problems.append('domain %r asks for %s, which domain %s already holds'
                                % (req.name, addr, ', '.join(repr(o) for o in others)))
            elif req.name not in holders.get(addr, []) and not _usable(gpu, allow_boot_vga):
                reasons = '; '.join(gpu.get('state_reasons') or [])
                what = 'the boot GPU' if gpu.get('boot_vga') else 'in state %s' % gpu.get('state')
                quarantine = gpu.get('quarantined')
                if quarantine:
                    what = 'quarantined'
                    reasons = str(quarantine.get('reason') if isinstance(quarantine, dict) else quarantine)
                problems.append('domain %r asks for %s, which is %s%s'
                                % (req.name, addr, what, ' (%s)' % reasons if reasons else ''))
        kept = [g['address'] for g in own if req.fits(g)][:req.count]
        need = req.count - len(kept)
        pool = [g for g in gpus if g['address'] not in taken and _usable(g, allow_boot_vga) and req.fits(g)]
        preferred = {req.numa_node} if req.numa_node is not None else set((numa or {}).get(req.name) or [])
        pool.sort(key=lambda g: (bool(preferred) and g.get('numa_node') not in preferred,
                                 g.get('state') != 'vfio-ready', g['address']))
        added = [g['address'] for g in pool[:max(need, 0)]]
        if len(added) < need and not req.addresses:
            problems.append('domain %r asks for %s but only %d can be given (%d already its own); %s'
                            % (req.name, req.describe(), len(kept) + len(added), len(kept),
                               _free_summary([g for g in gpus if g['address'] not in taken and _usable(g, allow_boot_vga)], req is requests[0])))
        taken.update(added)
        out.append(_entry(req, sorted(kept + added), kept, added))
    if problems:
        raise PlacementRequestError('the GPU requests cannot be satisfied, nothing was changed: ' + ' | '.join(problems))
    return out


def _entry(req: _Request, devices: list[str], kept: list[str], added: list[str]) -> dict:
    out: dict[str, object] = {'name': req.name, 'devices': devices, 'kept': kept, 'added': added, 'start': req.start}
    if req.binding != 'static':
        out['binding'] = req.binding
    if req.domain_xml is not None:
        out['domain_xml'] = req.domain_xml
    if req.wiring is not None:
        out['wiring'] = req.wiring
    return out


def gpu_placement(facts: dict, domains: list, assignments: dict | None = None, state: str = 'present',
                  numa: dict | None = None, allow_boot_vga: bool = False) -> list[dict]:
    try:
        return place(facts, domains, assignments, state, numa, bool(allow_boot_vga))
    except PlacementRequestError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict:
        return {'gpu_placement': gpu_placement}
