# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Import the GPU assignments of VMware VMs (.vmx files, OVF descriptors) as fleet VM requests.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Pure Python over file contents, so the controller-side action plugin stays thin:

* :func:`parse_vmx` / :func:`parse_ovf` read one file into a :class:`VmSource` (the VM's name and
  its passthrough entries, each with the file and line or element it came from) and raise
  :class:`VmwareImportError` naming the file and line for input they cannot read;
* :func:`derive` turns the sources into ``fleetgpu_vms`` entries (by vendor:device through the
  fleet's model table), ``pending`` requests the fleet cannot place yet (vGPU profiles, GPUs the
  model table does not name) and ``skipped`` entries that are not GPU requests (DirectPath NICs,
  dynamic DirectPath by custom label, disabled entries), each with its reason.

The old host's PCI addresses are kept as information only: they mean nothing on the new host.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from xml.etree import ElementTree

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.fleet_plan import FleetInputError, parse_models

VMX_SUFFIXES = ('.vmx',)
OVF_SUFFIXES = ('.ovf',)
MAX_FILE_BYTES = 4 * 1024 * 1024
# vendors whose passthrough devices are network / storage adapters, never GPUs
NIC_VENDORS = {
    '15b3': 'Mellanox / NVIDIA networking',
    '14e4': 'Broadcom',
    '1077': 'QLogic',
    '19a2': 'Emulex',
    '1924': 'Solarflare',
    '177d': 'Cavium',
    '1137': 'Cisco',
    '8088': 'Wangxun',
    '1d0f': 'Amazon ENA',
    '1425': 'Chelsio',
}
# Intel makes GPUs and NICs: its NIC device ids are recognised by range (Ethernet controllers)
_INTEL_NIC_IDS = re.compile(r'^(10[0-9a-f]{2}|15[0-9a-f]{2}|17[0-9a-f]{2}|18[0-9a-f]{2}|0d[0-9a-f]{2}|12[0-9a-f]{2})$')
_VMX_LINE = re.compile(r'^\s*(?P<key>[A-Za-z0-9_.:\[\]-]+)\s*=\s*(?P<value>.*?)\s*$')
_PASSTHRU_KEY = re.compile(r'^pcipassthru(?P<index>\d+)\.(?P<field>[a-z_0-9.\[\]]+)$')
_HEX = re.compile(r'^(0x)?[0-9a-f]{1,4}$')
_VMX_ESCAPE = re.compile(r'\|([0-9A-Fa-f]{2})')
_VGPU = re.compile(r'^[a-z][a-z0-9_]*(-[a-z0-9]+)+$', re.IGNORECASE)
_BOOL_TRUE = ('true', 'yes', '1', 'on')
_BOOL_FALSE = ('false', 'no', '0', 'off')


class VmwareImportError(FleetGpuError):
    """A file cannot be read or parsed (the message names the file and, where there is one, the line)."""


@dataclass
class PassthroughEntry:
    """One pciPassthruN device (or one OVF passthrough item) as the VMware VM had it."""

    file: str
    key: str                        # pciPassthru0 / the OVF item's name
    line: int | None                # line of its first key (VMX) or of its element when known
    fields: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, fname: str | None = None) -> str:
        line = self.lines.get(fname, self.line) if fname else self.line
        return '%s:%s (%s)' % (self.file, line if line is not None else '?', self.key)


@dataclass
class VmSource:
    """What one file says of one VM."""

    file: str
    name: str
    entries: list[PassthroughEntry] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# VMX
# ---------------------------------------------------------------------------------------------

def _unquote(raw: str, path: str, lineno: int) -> str:
    """A VMX value: ``"text"`` (with ``|XX`` hex escapes) or, as some tools write it, bare text."""
    if raw.startswith('"'):
        end = raw.find('"', 1)
        if end < 0:
            raise VmwareImportError('%s:%d: the value %s has no closing quote' % (path, lineno, raw))
        rest = raw[end + 1:].strip()
        if rest and not rest.startswith('#'):
            raise VmwareImportError('%s:%d: unexpected text %r after the quoted value' % (path, lineno, rest))
        text = raw[1:end]
    elif raw.startswith("'"):
        if len(raw) < 2 or not raw.endswith("'"):
            raise VmwareImportError('%s:%d: the value %s has no closing quote' % (path, lineno, raw))
        text = raw[1:-1]
    else:
        text = raw.split('#', 1)[0].strip()
        if '"' in text:
            raise VmwareImportError('%s:%d: stray quote in the value %s' % (path, lineno, raw))
    return _VMX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def _decode(data: bytes, path: str) -> str:
    if b'\x00' in data:
        raise VmwareImportError('%s: binary data (NUL bytes), not a text .vmx/.ovf file' % path)
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b'\n') + 1
        raise VmwareImportError('%s:%d: not UTF-8 text (%s)' % (path, line, exc.reason)) from None


def parse_vmx(text: str, path: str) -> VmSource:
    """Read a .vmx file's text: displayName and the pciPassthruN.* keys (key case ignored)."""
    values: dict[str, tuple[str, int]] = {}
    entries: dict[int, PassthroughEntry] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith('#'):
            continue
        match = _VMX_LINE.match(line)
        if match is None:
            raise VmwareImportError('%s:%d: not a "key = value" line: %r' % (path, lineno, stripped[:80]))
        key = match.group('key')
        value = _unquote(match.group('value'), path, lineno)
        low = key.lower()
        if low in values and values[low][0] != value:
            raise VmwareImportError('%s:%d: %s is set again with a different value (first at line %d: %r, now %r)'
                                    % (path, lineno, key, values[low][1], values[low][0], value))
        values[low] = (value, lineno)
        pmatch = _PASSTHRU_KEY.match(low)
        if pmatch is None:
            continue
        index = int(pmatch.group('index'))
        fname = pmatch.group('field')
        if fname.startswith('alloweddevices') or fname.startswith('allowed_devices'):
            fname = 'allowed_devices'
        entry = entries.get(index)
        if entry is None:
            entry = entries[index] = PassthroughEntry(file=path, key='pciPassthru%d' % index, line=lineno)
        entry.fields[fname] = value
        entry.lines[fname] = lineno
    name = values.get('displayname', ('', 0))[0].strip() or os.path.splitext(os.path.basename(path))[0]
    return VmSource(file=path, name=name, entries=[entries[i] for i in sorted(entries)])


# ---------------------------------------------------------------------------------------------
# OVF
# ---------------------------------------------------------------------------------------------

_NS_RASD = 'http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData'
_NS_OVF = 'http://schemas.dmtf.org/ovf/envelope/1'
_NS_VMW = 'http://www.vmware.com/schema/ovf'


def _local(tag: str) -> str:
    return tag.rsplit('}', 1)[-1]


def _refuse_dtd(text: str, path: str) -> None:
    """OVF descriptors never need a DTD; one (or an entity) is refused before parsing (no expansion attacks)."""
    for pattern in ('<!DOCTYPE', '<!ENTITY'):
        pos = text.find(pattern)
        if pos < 0:
            pos = text.upper().find(pattern.upper())
        if pos >= 0:
            line = text.count('\n', 0, pos) + 1
            raise VmwareImportError('%s:%d: %s is refused: an OVF descriptor needs no DTD or entity declarations'
                                    % (path, line, pattern[2:]))


def _element_lines(text: str, tag: str) -> list[int]:
    """Line numbers of the opening tags named ``tag`` (any prefix), in document order."""
    return [text.count('\n', 0, m.start()) + 1 for m in re.finditer(r'<(?:[A-Za-z_][\w.-]*:)?%s[\s>/]' % tag, text)]


def _vmw_attr(elem: ElementTree.Element, name: str) -> str | None:
    for key in ('{%s}%s' % (_NS_VMW, name), '{%s}%s' % (_NS_OVF, name), name):
        if key in elem.attrib:
            return elem.attrib[key]
    return None


def parse_ovf(text: str, path: str) -> list[VmSource]:
    """Read an OVF descriptor: every VirtualSystem, its passthrough / vGPU items and pciPassthru ExtraConfig."""
    _refuse_dtd(text, path)
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        line = exc.position[0] if getattr(exc, 'position', None) else '?'
        raise VmwareImportError('%s:%s: not well-formed XML: %s' % (path, line, exc)) from None
    if _local(root.tag) != 'Envelope':
        raise VmwareImportError('%s:1: the root element is <%s>, not an OVF <Envelope>' % (path, _local(root.tag)))
    systems = [e for e in root.iter() if _local(e.tag) == 'VirtualSystem']
    item_lines = iter(_element_lines(text, 'Item'))
    extra_lines = iter(_element_lines(text, 'ExtraConfig'))
    system_lines = iter(_element_lines(text, 'VirtualSystem'))
    out: list[VmSource] = []
    # lines are assigned in document order, so walk the whole tree once
    line_of: dict[int, int] = {}
    for elem in root.iter():
        tag = _local(elem.tag)
        src = {'Item': item_lines, 'ExtraConfig': extra_lines, 'VirtualSystem': system_lines}.get(tag)
        if src is not None:
            line_of[id(elem)] = next(src, 0)
    for system in systems:
        sline = line_of.get(id(system)) or None
        name = ''
        for child in system:
            if _local(child.tag) == 'Name' and child.text:
                name = child.text.strip()
        if not name:
            name = (system.attrib.get('{%s}id' % _NS_OVF) or system.attrib.get('id') or '').strip()
        if not name:
            raise VmwareImportError('%s:%s: a VirtualSystem has neither ovf:id nor <Name>' % (path, sline or '?'))
        source = VmSource(file=path, name=name)
        extra: dict[int, PassthroughEntry] = {}
        for elem in system.iter():
            tag = _local(elem.tag)
            eline = line_of.get(id(elem)) or None
            if tag == 'Item':
                entry = _ovf_item(elem, path, eline)
                if entry is not None:
                    source.entries.append(entry)
            elif tag == 'ExtraConfig':
                key = (_vmw_attr(elem, 'key') or '').strip()
                value = (_vmw_attr(elem, 'value') or '').strip()
                match = _PASSTHRU_KEY.match(key.lower())
                if match is None:
                    continue
                index = int(match.group('index'))
                entry = extra.get(index)
                if entry is None:
                    entry = extra[index] = PassthroughEntry(file=path, key='pciPassthru%d' % index, line=eline)
                entry.fields[match.group('field')] = value
        source.entries.extend(extra[i] for i in sorted(extra))
        out.append(source)
    if not systems:
        raise VmwareImportError('%s:1: no VirtualSystem in the OVF descriptor' % path)
    return out


_OVF_CONFIG = {
    'backing.vgpu': 'vgpu',
    'backing.id': 'id',
    'backing.vendorid': 'vendorid',
    'backing.deviceid': 'deviceid',
    'backing.subvendorid': 'subvendorid',
    'backing.subdeviceid': 'subdeviceid',
    'backing.systemid': 'systemid',
    'backing.customlabel': 'customlabel',
    'customlabel': 'customlabel',
    'alloweddevice[0].vendorid': 'allowed_vendor',
    'alloweddevice[0].deviceid': 'allowed_device',
}


def _ovf_item(elem: ElementTree.Element, path: str, line: int | None) -> PassthroughEntry | None:
    """An OVF hardware item that is a PCI passthrough or vGPU device, else None."""
    rtype = subtype = label = ''
    config: dict[str, str] = {}
    for child in elem:
        tag = _local(child.tag)
        if tag == 'ResourceType' and child.text:
            rtype = child.text.strip()
        elif tag == 'ResourceSubType' and child.text:
            subtype = child.text.strip().lower()
        elif tag == 'ElementName' and child.text:
            label = child.text.strip()
        elif tag == 'Config':
            key = (_vmw_attr(child, 'key') or '').strip().lower()
            if key in _OVF_CONFIG:
                config[_OVF_CONFIG[key]] = (_vmw_attr(child, 'value') or '').strip()
    passthrough = 'pcipassthrough' in subtype or 'vgpu' in subtype or 'vgpu' in config
    if not passthrough:
        return None
    if rtype and rtype != '1':
        raise VmwareImportError('%s:%s: item %r is a PCI passthrough device but has ResourceType %s (expected 1, Other)'
                                % (path, line or '?', label, rtype))
    fields = {'present': 'true'}
    if 'allowed_vendor' in config or 'allowed_device' in config:
        fields['allowed_devices'] = '%s:%s' % (config.pop('allowed_vendor', ''), config.pop('allowed_device', ''))
    fields.update(config)
    return PassthroughEntry(file=path, key=label or 'Item', line=line, fields=fields)


# ---------------------------------------------------------------------------------------------
# Files and directories
# ---------------------------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise VmwareImportError('%s: %d bytes, more than a VM descriptor has (limit %d)' % (path, size, MAX_FILE_BYTES))
        with open(path, 'rb') as handle:
            data = handle.read()
    except OSError as exc:
        raise VmwareImportError('%s: cannot read: %s' % (path, exc.strerror or exc)) from None
    return _decode(data, path)


def collect(paths: list[str]) -> list[str]:
    """The .vmx and .ovf files named by ``paths`` (files, or directories searched recursively), sorted."""
    found: list[str] = []
    for raw in paths:
        path = os.path.abspath(os.path.expanduser(raw))
        if os.path.isdir(path):
            for top, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(VMX_SUFFIXES + OVF_SUFFIXES):
                        found.append(os.path.join(top, name))
        elif os.path.isfile(path):
            if not path.lower().endswith(VMX_SUFFIXES + OVF_SUFFIXES):
                raise VmwareImportError('%s: not a .vmx or .ovf file' % raw)
            found.append(path)
        else:
            raise VmwareImportError('%s: no such file or directory' % raw)
    return sorted(set(found))


def read_sources(files: list[str]) -> list[VmSource]:
    out: list[VmSource] = []
    for path in files:
        text = _read(path)
        if path.lower().endswith(VMX_SUFFIXES):
            out.append(parse_vmx(text, path))
        else:
            out.extend(parse_ovf(text, path))
    return out


# ---------------------------------------------------------------------------------------------
# Sources -> requests
# ---------------------------------------------------------------------------------------------

def _hexid(value: str, entry: PassthroughEntry, fname: str) -> str:
    """VMware writes ids as 0x10de, 10de or (signed 16-bit) -0x... / decimal; four hex digits out."""
    text = value.strip().lower()
    try:
        if text.startswith(('-0x', '0x')):
            number = int(text, 16)
        elif _HEX.match(text) and not text.isdigit():
            number = int(text, 16)
        else:
            number = int(text, 10)
    except ValueError:
        raise VmwareImportError('%s: %s.%s = %r is not a PCI id (e.g. 0x10de)'
                                % (entry.where(fname.lower()), entry.key, fname, value)) from None
    if number < 0:
        number += 0x10000
    if not 0 <= number <= 0xffff:
        raise VmwareImportError('%s: %s.%s = %r is out of range for a PCI id'
                                % (entry.where(fname.lower()), entry.key, fname, value))
    return '%04x' % number


def _present(entry: PassthroughEntry) -> bool:
    value = entry.fields.get('present', 'false').strip().lower()
    if value in _BOOL_TRUE:
        return True
    if value in _BOOL_FALSE:
        return False
    raise VmwareImportError('%s: %s.present = %r is neither TRUE nor FALSE' % (entry.where('present'), entry.key, value))


@dataclass
class Device:
    """One passthrough entry, classified."""

    entry: PassthroughEntry
    kind: str                      # gpu | vgpu | skip
    vendor_id: str | None = None
    device_id: str | None = None
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    profile: str | None = None
    reason: str = ''

    def info(self) -> dict:
        out: dict = {'file': self.entry.file, 'line': self.entry.line, 'key': self.entry.key}
        for name in ('vendor_id', 'device_id', 'subsystem_vendor_id', 'subsystem_device_id', 'profile'):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        old = self.entry.fields.get('id')
        if old:
            out['old_host_address'] = old      # information only: never used for placement
        if self.entry.fields.get('systemid'):
            out['old_host_system_id'] = self.entry.fields['systemid']
        return out


def classify(entry: PassthroughEntry) -> Device:
    """What one entry is: a whole GPU by identity, a vGPU profile, or something that is not a GPU request."""
    f = entry.fields
    if not _present(entry):
        return Device(entry, 'skip', reason='disabled (%s.present is not TRUE)' % entry.key)
    vgpu = f.get('vgpu', '').strip()
    if vgpu:
        if not _VGPU.match(vgpu):
            return Device(entry, 'skip', profile=vgpu,
                          reason='vGPU profile %r is not a profile name like grid_t4-4q' % vgpu)
        return Device(entry, 'vgpu', profile=vgpu.lower())
    allowed = f.get('allowed_devices', '').strip()
    vendor = f.get('vendorid', '').strip()
    device = f.get('deviceid', '').strip()
    if not vendor and allowed:
        # dynamic DirectPath: "0x10de:0x1eb8" (the first allowed device names the identity)
        first = allowed.split(',')[0].split()[0] if allowed.split(',')[0].split() else ''
        parts = first.split(':')
        if len(parts) == 2 and parts[0] and parts[1]:
            vendor, device = parts
    if not vendor or not device:
        label = f.get('customlabel', '').strip()
        if label:
            return Device(entry, 'skip', reason='dynamic DirectPath by custom label %r: the label names hardware on '
                                                'the old ESXi host, not a vendor:device; give the model by hand' % label)
        return Device(entry, 'skip', reason='no vendorId / deviceId: the device cannot be named by identity')
    dev = Device(entry, 'gpu', vendor_id=_hexid(vendor, entry, 'vendorId'), device_id=_hexid(device, entry, 'deviceId'))
    if f.get('subvendorid'):
        dev.subsystem_vendor_id = _hexid(f['subvendorid'], entry, 'subVendorId')
    if f.get('subdeviceid'):
        dev.subsystem_device_id = _hexid(f['subdeviceid'], entry, 'subDeviceId')
    nic = NIC_VENDORS.get(str(dev.vendor_id))
    if nic is None and dev.vendor_id == '8086' and _INTEL_NIC_IDS.match(str(dev.device_id)):
        nic = 'Intel Ethernet'
    if nic is not None:
        dev.kind = 'skip'
        dev.reason = 'network / storage adapter (%s %s:%s), not a GPU: DirectPath NICs are not imported' % (
            nic, dev.vendor_id, dev.device_id)
    return dev


def _model_for(dev: Device, table: dict) -> tuple[str | None, str]:
    """The one fleet model that names this device's identity, or (None, why)."""
    hits = []
    for name, model in table.items():
        if model.vendor_id != dev.vendor_id or model.device_id != dev.device_id:
            continue
        if model.subsystem_vendor_id is not None and dev.subsystem_vendor_id not in (None, model.subsystem_vendor_id):
            continue
        if model.subsystem_device_id is not None and dev.subsystem_device_id not in (None, model.subsystem_device_id):
            continue
        specific = (model.subsystem_vendor_id is not None) + (model.subsystem_device_id is not None)
        hits.append((specific, name))
    if not hits:
        names = ', '.join(sorted(table)) or 'none'
        ids = (dev.vendor_id, dev.device_id)
        return None, ('%s:%s has no model in the fleet model table (fleetgpu_models names: %s); add one with '
                      'vendor_id: "%s", device_id: "%s"' % (ids[0], ids[1], names, ids[0], ids[1]))
    hits.sort(reverse=True)
    best = [n for s, n in hits if s == hits[0][0]]
    if len(best) > 1:
        return None, '%s:%s matches several fleet models equally (%s)' % (dev.vendor_id, dev.device_id, ', '.join(sorted(best)))
    return best[0], ''


@dataclass
class ImportResult:
    vms: list[dict] = field(default_factory=list)
    pending: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {'vms': self.vms, 'pending': self.pending, 'skipped': self.skipped, 'sources': self.sources,
                'files': self.files}


def derive(sources: list[VmSource], models: object = None) -> ImportResult:
    """Turn the VM sources into fleet requests; ``models`` is the fleet's ``fleetgpu_models`` (or None)."""
    try:
        table = {n: m for n, m in parse_models(models).items() if m.vendor_id is not None}
    except FleetInputError as exc:
        raise VmwareImportError('models: %s' % exc) from None
    result = ImportResult()
    seen: dict[str, str] = {}
    for src in sources:
        if src.name in seen:
            raise VmwareImportError('%s: VM name %r is also given by %s; VM names are libvirt domain names and must '
                                    'be unique (import one of the two files)' % (src.file, src.name, seen[src.name]))
        seen[src.name] = src.file
        devices = [classify(e) for e in src.entries]
        for dev in devices:
            if dev.kind == 'skip':
                result.skipped.append(dict(dev.info(), vm=src.name, reason=dev.reason))
        gpus = [d for d in devices if d.kind == 'gpu']
        vgpus = [d for d in devices if d.kind == 'vgpu']
        result.sources.append({'vm': src.name, 'file': src.file,
                               'devices': [dict(d.info(), kind=d.kind) for d in devices]})
        if not gpus and not vgpus:
            continue
        counts: dict[str, int] = {}
        problems: list[str] = []
        for dev in gpus:
            model, why = _model_for(dev, table)
            if model is None:
                problems.append('%s: %s' % (dev.entry.where(), why))
            else:
                counts[model] = counts.get(model, 0) + 1
        if vgpus:
            profiles: dict[str, int] = {}
            for dev in vgpus:
                profiles[str(dev.profile)] = profiles.get(str(dev.profile), 0) + 1
            result.pending.append({
                'vm': src.name, 'file': src.file, 'kind': 'vgpu',
                'gpus': [{'profile': p, 'count': n} for p, n in sorted(profiles.items())],
                'whole_gpus': [{'model': m, 'count': n} for m, n in sorted(counts.items())],
                'reason': 'vGPU profile(s) %s: mediated devices (mdev) are not placed by the fleet yet; no request is '
                          'made, so the VM is not half-provisioned' % ', '.join(sorted(profiles)),
                'devices': [d.info() for d in vgpus + gpus]})
            continue
        if problems:
            result.pending.append({
                'vm': src.name, 'file': src.file, 'kind': 'no_model',
                'gpus': [{'vendor_id': d.vendor_id, 'device_id': d.device_id} for d in gpus],
                'whole_gpus': [{'model': m, 'count': n} for m, n in sorted(counts.items())],
                'reason': '; '.join(problems), 'devices': [d.info() for d in gpus]})
            continue
        result.vms.append({'name': src.name, 'gpus': [{'model': m, 'count': n} for m, n in sorted(counts.items())]})
    return result


def import_paths(paths: list[str], models: object = None) -> ImportResult:
    files = collect(paths)
    result = derive(read_sources(files), models)
    result.files = files
    return result
