# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Fleet-wide GPU pools: named models, drift, placement of VM requests, the fleet report data.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Pure functions over plain data (the gpu_facts facts and the libvirt_gpu_info
result of every host), so the controller-side action plugin stays thin and the
rules are unit-tested without Ansible:

* :func:`parse_models` / :func:`parse_vms` validate the inventory variables and
  raise :class:`FleetInputError` naming the offending path;
* :func:`plan` matches every host's GPUs to the models, detects drift, keeps the
  existing assignments and places the remaining requests (spread or pack, NUMA
  required / preferred / any).  It never raises for a request that does not fit:
  the caller decides whether that fails the run (site.yml) or is only reported
  (facts.yml).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._partition import stable_mdev_uuid
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vm_wiring import WiringError, check_wiring_keys

POLICIES = ('spread', 'pack')
NUMA_POLICIES = ('required', 'preferred', 'any')
USABLE_STATES = ('available', 'vfio-ready')
MODEL_KEYS = ('vendor_id', 'device_id', 'subsystem_vendor_id', 'subsystem_device_id', 'name', 'name_regex',
              'hosts', 'description')
VM_KEYS = ('name', 'gpus', 'numa', 'host', 'domain_xml', 'start', 'mode', 'wiring', 'binding')
# static: the VM's GPUs stay on vfio-pci (role vfio_host binds them); dynamic: they stay on their host
# driver and libvirt moves them (managed hostdevs) when the VM starts and stops.
VM_BINDINGS = ('static', 'dynamic')
VM_MODES = ('whole', 'partition')
ASK_KEYS = ('model', 'profile', 'count')
# labels '<vm>-<n>' looked for among a parent's existing mdevs (stable UUIDs of the VM's earlier runs)
_MAX_LABELS = 256
_HEX4 = re.compile(r'^[0-9a-f]{4}$')
_ADDR = re.compile(r'^[0-9a-f]{4,5}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$')
_SHORT_ADDR = re.compile(r'^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$')


class FleetError(FleetGpuError):
    """Base of the fleet errors."""


class FleetInputError(FleetError):
    """The inventory variables are malformed or contradict the fleet (names the input)."""


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

def _hex4(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FleetInputError('%s: %r is not four hex digits (e.g. 10de)' % (where, value))
    text = str(value).strip().lower()
    if text.startswith('0x'):
        text = text[2:]
    if not _HEX4.match(text):
        raise FleetInputError('%s: %r is not four hex digits (e.g. 10de)' % (where, value))
    return text


def norm_address(value: object, where: str) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else ''
    if _SHORT_ADDR.match(text):
        text = '0000:' + text
    if not _ADDR.match(text):
        raise FleetInputError('%s: %r is not a PCI address (e.g. 0000:41:00.0)' % (where, value))
    return text


def slot_of(address: str) -> str:
    return address.rsplit('.', 1)[0]


@dataclass
class Model:
    """One named GPU model: how to recognise it and, optionally, where it is mapped."""

    name: str
    vendor_id: str | None = None
    device_id: str | None = None
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    exact_name: str | None = None
    name_regex: re.Pattern[str] | None = None
    hosts: dict[str, list[str]] | None = None

    def identity_matches(self, gpu: dict) -> bool:
        if self.vendor_id is not None:
            if gpu.get('vendor_id') != self.vendor_id or gpu.get('device_id') != self.device_id:
                return False
            if self.subsystem_vendor_id is not None and gpu.get('subsystem_vendor_id') != self.subsystem_vendor_id:
                return False
            if self.subsystem_device_id is not None and gpu.get('subsystem_device_id') != self.subsystem_device_id:
                return False
            return True
        if self.exact_name is not None:
            wanted = self.exact_name.casefold()
            device = str(gpu.get('device_name') or '')
            full = ' '.join(str(n) for n in (gpu.get('vendor_name'), gpu.get('device_name')) if n)
            return bool(device) and wanted in (device.casefold(), full.casefold())
        if self.name_regex is not None:
            keys = ('vendor_name', 'device_name', 'subsystem_name', 'vendor_device')
            text = ' '.join(str(gpu.get(k) or '') for k in keys)
            return bool(self.name_regex.search(text))
        return False  # pragma: no cover - parse_models guarantees one identity

    def describe(self) -> str:
        if self.vendor_id is not None:
            text = '%s:%s' % (self.vendor_id, self.device_id)
            if self.subsystem_vendor_id or self.subsystem_device_id:
                text += ' subsystem %s:%s' % (self.subsystem_vendor_id or '*', self.subsystem_device_id or '*')
            return text
        if self.exact_name is not None:
            return 'name %r' % self.exact_name
        return 'name ~ /%s/' % (self.name_regex.pattern if self.name_regex else '')


def parse_models(raw: object, inventory_hosts: set[str] | None = None) -> dict[str, Model]:
    """Validate ``fleetgpu_models`` (name -> identity)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise FleetInputError('fleetgpu_models must be a mapping of model name to identity, got a %s'
                              % type(raw).__name__)
    out: dict[str, Model] = {}
    for name in sorted(raw, key=str):
        spec = raw[name]
        where = 'fleetgpu_models.%s' % name
        if not isinstance(spec, dict):
            raise FleetInputError('%s must be a mapping (vendor_id + device_id, name or name_regex), got a %s'
                                  % (where, type(spec).__name__))
        unknown = sorted(str(k) for k in spec if k not in MODEL_KEYS)
        if unknown:
            raise FleetInputError('%s: unknown key(s) %s (known: %s)' % (where, ', '.join(unknown), ', '.join(MODEL_KEYS)))
        forms = [k for k in ('vendor_id', 'name', 'name_regex') if spec.get(k) is not None]
        if len(forms) != 1:
            raise FleetInputError('%s needs exactly one identity: vendor_id + device_id, name (the exact PCI name) '
                                  'or name_regex; got %s' % (where, ', '.join(forms) or 'none'))
        model = Model(name=str(name))
        if forms[0] == 'vendor_id':
            if spec.get('device_id') is None:
                raise FleetInputError('%s: vendor_id needs device_id too' % where)
            model.vendor_id = _hex4(spec['vendor_id'], where + '.vendor_id')
            model.device_id = _hex4(spec['device_id'], where + '.device_id')
            for key in ('subsystem_vendor_id', 'subsystem_device_id'):
                if spec.get(key) is not None:
                    setattr(model, key, _hex4(spec[key], '%s.%s' % (where, key)))
        else:
            for key in ('device_id', 'subsystem_vendor_id', 'subsystem_device_id'):
                if spec.get(key) is not None:
                    raise FleetInputError('%s: %s only goes with vendor_id' % (where, key))
            if forms[0] == 'name':
                if not isinstance(spec['name'], str) or not spec['name'].strip():
                    raise FleetInputError('%s.name must be a non-empty string' % where)
                model.exact_name = spec['name'].strip()
            else:
                try:
                    model.name_regex = re.compile(str(spec['name_regex']), re.IGNORECASE)
                except re.error as exc:
                    raise FleetInputError('%s.name_regex %r is not a regular expression: %s'
                                          % (where, spec['name_regex'], exc)) from None
        if spec.get('hosts') is not None:
            mapping = spec['hosts']
            if not isinstance(mapping, dict):
                raise FleetInputError('%s.hosts must be a mapping of host name to a list of PCI addresses, got a %s'
                                      % (where, type(mapping).__name__))
            model.hosts = {}
            for host in sorted(mapping, key=str):
                addrs = mapping[host]
                hwhere = '%s.hosts.%s' % (where, host)
                if inventory_hosts is not None and str(host) not in inventory_hosts:
                    raise FleetInputError('%s: %s is not a host in the inventory' % (hwhere, host))
                if not isinstance(addrs, list) or not addrs:
                    raise FleetInputError('%s must be a non-empty list of PCI addresses' % hwhere)
                model.hosts[str(host)] = sorted({norm_address(a, '%s[%d]' % (hwhere, i)) for i, a in enumerate(addrs)})
        out[model.name] = model
    return out


@dataclass
class GpuAsk:
    """``count`` whole GPUs of ``model``, or ``count`` mediated devices of type ``profile`` (model empty)."""

    model: str
    count: int
    profile: str | None = None

    def describe(self) -> str:
        return '%d x %s' % (self.count, self.model) if self.profile is None else '%d x profile %s' % (self.count, self.profile)


@dataclass
class VmRequest:
    name: str
    gpus: list[GpuAsk]
    numa: str = 'preferred'
    host: str | None = None
    domain_xml: str | None = None
    start: bool = False
    index: int = 0
    mode: str = 'whole'
    wiring: dict | None = None
    binding: str = 'static'

    @property
    def whole(self) -> list[GpuAsk]:
        return [a for a in self.gpus if a.profile is None]

    @property
    def profiles(self) -> list[GpuAsk]:
        return [a for a in self.gpus if a.profile is not None]

    def describe(self) -> str:
        text = ' + '.join(g.describe() for g in self.gpus)
        return text + (' (partitioned)' if self.mode == 'partition' else '')


def _domain_name(xml: str, where: str) -> str:
    """The <name> of a domain XML (well-formedness is checked here, the schema by libvirt)."""
    from xml.etree import ElementTree  # the controller side needs no lxml

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise FleetInputError('%s is not well-formed XML: %s' % (where, exc)) from None
    if root.tag != 'domain':
        raise FleetInputError('%s: the root element is <%s>, not <domain>' % (where, root.tag))
    name = root.findtext('name')
    if not name or not name.strip():
        raise FleetInputError('%s has no <name>' % where)
    return name.strip()


def parse_vms(raw: object, models: dict[str, Model], inventory_hosts: set[str] | None = None) -> list[VmRequest]:
    """Validate ``fleetgpu_vms``."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise FleetInputError('fleetgpu_vms must be a list of VM requests, got a %s' % type(raw).__name__)
    out: list[VmRequest] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(raw):
        where = 'fleetgpu_vms[%d]' % index
        if not isinstance(entry, dict):
            raise FleetInputError('%s must be a mapping with name and gpus, got a %s' % (where, type(entry).__name__))
        name = entry.get('name')
        if not isinstance(name, str) or not name.strip():
            raise FleetInputError('%s needs a name' % where)
        name = name.strip()
        where = 'fleetgpu_vms[%d] (%s)' % (index, name)
        if name in seen:
            raise FleetInputError('fleetgpu_vms: VM name %r is used twice (entries %d and %d); VM names are '
                                  'libvirt domain names and must be unique across the fleet' % (name, seen[name], index))
        seen[name] = index
        unknown = sorted(str(k) for k in entry if k not in VM_KEYS)
        if unknown:
            raise FleetInputError('%s: unknown key(s) %s (known: %s)' % (where, ', '.join(unknown), ', '.join(VM_KEYS)))
        gpus = entry.get('gpus')
        if not isinstance(gpus, list) or not gpus:
            raise FleetInputError('%s.gpus must be a non-empty list of {model, count}' % where)
        asks: list[GpuAsk] = []
        for gi, ask in enumerate(gpus):
            gwhere = '%s.gpus[%d]' % (where, gi)
            if not isinstance(ask, dict):
                raise FleetInputError('%s must be a mapping {model, count}, got a %s' % (gwhere, type(ask).__name__))
            bad_keys = sorted(str(k) for k in ask if k not in ASK_KEYS)
            if bad_keys:
                raise FleetInputError('%s: unknown key(s) %s (known: %s)' % (gwhere, ', '.join(bad_keys), ', '.join(ASK_KEYS)))
            profile = ask.get('profile')
            model = ask.get('model')
            if profile is not None:
                if model is not None:
                    raise FleetInputError('%s: give either model (whole GPUs) or profile (mediated devices of a type), '
                                          'not both' % gwhere)
                if not isinstance(profile, str) or not profile.strip():
                    raise FleetInputError('%s.profile must be an mdev type id (e.g. nvidia-222) or its name '
                                          '(e.g. GRID T4-4Q), got %r' % (gwhere, profile))
                profile = profile.strip()
                if any(a.profile is not None and a.profile.casefold() == profile.casefold() for a in asks):
                    raise FleetInputError('%s: profile %r is listed twice; give one count' % (gwhere, profile))
            elif model not in models:
                raise FleetInputError('%s: unknown model %r (fleetgpu_models defines: %s)%s'
                                      % (gwhere, model, ', '.join(sorted(models)) or 'none',
                                         '' if model is not None else '; or give profile for mediated devices'))
            elif any(a.model == model for a in asks):
                raise FleetInputError('%s: model %r is listed twice; give one count' % (gwhere, model))
            count = ask.get('count', 1)
            if isinstance(count, bool) or not isinstance(count, (int, str)):
                raise FleetInputError('%s.count %r is not a number' % (gwhere, count))
            try:
                count = int(count)
            except ValueError:
                raise FleetInputError('%s.count %r is not a number' % (gwhere, count)) from None
            if count < 1:
                raise FleetInputError('%s.count must be 1 or more, got %d' % (gwhere, count))
            asks.append(GpuAsk(str(model), count) if profile is None else GpuAsk('', count, profile=profile))
        numa = entry.get('numa', 'preferred')
        if numa not in NUMA_POLICIES:
            raise FleetInputError('%s.numa must be one of %s, got %r' % (where, ', '.join(NUMA_POLICIES), numa))
        host = entry.get('host')
        if host is not None:
            host = str(host)
            if inventory_hosts is not None and host not in inventory_hosts:
                raise FleetInputError('%s.host: %r is not a host in the inventory' % (where, host))
        xml = entry.get('domain_xml')
        if xml is not None:
            if not isinstance(xml, str) or not xml.strip():
                raise FleetInputError('%s.domain_xml must be the domain definition as a string' % where)
            inner = _domain_name(xml, where + '.domain_xml')
            if inner != name:
                raise FleetInputError('%s.domain_xml names the domain %r, not %r' % (where, inner, name))
        start = entry.get('start', False)
        if not isinstance(start, bool):
            raise FleetInputError('%s.start must be true or false, got %r' % (where, start))
        mode = entry.get('mode', 'whole')
        if mode not in VM_MODES:
            raise FleetInputError('%s.mode must be whole (a whole GPU per count) or partition (SR-IOV / mdev), got %r'
                                  % (where, mode))
        wiring = entry.get('wiring')
        if wiring is not None:
            try:
                wiring = check_wiring_keys(wiring, where + '.wiring')
            except WiringError as exc:
                raise FleetInputError(str(exc)) from None
        binding = entry.get('binding', 'static')
        if binding not in VM_BINDINGS:
            raise FleetInputError('%s.binding must be static (the GPUs stay on vfio-pci) or dynamic (on their host driver '
                                  'until the VM starts), got %r' % (where, binding))
        out.append(VmRequest(name=name, gpus=asks, numa=str(numa), host=host, domain_xml=xml, start=start,
                             index=index, mode=str(mode), wiring=wiring, binding=str(binding)))
    return out


# ---------------------------------------------------------------------------------------------
# Hosts as read in play 1
# ---------------------------------------------------------------------------------------------

@dataclass
class HostInput:
    """What play 1 learned of one host."""

    name: str
    status: str = 'ok'                    # ok | failed | unreachable
    message: str = ''
    facts: dict | None = None             # the gpu_passthrough facts
    libvirt: dict | None = None           # the libvirt_gpu_info result
    allow_boot_vga: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Gpu:
    """One GPU of one host (compared by identity: two hosts have GPUs at the same address)."""

    host: str
    address: str
    raw: dict
    model: str | None = None
    holders: list[str] = field(default_factory=list)
    usable: bool = False
    reason: str = ''
    vm: str | None = None                 # set by the plan

    @property
    def numa(self) -> int | None:
        node = self.raw.get('numa_node')
        return node if isinstance(node, int) and node >= 0 else None

    @property
    def vfio(self) -> bool:
        return self.raw.get('driver') == 'vfio-pci'

    def sort_key(self) -> tuple[bool, str]:
        """vfio-pci first (nothing to rebind), then by address."""
        return (not self.vfio, self.address)


def _check_gpu_list(facts: object, host: str) -> list[dict]:
    if not isinstance(facts, dict) or not isinstance(facts.get('gpus'), list):
        raise FleetInputError('host %s: the gpu_passthrough facts have no gpus list' % host)
    gpus = []
    for i, gpu in enumerate(facts['gpus']):
        if not isinstance(gpu, dict) or not isinstance(gpu.get('address'), str):
            raise FleetInputError('host %s: gpu_passthrough.gpus[%d] has no address' % (host, i))
        gpus.append(gpu)
    return gpus


def _libvirt_domains(info: dict | None) -> list[dict]:
    if not isinstance(info, dict) or not info.get('available'):
        return []
    return [d for d in info.get('domains') or [] if isinstance(d, dict) and d.get('name')]


def _boot_only(gpu: dict) -> bool:
    """A boot GPU whose only obstacle is being the boot GPU (not in use, not unusable)."""
    return gpu.get('state') == 'boot-vga' and len(gpu.get('state_reasons') or []) <= 1


def _drift(model: Model, host: str, gpus: dict[str, dict]) -> list[str]:
    out = []
    for addr in (model.hosts or {}).get(host, []):
        gpu = gpus.get(addr)
        if gpu is None:
            out.append('model %s: %s is mapped on %s but the host has no GPU there (GPUs: %s)'
                       % (model.name, addr, host, ', '.join(sorted(gpus)) or 'none'))
            continue
        if not model.identity_matches(gpu):
            out.append('model %s: %s on %s is now %s%s (%s), not %s'
                       % (model.name, addr, host, gpu.get('vendor_device'),
                          ' subsystem %s:%s' % (gpu.get('subsystem_vendor_id'), gpu.get('subsystem_device_id')),
                          gpu.get('device_name') or 'no name', model.describe()))
            continue
        others = [m.get('address') for m in gpu.get('iommu_group_members') or []
                  if isinstance(m, dict) and m.get('address') and slot_of(str(m['address'])) != slot_of(addr)]
        if others:
            out.append('model %s: the IOMMU group of %s on %s now also holds %s'
                       % (model.name, addr, host, ', '.join(sorted(str(o) for o in others))))
    return out


# ---------------------------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------------------------

@dataclass
class Rejection:
    host: str
    reason: str
    free: dict[str, int]


@dataclass
class Partition:
    """One mediated device of a VM: on which parent, of which type, its (stable) UUID."""

    parent: str
    type: str
    type_name: str | None
    uuid: str
    label: str | None                     # '<vm>-<n>' (None: found held by the VM under another UUID)
    profile: str
    kept: bool = False                    # it exists already (not created by this plan)

    def as_dict(self) -> dict:
        out: dict = {'parent': self.parent, 'type': self.type, 'uuid': self.uuid}
        if self.label is not None:
            out['name'] = self.label
        return out


@dataclass(eq=False)
class ParentCapacity:
    """One mdev parent of one host (gpu_facts' ``mdev_parents``): its types' capacity, its mdevs, what the plan gives."""

    host: str
    parent: str
    types: dict[str, dict]                # type id -> {'type_name', 'available'}
    mdevs: list[dict]
    given: dict[str, int] = field(default_factory=dict)  # type id -> new mdevs this plan creates

    def resolve(self, profile: str) -> str | None:
        """The type id ``profile`` names here (its id, or its human name, case-insensitively)."""
        if profile in self.types:
            return profile
        folded = profile.casefold()
        for tid in sorted(self.types):
            name = self.types[tid].get('type_name')
            if tid.casefold() == folded or (isinstance(name, str) and name.casefold() == folded):
                return tid
        return None

    def free(self, type_id: str, given: dict[str, int] | None = None) -> int:
        """Instances of ``type_id`` still free once the plan's mdevs are created. Types share a parent's resources
        (one vGPU type per physical GPU, a shared memory pool): once the plan gives a parent one type, the others
        count as none free there."""
        given = self.given if given is None else given
        if any(n for t, n in given.items() if t != type_id):
            return 0
        return max(0, int(self.types.get(type_id, {}).get('available') or 0) - given.get(type_id, 0))


def _mdev_parents(facts: dict | None, host: str, libvirt_info: dict | None = None) -> list[ParentCapacity]:
    """The host's mdev parents; each mdev also gets ``domains``, the domains whose definitions name it (from
    libvirt_gpu_info's ``mdev_assignments``: a VM that is not running holds its mdevs there, not in the kernel)."""
    assigned = libvirt_info.get('mdev_assignments') if isinstance(libvirt_info, dict) else None
    assigned = assigned if isinstance(assigned, dict) else {}
    raw = facts.get('mdev_parents') if isinstance(facts, dict) else None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise FleetInputError('host %s: the gpu_passthrough facts have an mdev_parents that is not a list' % host)
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get('parent'), str):
            raise FleetInputError('host %s: gpu_passthrough.mdev_parents[%d] has no parent' % (host, i))
        types: dict[str, dict] = {}
        for t in entry.get('types') or []:
            if isinstance(t, dict) and isinstance(t.get('type'), str):
                avail = t.get('available_instances')
                types[t['type']] = {'type_name': t.get('type_name'),
                                    'available': avail if isinstance(avail, int) and not isinstance(avail, bool) else 0}
        mdevs = [dict(m, domains=sorted(str(d) for d in assigned.get(m['uuid'].lower()) or []))
                 for m in entry.get('mdevs') or [] if isinstance(m, dict) and isinstance(m.get('uuid'), str)]
        out.append(ParentCapacity(host=host, parent=entry['parent'], types=types, mdevs=mdevs))
    return sorted(out, key=lambda p: p.parent)


@dataclass
class MdevIndex:
    """The existing mdevs of the fleet, indexed once per plan: by UUID, by the domain holding them (running or
    defined), and the (parent name, type) pairs they are of with the most mdevs one parent of the pair has. Parent
    names repeat across hosts (the same PCI address on identical hosts, ``mbochs``), so a VM's stable UUIDs are
    derived per pair, not per host: the cost does not grow with the number of hosts."""

    parents: dict[str, list[ParentCapacity]] = field(default_factory=dict)
    by_uuid: dict[str, list[tuple[str, ParentCapacity, dict]]] = field(default_factory=dict)
    by_domain: dict[str, list[tuple[str, ParentCapacity, dict]]] = field(default_factory=dict)
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def build(cls, parents: dict[str, list[ParentCapacity]]) -> 'MdevIndex':
        index = cls(parents=parents)
        for hname in sorted(parents):
            for par in parents[hname]:
                for m in par.mdevs:
                    entry = (hname, par, m)
                    index.by_uuid.setdefault(str(m['uuid']).lower(), []).append(entry)
                    for holder in sorted({str(m['held_by'])} if m.get('held_by') else set()) + list(m['domains']):
                        index.by_domain.setdefault(holder, []).append(entry)
                    pair = (par.parent, str(m.get('type') or ''))
                    index.pairs[pair] = max(index.pairs.get(pair, 0), len(par.mdevs))
        return index


def _vm_mdevs(vm: VmRequest, index: MdevIndex) -> dict[str, list[Partition]]:
    """Host -> the mdevs there that are ``vm``'s: its domain holds it (running, or in its definition), or its UUID is
    one the plan gives the VM (``<vm>-<n>``). In each host's parent and mdev order."""
    limit = sum(a.count for a in vm.profiles) + 16
    mine: dict[int, str | None] = {}          # id(mdev dict) -> its label
    hosts: set[str] = set()
    for (parent, tid), most in sorted(index.pairs.items()):
        for n in range(1, limit + most + 1):
            label = '%s-%d' % (vm.name, n)
            for hname, par, m in index.by_uuid.get(stable_mdev_uuid(parent, tid, label), []):
                if par.parent == parent and str(m.get('type') or '') == tid:
                    mine[id(m)] = label
                    hosts.add(hname)
    for hname, _par, m in index.by_domain.get(vm.name, []):
        mine.setdefault(id(m), None)
        hosts.add(hname)
    out: dict[str, list[Partition]] = {}
    for hname in sorted(hosts):
        for par in index.parents[hname]:
            for m in par.mdevs:
                if id(m) not in mine:
                    continue
                tid = str(m.get('type') or '')
                out.setdefault(hname, []).append(Partition(
                    parent=par.parent, type=tid, type_name=m.get('type_name') or par.types.get(tid, {}).get('type_name'),
                    uuid=str(m['uuid']).lower(), label=mine[id(m)], profile='', kept=True))
    return out


def _choose_partitions(vm: VmRequest, parents: list[ParentCapacity], need: dict[str, int], taken_labels: set[str],
                       policy: str) -> tuple[list[Partition] | None, str]:
    """New mdevs on one host's parents for the VM's profile asks, or (None, why not). Commits nothing."""
    given = {id(p): dict(p.given) for p in parents}
    chosen: list[Partition] = []
    labels = set(taken_labels)
    for profile in sorted(need, key=str.casefold):
        count = need[profile]
        if count <= 0:
            continue
        candidates = [(p, tid) for p in parents for tid in [p.resolve(profile)] if tid is not None]
        if not candidates:
            offered = sorted({t for p in parents for t in p.types})
            return None, 'profile %s: no mdev parent here offers it (types here: %s)' % (profile, ', '.join(offered) or 'none')
        for _unit in range(count):
            free = [(p.free(tid, given[id(p)]), p.parent, p, tid) for p, tid in candidates]
            free = [f for f in free if f[0] > 0]
            if not free:
                per_parent = ', '.join('%s %s: %d' % (p.parent, tid, p.free(tid)) for p, tid in candidates)
                return None, 'capacity: needs %d x profile %s, %d free (%s)' % (
                    count, profile, sum(p.free(tid) for p, tid in candidates), per_parent)
            free.sort(key=lambda f: ((-f[0] if policy == 'spread' else f[0]), f[1]))
            _n, _name, par, tid = free[0]
            given[id(par)][tid] = given[id(par)].get(tid, 0) + 1
            n = 1
            while '%s-%d' % (vm.name, n) in labels:
                n += 1
            label = '%s-%d' % (vm.name, n)
            labels.add(label)
            chosen.append(Partition(parent=par.parent, type=tid, type_name=par.types[tid].get('type_name'),
                                    uuid=stable_mdev_uuid(par.parent, tid, label), label=label, profile=profile))
    return chosen, ''


def _profile_free(parents: list[ParentCapacity], profile: str) -> int:
    return sum(p.free(tid) for p in parents for tid in [p.resolve(profile)] if tid is not None)


@dataclass
class Placement:
    vm: VmRequest
    host: str
    devices: dict[str, list[str]]         # model -> addresses
    kept: list[str]
    added: list[str]
    partitions: list[Partition] = field(default_factory=list)


@dataclass
class Unplaced:
    vm: VmRequest
    why: str
    rejections: list[Rejection]


@dataclass
class FleetPlan:
    hosts: dict[str, HostInput]
    gpus: dict[str, list[Gpu]]
    models: dict[str, Model]
    vms: list[VmRequest]
    policy: str
    placements: list[Placement] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)
    drift: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    parents: dict[str, list[ParentCapacity]] = field(default_factory=dict)   # host -> its mdev parents

    # -- what the converge play needs -------------------------------------------------------
    def artifact(self) -> list[dict]:
        out: list[dict] = []
        for p in self.placements:
            for model in sorted(p.devices):
                out.append({'vm': p.vm.name, 'host': p.host, 'model': model, 'devices': p.devices[model]})
            for ask in p.vm.profiles:
                mine = [x for x in p.partitions if x.profile == ask.profile]
                out.append({'vm': p.vm.name, 'host': p.host, 'profile': ask.profile, 'devices': [x.uuid for x in mine],
                            'mdevs': [x.as_dict() for x in mine]})
        return out

    def host_plan(self, host: str) -> dict:
        """vfio_host_devices (the host's pool: placed and free usable pool GPUs, but those of VMs with binding
        dynamic, which stay on their host driver), libvirt_gpu_domains, and vfio_host_dynamic_devices (those GPUs)
        when there are any."""
        domains = []
        dynamic: set[str] = set()
        for p in self.placements:
            if p.host != host:
                continue
            entry: dict[str, object] = {'name': p.vm.name, 'start': p.vm.start}
            if p.vm.whole:
                entry['gpus'] = {'addresses': sorted(a for ads in p.devices.values() for a in ads)}
            if p.partitions:
                # created with gpu_partition (stable UUIDs) and attached as mdev hostdevs by role libvirt_gpu
                entry['mdevs'] = [x.as_dict() for x in p.partitions]
            if p.vm.binding == 'dynamic':
                entry['binding'] = 'dynamic'
                dynamic.update(a for ads in p.devices.values() for a in ads)
            if p.vm.domain_xml is not None:
                entry['domain_xml'] = p.vm.domain_xml
            if p.vm.wiring is not None:
                entry['wiring'] = p.vm.wiring
            domains.append(entry)
        pool = sorted(g.address for g in self.gpus.get(host, [])
                      if g.model is not None and (g.vm or (g.usable and not g.holders)) and g.address not in dynamic)
        out: dict = {'vfio_host_devices': [{'address': a} for a in pool], 'libvirt_gpu_domains': domains,
                     'vms': [d['name'] for d in domains]}
        if dynamic:
            out['vfio_host_dynamic_devices'] = sorted(dynamic)
        return out

    def failure_message(self) -> str:
        lines = ['fleet placement failed, no host was changed: %d of %d VM request(s) cannot be placed (policy %s)'
                 % (len(self.unplaced), len(self.vms), self.policy)]
        for u in self.unplaced:
            lines.append("VM %r asks for %s (numa %s%s): %s"
                         % (u.vm.name, u.vm.describe(), u.vm.numa, ', pinned to %s' % u.vm.host if u.vm.host else '', u.why))
            if u.rejections:
                width = max(len('host'), *(len(r.host) for r in u.rejections))
                lines.append('  %-*s  %-28s  %s' % (width, 'host', 'free GPUs per model' + (' / profile' if u.vm.profiles else ''),
                                                    'rejected because'))
                for r in u.rejections:
                    free = ', '.join('%s: %d' % (m, n) for m, n in sorted(r.free.items())) or '-'
                    lines.append('  %-*s  %-28s  %s' % (width, r.host, free, r.reason))
        return '\n'.join(lines)


def _take(free: list[Gpu], need: int) -> list[Gpu]:
    return sorted(free, key=lambda g: g.sort_key())[:need]


def _choose_on_host(vm: VmRequest, host: str, free: dict[str, list[Gpu]], need: dict[str, int],
                    kept_nodes: set[int | None], policy: str) -> tuple[dict[str, list[Gpu]] | None, str]:
    """GPUs on one host for one VM, or (None, why not)."""
    short = {m: n for m, n in need.items() if len(free.get(m, [])) < n}
    if short:
        return None, 'capacity: ' + ', '.join('needs %d x %s, %d free' % (n, m, len(free.get(m, [])))
                                              for m, n in sorted(short.items()))
    if vm.numa in ('required', 'preferred') and any(need.values()):
        nodes = sorted({g.numa for m in need for g in free.get(m, [])} | kept_nodes, key=lambda n: (n is None, n or 0))
        if len(kept_nodes) > 1:
            nodes = []
        elif kept_nodes:
            nodes = list(kept_nodes)
        fitting = []
        for node in nodes:
            on_node = {m: [g for g in free.get(m, []) if g.numa == node] for m in need}
            if all(len(on_node[m]) >= n for m, n in need.items()):
                fitting.append((sum(len(v) for v in on_node.values()), node, on_node))
        if fitting:
            fitting.sort(key=lambda t: ((-t[0] if policy == 'spread' else t[0]), t[1] is None, t[1] or 0))
            on_node = fitting[0][2]
            return {m: _take(on_node[m], n) for m, n in need.items()}, ''
        if vm.numa == 'required':
            per_node = '; '.join('node %s: %s' % ('none' if node is None else node,
                                                  ', '.join('%d %s' % (len([g for g in free.get(m, []) if g.numa == node]), m)
                                                            for m in sorted(need)))
                                 for node in nodes)
            return None, 'numa: enough free GPUs, but not on one NUMA node (%s)%s' % (
                per_node, '; the GPUs the VM holds already span several nodes' if len(kept_nodes) > 1 else '')
    return {m: _take(free.get(m, []), n) for m, n in need.items()}, ''


def _has_libvirt(host: HostInput) -> bool:
    return isinstance(host.libvirt, dict) and bool(host.libvirt.get('available'))


def _rejection(vm: VmRequest, host: HostInput, candidates: list[str] | None, drifted: dict[str, set[str]],
               drift: dict[str, list[str]], free: dict[str, list[Gpu]], free_count: dict[str, int],
               policy: str, quarantined: list[Gpu] | None = None, parents: list[ParentCapacity] | None = None) -> Rejection:
    """Why ``host`` cannot take ``vm`` (only computed for a request that fits nowhere)."""
    quarantined = quarantined or []
    hname = host.name
    if host.status != 'ok':
        return Rejection(hname, '%s: %s' % (host.status, host.message or 'no facts'), {})
    if vm.host is not None and hname != vm.host:
        return Rejection(hname, 'pin: the VM is pinned to %s' % vm.host, free_count)
    if candidates is not None and hname not in candidates:
        return Rejection(hname, 'domain: %r is defined on %s only' % (vm.name, ', '.join(candidates)), free_count)
    if not _has_libvirt(host):
        why = host.libvirt.get('error') if isinstance(host.libvirt, dict) else None
        return Rejection(hname, 'no libvirt%s' % (': %s' % why if why else ''), free_count)
    bad = sorted(a.model for a in vm.whole if a.model in drifted.get(hname, set()))
    if bad:
        mine = [d for d in drift.get(hname, []) if any(d.startswith('model %s:' % m) for m in bad)]
        return Rejection(hname, 'drift: ' + '; '.join(mine), free_count)
    _chosen, why = _choose_on_host(vm, hname, free, {a.model: a.count for a in vm.whole}, set(), policy)
    if not why and vm.profiles:
        _parts, why = _choose_partitions(vm, parents or [], {str(a.profile): a.count for a in vm.profiles}, set(), policy)
    asked = {a.model for a in vm.whole}
    held_back = sorted(g.address for g in quarantined if g.model in asked)
    if why and held_back:
        why += '; quarantined (skipped): %s' % ', '.join(held_back)
    return Rejection(hname, why or 'fits now, but not when the requests before it were placed', free_count)


def _partition_refusal(vm: VmRequest, gpus: dict[str, list[Gpu]]) -> str:
    """Why a ``mode: partition`` request is not placed (never as whole GPUs)."""
    capable = []
    for hname in sorted(gpus):
        for g in gpus[hname]:
            if g.model not in {a.model for a in vm.whole}:
                continue
            sriov_raw = g.raw.get('sriov')
            sriov = sriov_raw if isinstance(sriov_raw, dict) else {}
            kinds = (['SR-IOV'] if (sriov.get('totalvfs') or 0) > 0 else []) + (['mdev'] if g.raw.get('mdev_types') else [])
            if kinds:
                capable.append('%s %s (%s)' % (hname, g.address, '+'.join(kinds)))
    if capable:
        return ('it asks for partitioned GPUs (mode: partition) by model; GPUs of its model(s) offer partitions (%s): '
                'ask for them by profile (gpus: [{profile: <mdev type id or name>, count: N}]); it is not placed as '
                'whole GPUs' % ', '.join(capable))
    return ('it asks for partitioned GPUs (mode: partition), and no GPU of model(s) %s offers SR-IOV virtual functions '
            'or mediated device types on the hosts read; partitions are asked for by profile (gpus: [{profile: <mdev '
            'type>, count: N}]), and the request is not placed as whole GPUs'
            % ', '.join(sorted({a.model for a in vm.whole})))


def _keep_partitions(vm: VmRequest, parents: list[ParentCapacity], mine: list[Partition]) -> list[Partition]:
    """Of the VM's existing mdevs on its host, those its profile asks still want (up to each count)."""
    by_parent = {p.parent: p for p in parents}
    kept: list[Partition] = []
    for ask in vm.profiles:
        fits = [x for x in mine if x not in kept and x.parent in by_parent
                and by_parent[x.parent].resolve(str(ask.profile)) == x.type]
        fits.sort(key=lambda x: (x.label is None, x.label or '', x.uuid))
        for x in fits[:ask.count]:
            x.profile = str(ask.profile)
            kept.append(x)
    return kept


def _order_partitions(vm: VmRequest, parts: list[Partition]) -> list[Partition]:
    order = {str(a.profile): i for i, a in enumerate(vm.profiles)}

    def key(x: Partition) -> tuple:
        n = x.label.rsplit('-', 1)[-1] if x.label else ''
        return (order.get(x.profile, 0), int(n) if n.isdigit() else 1 << 30, x.uuid)
    return sorted(parts, key=key)


def plan(hosts: dict[str, HostInput], models: dict[str, Model], vms: list[VmRequest], policy: str = 'spread',
         strict: bool = True) -> FleetPlan:
    """Match, check drift and place.

    ``strict`` (site.yml) raises :class:`FleetInputError` for a model that matches nothing, two models
    matching one device, more GPUs asked of a model than the fleet has; without it (facts.yml) these
    are collected in ``errors`` and the report still gets written.
    """
    if policy not in POLICIES:
        raise FleetInputError('fleetgpu_placement_policy must be spread or pack, got %r' % (policy,))
    result = FleetPlan(hosts=hosts, gpus={}, models=models, vms=vms, policy=policy)
    errors: list[str] = []

    # 1. every GPU of every reachable host, its model, holders, usability; drift
    drifted: dict[str, set[str]] = {}        # host -> models refused there
    for hname in sorted(hosts):
        host = hosts[hname]
        if host.status != 'ok' or host.facts is None:
            continue
        raw = _check_gpu_list(host.facts, hname)
        by_addr = {str(r['address']): r for r in raw}
        holders: dict[str, list[str]] = {}
        for dom in _libvirt_domains(host.libvirt):
            for addr in dom.get('hostdevs') or []:
                holders.setdefault(str(addr), []).append(str(dom['name']))
        gpus: list[Gpu] = []
        for addr in sorted(by_addr):
            row = by_addr[addr]
            gpu = Gpu(host=hname, address=addr, raw=row, holders=sorted(set(holders.get(addr, []))))
            matched = []
            for model in models.values():
                if model.hosts is not None:
                    if addr in model.hosts.get(hname, []) and model.identity_matches(row):
                        matched.append(model.name)
                elif model.identity_matches(row):
                    matched.append(model.name)
            if len(matched) > 1:
                errors.append('host %s: %s (%s) matches more than one model: %s; a GPU belongs to one model'
                              % (hname, addr, row.get('vendor_device'), ', '.join(matched)))
            gpu.model = matched[0] if matched else None
            state = row.get('state')
            quarantine = row.get('quarantined')
            if quarantine:
                gpu.reason = 'quarantined: %s' % (quarantine.get('reason') if isinstance(quarantine, dict) else quarantine)
            elif state in USABLE_STATES:
                gpu.usable, gpu.reason = True, ''
            elif state == 'boot-vga' and host.allow_boot_vga and _boot_only(row):
                gpu.usable, gpu.reason = True, 'boot GPU (forced with vfio_host_allow_boot_vga)'
            elif state == 'boot-vga':
                gpu.reason = 'boot GPU' + ('' if _boot_only(row) else ': ' + '; '.join(row.get('state_reasons') or []))
            else:
                gpu.reason = '%s: %s' % (state, '; '.join(row.get('state_reasons') or []) or 'no reason given')
            gpus.append(gpu)
        result.gpus[hname] = gpus
        result.parents[hname] = _mdev_parents(host.facts, hname, host.libvirt)
        for model in models.values():
            found = _drift(model, hname, by_addr)
            if found:
                result.drift.setdefault(hname, []).extend(found)
                drifted.setdefault(hname, set()).add(model.name)
        for gpu in gpus:
            if gpu.model in drifted.get(hname, set()):
                gpu.usable, gpu.reason = False, 'drift (model %s refused on this host)' % gpu.model

    totals: dict[str, int] = {m: 0 for m in models}
    for gpus in result.gpus.values():
        for gpu in gpus:
            if gpu.model is not None:
                totals[gpu.model] += 1
    reachable = bool(result.gpus)
    for name in sorted(models):
        if reachable and totals[name] == 0:
            errors.append('model %s (%s) matches no GPU on any host%s' % (
                name, models[name].describe(),
                ' (it is mapped to %s only)' % ', '.join(sorted(models[name].hosts or {})) if models[name].hosts else ''))
    offered = {t.casefold() for ps in result.parents.values() for par in ps
               for tid, info in par.types.items() for t in (tid, str(info.get('type_name') or tid))}
    for vm in vms:
        for ask in vm.profiles:
            if reachable and str(ask.profile).casefold() not in offered:
                types = sorted({'%s (%s)' % (tid, info.get('type_name')) if info.get('type_name') else tid
                                for ps in result.parents.values() for par in ps for tid, info in par.types.items()})
                errors.append('VM %r asks for profile %r, which no mdev parent of the fleet offers (types offered: %s)'
                              % (vm.name, ask.profile, ', '.join(types) or 'none: no host reports mdev_parents'))
        for ask in vm.whole if vm.mode == 'whole' else []:
            if reachable and ask.count > totals[ask.model] and totals[ask.model] > 0:
                errors.append('VM %r asks for %d x %s but the fleet has only %d GPU(s) of that model (free or not)'
                              % (vm.name, ask.count, ask.model, totals[ask.model]))
    if errors and strict:
        raise FleetInputError('; '.join(errors))
    result.errors = errors

    # 2. where each VM's domain exists, what it holds already
    exists: dict[str, list[str]] = {}
    for hname in sorted(hosts):
        for dom in _libvirt_domains(hosts[hname].libvirt):
            exists.setdefault(str(dom['name']), []).append(hname)

    # free pool GPUs per host and model, kept up to date as GPUs are given out
    free_idx: dict[str, dict[str, list[Gpu]]] = {}
    for hname, host_gpus in result.gpus.items():
        for g in host_gpus:
            if g.model is not None and g.usable and not g.holders:
                free_idx.setdefault(hname, {}).setdefault(g.model, []).append(g)

    def free_of(hname: str) -> dict[str, list[Gpu]]:
        return free_idx.get(hname, {})

    def counts(hname: str, vm: VmRequest | None = None) -> dict[str, int]:
        out = {m: len(v) for m, v in free_of(hname).items() if v}
        for ask in vm.profiles if vm is not None else []:
            out['profile %s' % ask.profile] = _profile_free(result.parents.get(hname, []), str(ask.profile))
        return out

    def give_partitions(parts: list[Partition]) -> None:
        for x in parts:
            if x.kept:
                continue
            for par in result.parents.get(host_of[x.uuid], []):
                if par.parent == x.parent:
                    par.given[x.type] = par.given.get(x.type, 0) + 1

    host_of: dict[str, str] = {}

    def give(vm: VmRequest, gpus: list[Gpu]) -> None:
        for g in gpus:
            g.vm = vm.name
            pool = free_idx.get(g.host, {}).get(str(g.model), [])
            if g in pool:
                pool.remove(g)

    by_holder: dict[str, list[Gpu]] = {}
    for host_gpus in result.gpus.values():
        for g in host_gpus:
            for name in g.holders:
                by_holder.setdefault(name, []).append(g)

    anchored: list[tuple[VmRequest, str, dict[str, list[Gpu]]]] = []
    floating: list[VmRequest] = []
    held_mdevs: dict[str, dict[str, list[Partition]]] = {}    # vm -> host -> its existing mdevs
    mdev_index = MdevIndex.build(result.parents)
    for vm in vms:
        if vm.mode == 'partition' and vm.whole:
            result.unplaced.append(Unplaced(vm, _partition_refusal(vm, result.gpus), []))
            continue
        wanted = {a.model for a in vm.whole}
        held: dict[str, dict[str, list[Gpu]]] = {}
        for g in by_holder.get(vm.name, []):
            if g.model in wanted:
                held.setdefault(g.host, {}).setdefault(str(g.model), []).append(g)
        if vm.profiles:
            mine_by_host = _vm_mdevs(vm, mdev_index)
            if mine_by_host:
                held_mdevs[vm.name] = mine_by_host
        holding = sorted(set(held) | set(held_mdevs.get(vm.name, {})))
        if len(holding) > 1:
            result.unplaced.append(Unplaced(vm, 'it holds GPUs on several hosts (%s); a passthrough VM lives on one '
                                                'host: remove the others by hand' % ', '.join(holding), []))
            continue
        if holding:
            hname = holding[0]
            if vm.host is not None and vm.host != hname:
                result.unplaced.append(Unplaced(vm, 'it is pinned to %s but already holds GPUs on %s; passthrough VMs '
                                                    'do not migrate: move it by hand or change the pin' % (vm.host, hname), []))
                continue
            anchored.append((vm, hname, held.get(hname, {})))
        else:
            floating.append(vm)

    # 3. anchored VMs keep their GPUs (up to their count) and top up on their host
    for vm, hname, held_here in anchored:
        kept = {a.model: sorted(held_here.get(a.model, []), key=lambda g: g.address)[:a.count] for a in vm.whole}
        need = {a.model: a.count - len(kept[a.model]) for a in vm.whole}
        kept_parts = _keep_partitions(vm, result.parents.get(hname, []), held_mdevs.get(vm.name, {}).get(hname, []))
        need_parts = {str(a.profile): a.count - sum(1 for x in kept_parts if x.profile == a.profile) for a in vm.profiles}
        bad = sorted(m for m in need if m in drifted.get(hname, set()))
        if bad:
            result.unplaced.append(Unplaced(vm, 'it holds GPUs on %s, where model(s) %s drifted' % (hname, ', '.join(bad)),
                                            [Rejection(hname, 'drift: ' + '; '.join(result.drift.get(hname, [])),
                                                       counts(hname, vm))]))
            continue
        nodes = {g.numa for gs in kept.values() for g in gs} if vm.numa != 'any' else set()
        chosen, why = _choose_on_host(vm, hname, free_of(hname), need, nodes, result.policy)
        parts: list[Partition] | None = []
        if chosen is not None:
            parts, why = _choose_partitions(vm, result.parents.get(hname, []), need_parts,
                                            {str(x.label) for x in kept_parts if x.label}, result.policy)
        if chosen is None or parts is None:
            result.unplaced.append(Unplaced(vm, 'it already holds GPUs on %s and does not move; the rest does not fit '
                                                'there' % hname, [Rejection(hname, why, counts(hname, vm))]))
            continue
        give(vm, [g for gs in kept.values() for g in gs] + [g for gs in chosen.values() for g in gs])
        for x in parts:
            host_of[x.uuid] = hname
        give_partitions(parts)
        result.placements.append(Placement(
            vm=vm, host=hname,
            devices={m: sorted(g.address for g in kept[m] + chosen.get(m, [])) for m in kept},
            kept=sorted(g.address for gs in kept.values() for g in gs),
            added=sorted(g.address for gs in chosen.values() for g in gs),
            partitions=_order_partitions(vm, kept_parts + parts)))

    # 4. the others, in request order: the hosts that pass the cheap checks, best first by policy
    host_names = sorted(hosts)
    eligible_list = [h for h in host_names if hosts[h].status == 'ok' and _has_libvirt(hosts[h])]
    eligible = set(eligible_list)
    for vm in floating:
        candidates = exists.get(vm.name)
        if candidates is None and vm.domain_xml is None:
            result.unplaced.append(Unplaced(vm, 'its domain is not defined on any reachable host and it has no '
                                                'domain_xml to define it from', []))
            continue
        need = {a.model: a.count for a in vm.whole}
        need_parts = {str(a.profile): a.count for a in vm.profiles}
        items = list(need.items())
        spread = result.policy == 'spread'
        if vm.host is not None:
            pool = [vm.host] if vm.host in eligible else []
        elif candidates is not None:
            pool = [h for h in candidates if h in eligible]
        else:
            pool = eligible_list
        if candidates is not None and vm.host is not None and vm.host not in candidates:
            pool = []
        ranked = []
        for hname in pool:
            free = free_idx.get(hname) or {}
            if need and not free:
                continue
            for m, n in items:
                if len(free.get(m, ())) < n:
                    break
            else:
                if drifted and any(m in drifted.get(hname, ()) for m in need):
                    continue
                parts_free = [_profile_free(result.parents.get(hname, []), p) for p in need_parts]
                if any(f < need_parts[p] for f, p in zip(parts_free, need_parts)):
                    continue
                total = sum(len(v) for v in free.values()) + sum(parts_free)
                ranked.append(((-total if spread else total), hname))
        ranked.sort()
        placed = False
        for _key, hname in ranked:
            chosen, _why = _choose_on_host(vm, hname, free_of(hname), need, set(), result.policy)
            if chosen is None:
                continue
            parts, _why = _choose_partitions(vm, result.parents.get(hname, []), need_parts, set(), result.policy)
            if parts is not None:
                give(vm, [g for gs in chosen.values() for g in gs])
                for x in parts:
                    host_of[x.uuid] = hname
                give_partitions(parts)
                result.placements.append(Placement(
                    vm=vm, host=hname, devices={m: sorted(g.address for g in gs) for m, gs in chosen.items()},
                    kept=[], added=sorted(g.address for gs in chosen.values() for g in gs),
                    partitions=_order_partitions(vm, parts)))
                placed = True
                break
        if not placed:
            why = 'no host fits' if vm.host is None or vm.host in hosts else \
                'it is pinned to %s, which is not a host of this play' % vm.host
            result.unplaced.append(Unplaced(vm, why, [
                _rejection(vm, hosts[h], candidates, drifted, result.drift, free_of(h), counts(h, vm), result.policy,
                           [g for g in result.gpus.get(h, []) if g.raw.get('quarantined')], result.parents.get(h, []))
                for h in host_names]))
    result.placements.sort(key=lambda p: p.vm.index)
    return result
