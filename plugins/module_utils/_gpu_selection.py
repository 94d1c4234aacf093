# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""GPU selection and the early-binding decision of vfio_host_config (which functions, ids or addresses, softdeps).

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Input is the ``gpu_passthrough`` facts of gpu_facts plus the inventory's
selectors; the kernel is read only through the Sysfs seam (every PCI function
of the host, to decide between ``vfio-pci ids=`` and per-address binding, and
the drivers' module names).  :func:`decide` is pure planning; the files it leads to
are rendered by ``_vfio_files`` and written by the vfio_host_config engine.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (
    PciAddress, PciAddressError, PciIdError, list_addresses, parse_id)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vfio_files import MODPROBE_CONF

# Host drivers that may claim a passed-through function before vfio-pci, by vendor / function kind.
VENDOR_DRIVERS = {'10de': ['nouveau', 'nvidia'], '1002': ['amdgpu', 'radeon']}
KIND_DRIVERS = {'audio': ['snd_hda_intel'], 'usb': ['xhci_pci']}


# A kernel module name as modprobe.d takes it: no space, no newline (a newline would start a new
# modprobe.d line, and an ``install`` line runs a command as root whenever the module loads).
MODULE_NAME_RE = re.compile(r'^[A-Za-z0-9_-]{1,64}\Z')
# Bounds of a name_regex selector (see check_regex).
MAX_REGEX = 200
MAX_REPEATS = 4
MAX_MATCH_TEXT = 512


class SelectionError(FleetGpuError, ValueError):
    """The selectors do not match the host, or ask for something refused."""


def check_module_name(name: object, what: str) -> str:
    """A module name that may be written into a modprobe.d line, or SelectionError naming it."""
    if not isinstance(name, str) or not MODULE_NAME_RE.match(name):
        raise SelectionError('%s: %r is not a kernel module name (letters, digits, "_" and "-", at most 64): '
                             'refusing to write it into %s' % (what, name, MODPROBE_CONF))
    return name


def _repeats(parsed: Any, inside: bool, counts: list[int]) -> bool:
    """Walk a parsed pattern; True when a repeat holds another unbounded repeat (catastrophic backtracking)."""
    for op, arg in parsed:  # parsed: re's private SubPattern, (opcode, argument) pairs
        name = str(op)
        if name in ('MAX_REPEAT', 'MIN_REPEAT', 'POSSESSIVE_REPEAT'):
            _low, high, sub = arg
            unbounded = high > 100
            if unbounded:
                counts[0] += 1
            if inside:
                return True  # any repeat inside an unbounded one: (a+)+, (a?)*, (.*){1,200}
            if _repeats(sub, inside or unbounded, counts):
                return True
        elif name == 'SUBPATTERN':
            if _repeats(arg[-1], inside, counts):
                return True
        elif name == 'BRANCH':
            if inside:
                return True  # alternatives under an unbounded repeat may overlap: (x|x?)*
            for branch in arg[1]:
                if _repeats(branch, inside, counts):
                    return True
        elif name in ('ASSERT', 'ASSERT_NOT'):
            if _repeats(arg[1], inside, counts):
                return True
    return False


def check_regex(pattern: object, where: str) -> re.Pattern:
    """A user regex compiled with a guard against catastrophic backtracking.

    Refused: patterns longer than MAX_REGEX, an unbounded repeat of a group that holds another
    repeat or alternatives (``(.*.*)*``, ``(a+)+``, ``(x|x?)*``), more than MAX_REPEATS unbounded
    repeats, back-references.
    The matched text is also cut to MAX_MATCH_TEXT characters.
    """
    if not isinstance(pattern, str) or not pattern:
        raise SelectionError('%s: name_regex must be a non-empty string, got %r' % (where, pattern))
    if len(pattern) > MAX_REGEX:
        raise SelectionError('%s: name_regex is %d characters long; at most %d are accepted'
                             % (where, len(pattern), MAX_REGEX))
    try:
        compiled = re.compile(pattern, re.I)
    except re.error as exc:
        raise SelectionError('%s: name_regex %r is not a valid regular expression: %s' % (where, pattern, exc)) from None
    try:
        from re import _parser as sre_parse  # type: ignore[attr-defined]  # private (3.11+), not in the stubs
    except ImportError:
        import sre_parse  # pylint: disable=deprecated-module
    counts = [0]
    parsed = sre_parse.parse(pattern, re.I)
    if _repeats(parsed, False, counts) or counts[0] > MAX_REPEATS or re.search(r'\\[1-9]|\(\?P=', pattern):
        raise SelectionError('%s: name_regex %r is refused: an unbounded repeat of a group holding a repeat or alternatives '
                             '(like "(.*.*)*", "(a+)+" or "(x|x?)*"), more than %d unbounded repeats or a back-reference can take '
                             'exponential time; simplify it, or use name for a plain substring match'
                             % (where, pattern, MAX_REPEATS))
    return compiled


def validate_facts(facts: object) -> dict:
    """The shape of the gpu_facts facts this module reads; errors name the path of the bad element."""
    if not isinstance(facts, dict):
        raise SelectionError('facts must be a mapping (ansible_facts.gpu_passthrough of gpu_facts), got %r' % (facts,))
    host = facts.get('host')
    if host is not None and not isinstance(host, dict):
        raise SelectionError('facts.host must be a mapping, got %r' % (host,))
    gpus = facts.get('gpus')
    if gpus is None:
        return facts
    if not isinstance(gpus, list):
        raise SelectionError('facts.gpus must be a list of GPUs, got %r' % (gpus,))
    for index, gpu in enumerate(gpus):
        where = 'facts.gpus[%d]' % index
        if not isinstance(gpu, dict):
            raise SelectionError('%s must be a mapping, got %r' % (where, gpu))
        _check_function(gpu, where, ('address', 'vendor_id', 'device_id', 'vendor_device'))
        companions = gpu.get('companions')
        if companions is None:
            continue
        if not isinstance(companions, list):
            raise SelectionError('%s.companions must be a list, got %r' % (where, companions))
        for cindex, comp in enumerate(companions):
            cwhere = '%s.companions[%d]' % (where, cindex)
            if not isinstance(comp, dict):
                raise SelectionError('%s must be a mapping, got %r' % (cwhere, comp))
            _check_function(comp, cwhere, ('address', 'vendor_id', 'device_id'))
    return facts


def _check_function(item: dict, where: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        if item.get(key) in (None, ''):
            raise SelectionError('%s.%s is missing' % (where, key))
        if not isinstance(item[key], str):
            raise SelectionError('%s.%s must be a string, got %r' % (where, key, item[key]))
    try:
        PciAddress.parse(item['address'])
        parse_id(item['vendor_id'], 'vendor id')
        parse_id(item['device_id'], 'device id')
    except (PciAddressError, PciIdError) as exc:
        raise SelectionError('%s: %s' % (where, exc)) from None
    driver = item.get('driver')
    if driver is not None and not isinstance(driver, str):
        raise SelectionError('%s.driver must be a string or null, got %r' % (where, driver))


def _describe(gpu: dict) -> str:
    name = ' '.join(x for x in (gpu.get('vendor_name'), gpu.get('device_name')) if x) or gpu.get('class_name') or 'GPU'
    extra = ' boot VGA' if gpu.get('boot_vga') else ''
    return '%s %s [%s]%s driver=%s' % (gpu['address'], name, gpu.get('vendor_device'), extra, gpu.get('driver'))


def _inventory(gpus: list[dict]) -> str:
    return '; '.join(_describe(g) for g in gpus) or 'no GPU at all'


def _matches(gpu: dict, sel: dict) -> bool:
    if sel.get('address'):
        return gpu['address'] == sel['address']
    if sel.get('vendor_id'):
        for key in ('vendor_id', 'device_id', 'subsystem_vendor_id', 'subsystem_device_id'):
            if sel.get(key) and gpu.get(key) != sel[key]:
                return False
        return True
    text = ' '.join(str(gpu.get(k) or '') for k in ('vendor_name', 'device_name', 'subsystem_name', 'vendor_device',
                                                    'class_name'))[:MAX_MATCH_TEXT]
    if '_regex' in sel:
        return bool(sel['_regex'].search(text))
    return sel['_literal'] in text.casefold()


def normalise_selector(sel: object, index: int) -> dict:
    """A selector checked and normalised; errors name the entry."""
    where = 'vfio_host_devices[%d]' % index
    if not isinstance(sel, dict):
        raise SelectionError('%s must be a mapping with address, vendor_id/device_id or name, got %r' % (where, sel))
    kinds = [k for k in ('address', 'vendor_id', 'name', 'name_regex') if sel.get(k)]
    if len(kinds) != 1:
        raise SelectionError('%s must have exactly one of address, vendor_id (+device_id), name or name_regex, '
                             'got %r' % (where, sel))
    out = dict(sel)
    try:
        if kinds[0] == 'address':
            out['address'] = str(PciAddress.parse(sel['address']))
        elif kinds[0] == 'vendor_id':
            if not sel.get('device_id'):
                raise SelectionError('%s: vendor_id needs device_id too' % where)
            for key in ('vendor_id', 'device_id', 'subsystem_vendor_id', 'subsystem_device_id'):
                if sel.get(key):
                    out[key] = parse_id(sel[key], key)
        elif kinds[0] == 'name':
            if not isinstance(sel['name'], str):
                raise SelectionError('%s: name must be a string, got %r' % (where, sel['name']))
            out['_literal'] = sel['name'].casefold()
        else:
            out['_regex'] = check_regex(sel['name_regex'], where)
    except (PciAddressError, PciIdError) as exc:
        raise SelectionError('%s: %s' % (where, exc)) from None
    count = sel.get('count', 1 if kinds[0] == 'address' else 'all')
    if count != 'all':
        original = count
        try:
            if isinstance(count, bool):
                raise TypeError(count)
            if isinstance(count, float) and not count.is_integer():
                raise ValueError(count)
            count = int(count)
        except (TypeError, ValueError, OverflowError):
            raise SelectionError('%s: count must be a whole positive number or "all", got %r'
                                 % (where, original)) from None
        if count < 1:
            raise SelectionError('%s: count must be a whole positive number or "all", got %r' % (where, count))
    out['count'] = count
    return out


def select(gpus: list[dict], selectors: list, allow_boot_vga: bool = False, keep: list[str] | None = None) -> list[dict]:
    """The GPUs the selectors name, in address order; fails clearly when nothing or too few match.

    ``keep``: addresses of GPUs that stay on their host driver (binding dynamic: libvirt moves them when
    their VM starts); they are never selected, and with them the selectors may be empty.
    """
    kept = {_keep_address(a, i) for i, a in enumerate(keep or [])}
    if kept:
        for index, raw in enumerate(selectors):
            named = raw.get('address') if isinstance(raw, dict) else None
            if named is not None and _keep_address(named, index, 'vfio_host_devices') in kept:
                raise SelectionError('vfio_host_devices[%d] names %s, which vfio_host_dynamic_devices keeps on its host '
                                     'driver (binding dynamic): list it in one of the two only' % (index, named))
        gpus = [g for g in gpus if g.get('address') not in kept]
        if not selectors:
            return []
    if not selectors:
        raise SelectionError('vfio_host_devices is empty: name the GPUs to give to vfio-pci (by address, '
                             'vendor_id/device_id or name); this host has: %s' % _inventory(gpus))
    chosen: dict[str, dict] = {}
    chosen_by: dict[str, int] = {}
    for index, raw in enumerate(selectors):
        sel = normalise_selector(raw, index)
        matching = [g for g in gpus if _matches(g, sel)]
        usable = [g for g in matching if allow_boot_vga or not g.get('boot_vga')]
        skipped = [g for g in matching if g not in usable]
        label = {k: v for k, v in (raw.items() if isinstance(raw, dict) else []) if k != 'count'}
        if not usable:
            if skipped:
                raise SelectionError(
                    'vfio_host_devices[%d] %s matches only the boot GPU (%s); it keeps the host console and is never '
                    'selected unless vfio_host_allow_boot_vga is true' % (index, label, _describe(skipped[0])))
            raise SelectionError('vfio_host_devices[%d] %s matches no GPU; this host has: %s'
                                 % (index, label, _inventory(gpus)))
        fresh = [g for g in usable if g['address'] not in chosen]
        taken = [g for g in usable if g['address'] in chosen]
        if sel['count'] != 'all' and len(fresh) < sel['count'] and taken:
            raise SelectionError(
                'vfio_host_devices[%d] %s is a duplicate: %s %s already selected by vfio_host_devices[%s]%s; remove '
                'the repeated entry' % (index, label, ', '.join(g['address'] for g in taken),
                                        'is' if len(taken) == 1 else 'are',
                                        ', '.join(str(i) for i in sorted({chosen_by[g['address']] for g in taken})),
                                        '' if not fresh else ' and only %d other match%s' % (
                                            len(fresh), '' if len(fresh) != 1 else 'es')))
        take = fresh if sel['count'] == 'all' else fresh[:sel['count']]
        if sel['count'] != 'all' and len(take) < sel['count']:
            raise SelectionError(
                'vfio_host_devices[%d] %s asks for %d GPU(s) but only %d match%s; this host has: %s'
                % (index, label, sel['count'], len(take),
                   ' (the boot GPU is not counted: vfio_host_allow_boot_vga is false)' if skipped else '',
                   _inventory(gpus)))
        for gpu in take:
            chosen[gpu['address']] = gpu
            chosen_by[gpu['address']] = index
    return [chosen[a] for a in sorted(chosen)]


def _keep_address(value: object, index: int, what: str = 'vfio_host_dynamic_devices') -> str:
    """A PCI address in the full form gpu_facts uses (0000:01:00.0); BB:SS.F gets domain 0000."""
    text = str(value).strip().lower()
    if re.match(r'^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$', text):
        text = '0000:' + text
    if not re.match(r'^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$', text):
        raise SelectionError('%s[%d]: %r is not a PCI address (DDDD:BB:SS.F or BB:SS.F)' % (what, index, value))
    return text


def _host_devices(sysfs: Sysfs) -> dict[str, tuple[str, str | None]]:
    """address -> (vendor:device, bound driver) for every PCI function of the host."""
    found: dict[str, tuple[str, str | None]] = {}
    for address in list_addresses(sysfs):
        path = sysfs.sys('bus', 'pci', 'devices', str(address))
        vendor = sysfs.read(sysfs.sys('bus', 'pci', 'devices', str(address), 'vendor'), default='')
        device = sysfs.read(sysfs.sys('bus', 'pci', 'devices', str(address), 'device'), default='')
        vendor_device = '%s:%s' % (vendor.lower().replace('0x', ''), device.lower().replace('0x', ''))
        found[str(address)] = (vendor_device, sysfs.link_name(path + '/driver'))
    return found


def module_name(sysfs: Sysfs, driver: str) -> str | None:
    """Kernel module providing ``driver`` (``bochs-drm`` -> ``bochs``); None when built in."""
    drv_dir = sysfs.sys('bus', 'pci', 'drivers', driver)
    if sysfs.isdir(drv_dir):
        return sysfs.link_name(drv_dir + '/module')
    return driver.replace('-', '_')


def _literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard (``pci:v00001002d*`` -> ``pci:v00001002d``)."""
    for index, char in enumerate(pattern):
        if char in '*?[':
            return pattern[:index]
    return pattern


def alias_modules(sysfs: Sysfs, release: str, address: str, cache: dict) -> list[str]:
    """Modules whose ``pci:`` aliases (modules.alias of ``release``) match the device's modalias.

    A distribution kernel lists some 20,000 PCI aliases. Matching each with fnmatch compiles each
    into a regular expression: a second natively, ten and more on a small or emulated host, on
    every converge. Nearly all of them name a vendor and device, so a pattern whose literal prefix
    the modalias does not start with cannot match and is never compiled.
    """
    if 'aliases' not in cache:
        aliases: list[tuple[str, str, str]] = []
        text = sysfs.read(sysfs.host('lib', 'modules', release, 'modules.alias'), default='') if release else ''
        for line in text.splitlines():
            if not line.startswith('alias pci:'):
                continue
            parts = line.split()
            if len(parts) == 3:
                aliases.append((_literal_prefix(parts[1]), parts[1], parts[2]))
        cache['aliases'] = aliases
    modalias = sysfs.read(sysfs.sys('bus', 'pci', 'devices', address, 'modalias'), default='')
    if not modalias:
        return []
    found: list[str] = []
    for prefix, pattern, module in cache['aliases']:
        if (modalias.startswith(prefix) and module not in found and not module.startswith('vfio')
                and fnmatch.fnmatchcase(modalias, pattern)):
            found.append(module)
    return found


class Decision:
    """What the host needs for the selected devices."""

    def __init__(self) -> None:
        self.selected: list[dict] = []
        self.bind: list[dict] = []            # functions to bind: GPUs and their companions
        self.ids: list[str] = []              # vendor:device for vfio-pci ids=
        self.addresses: list[str] = []        # per-address early binding
        self.softdeps: list[str] = []         # module names
        self.blacklist: list[str] = []
        self.cmdline_add: list[str] = []
        self.cmdline_remove: list[str] = []
        self.warnings: list[str] = []

    def as_dict(self) -> dict:
        return {
            'selected': self.selected, 'bind': self.bind, 'ids': self.ids, 'addresses': self.addresses,
            'softdeps': self.softdeps, 'blacklist': self.blacklist,
            'cmdline_add': self.cmdline_add, 'cmdline_remove': self.cmdline_remove,
        }


def decide(facts: dict, selectors: list, sysfs: Sysfs, allow_boot_vga: bool = False, iommu_pt: bool = True,
           blacklist: list[str] | None = None, previous_softdeps: list[str] | None = None,
           keep: list[str] | None = None) -> Decision:
    """Plan the host configuration.

    The softdeps cover the drivers bound now, the drivers whose aliases match the devices, the
    usual drivers of their vendor / function kind, and the softdeps written before (a device
    already on vfio-pci no longer shows its host driver: the configuration must not shrink).
    """
    host = facts.get('host') or {}
    gpus = facts.get('gpus') or []
    out = Decision()
    out.selected = select(gpus, selectors, allow_boot_vga, keep)
    functions: dict[str, dict] = {}
    for gpu in out.selected:
        functions[gpu['address']] = {'address': gpu['address'], 'vendor_device': gpu['vendor_device'],
                                     'driver': gpu.get('driver'), 'kind': 'gpu', 'vendor_id': gpu['vendor_id']}
        for comp in gpu.get('companions') or []:
            functions.setdefault(comp['address'], {
                'address': comp['address'], 'vendor_device': '%s:%s' % (comp['vendor_id'], comp['device_id']),
                'driver': comp.get('driver'), 'kind': comp.get('kind', 'other'), 'vendor_id': comp['vendor_id']})
    out.bind = [functions[a] for a in sorted(functions)]
    host_devices = _host_devices(sysfs)
    bind_set = set(functions)
    for vendor_device in sorted({f['vendor_device'] for f in out.bind}):
        everywhere = {a for a, (vd, _d) in host_devices.items() if vd == vendor_device}
        if everywhere <= bind_set:
            out.ids.append(vendor_device)
        else:
            out.addresses += sorted(a for a in bind_set if functions[a]['vendor_device'] == vendor_device)
    out.addresses.sort()
    drivers: list[str] = []
    cache: dict = {}
    release = str(host.get('kernel_release') or '')
    for fn in out.bind:
        if fn['driver'] and fn['driver'] != 'vfio-pci':
            drivers.append(fn['driver'])
        drivers += alias_modules(sysfs, release, fn['address'], cache)
        drivers += VENDOR_DRIVERS.get(fn['vendor_id'], []) if fn['kind'] == 'gpu' else KIND_DRIVERS.get(fn['kind'], [])
    drivers += previous_softdeps or []
    for driver in drivers:
        mod = module_name(sysfs, driver) if driver not in (previous_softdeps or []) else driver
        if mod is None:
            out.warnings.append('driver %s is built into the kernel: no softdep can order it after vfio-pci' % driver)
        elif mod not in out.softdeps and mod not in ('vfio_pci', 'vfio-pci'):
            out.softdeps.append(mod)
    out.softdeps.sort()
    for index, driver in enumerate(blacklist or []):
        check_module_name(driver, 'vfio_host_blacklist[%d]' % index)
        users = sorted(a for a, (_vd, d) in host_devices.items()
                       if a not in bind_set and d and (d == driver or module_name(sysfs, d) == driver.replace('-', '_')))
        if users:
            raise SelectionError('vfio_host_blacklist: refusing to blacklist %s while %s still use%s it and %s not '
                                 'selected' % (driver, ', '.join(users), 's' if len(users) == 1 else '',
                                               'is' if len(users) == 1 else 'are'))
        out.blacklist.append(driver)
    vendor = host.get('cpu_vendor')
    if vendor == 'intel':
        out.cmdline_add.append('intel_iommu=on')
    if iommu_pt:
        out.cmdline_add.append('iommu=pt')
    if host.get('vfio_pci_builtin') and out.ids:
        out.cmdline_add.append('vfio-pci.ids=%s' % ','.join(out.ids))
    else:
        out.cmdline_remove.append('vfio-pci.ids')
    return out
