# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What a VM was given on its host, against what its guest sees (playbook verify_guests.yml).

PRIVATE to the fleetgpu.passthrough collection: not a public API.

The host side: which of the host's GPUs (gpu_facts) are hostdevs of which domain
(libvirt_gpu_info), with those of their companion functions that were given too
(``given_by_domain``); which KVM host a VM lives on (``locate``).  The guest side:
the guest's addresses differ from the host's, so GPUs are matched by vendor:device
(and their companion functions by vendor:device under the matched GPU), as many of
each as were given (``compare``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError

#: Drivers that mean "no driver of its own" inside a guest.
NO_DRIVER = (None, '', 'vfio-pci', 'pci-stub')


class GuestCheckError(FleetGpuError):
    """Input that cannot be verified (a VM on no host or on two, a host not in the inventory)."""


def _vendor_device(dev: dict) -> str:
    """``vendor_device`` of a gpu_facts GPU, or ``vendor_id:device_id`` of a companion."""
    value = dev.get('vendor_device')
    if value:
        return str(value)
    return '%s:%s' % (dev.get('vendor_id'), dev.get('device_id'))


def _subsystem(dev: dict) -> tuple[str, str] | None:
    if dev.get('subsystem_vendor_id') and dev.get('subsystem_device_id'):
        return str(dev['subsystem_vendor_id']), str(dev['subsystem_device_id'])
    return None


def given_by_domain(domains: list[dict], gpus: list[dict]) -> dict[str, list[dict]]:
    """Domain name -> the GPUs it was given: the host's gpu_facts ``gpus`` whose address is one of
    the domain's ``hostdevs`` (libvirt_gpu_info), each with ``address``, ``vendor_device``, the
    subsystem ids and ``companions`` (only those that are hostdevs of the domain too).  Hostdevs
    that are no GPU (a NIC, an NVMe drive) are not GPUs to look for in the guest."""
    by_address = {str(g.get('address')): g for g in gpus if isinstance(g, dict)}
    out: dict[str, list[dict]] = {}
    for dom in domains:
        if not isinstance(dom, dict) or not dom.get('name'):
            continue
        hostdevs = set(str(a) for a in dom.get('hostdevs') or [])
        given = []
        for address in sorted(hostdevs):
            gpu = by_address.get(address)
            if gpu is None:
                continue
            companions = [{'address': str(c.get('address')), 'vendor_device': _vendor_device(c)}
                          for c in gpu.get('companions') or [] if str(c.get('address')) in hostdevs]
            given.append({'address': address, 'vendor_device': _vendor_device(gpu),
                          'subsystem_vendor_id': gpu.get('subsystem_vendor_id'),
                          'subsystem_device_id': gpu.get('subsystem_device_id'),
                          'companions': companions})
        out[str(dom['name'])] = given
    return out


@dataclass
class HostView:
    """What the first play read on one KVM host: ``error`` says why it cannot be used."""
    name: str
    domains: dict[str, list[dict]] = field(default_factory=dict)
    error: str | None = None


def locate(vm: str, vm_host: str | None, hosts: list[HostView], inventory: set[str]) -> HostView:
    """The KVM host holding domain ``vm``: ``vm_host`` when given, else the one host among ``hosts``
    that has it.  Raises GuestCheckError, naming the VM and the host, when that cannot be told."""
    by_name = {h.name: h for h in hosts}
    if vm_host is not None:
        if not vm_host:
            raise GuestCheckError('vm_host of VM %r is empty: name its KVM host, or leave vm_host out to search '
                                  'every KVM host' % vm)
        if inventory and vm_host not in inventory:
            raise GuestCheckError('vm_host %r (the KVM host of VM %r) is not a host of the inventory' % (vm_host, vm))
        view = by_name.get(vm_host)
        if view is None:
            raise GuestCheckError('vm_host %r (the KVM host of VM %r) is not one of the KVM hosts read (%s)'
                                  % (vm_host, vm, ', '.join(sorted(by_name)) or 'none'))
        if view.error:
            raise GuestCheckError('VM %r: its KVM host %s could not be read: %s' % (vm, vm_host, view.error))
        if vm not in view.domains:
            raise GuestCheckError('VM %r is not a libvirt domain on its KVM host %s (domains there: %s)'
                                  % (vm, vm_host, ', '.join(sorted(view.domains)) or 'none'))
        return view
    found = [h for h in hosts if not h.error and vm in h.domains]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise GuestCheckError('VM %r is a libvirt domain on %d KVM hosts (%s): set vm_host for this guest to the '
                              'one it runs on' % (vm, len(found), ', '.join(sorted(h.name for h in found))))
    unread = ['%s (%s)' % (h.name, h.error) for h in sorted(hosts, key=lambda h: h.name) if h.error]
    read = sorted(h.name for h in hosts if not h.error)
    msg = 'VM %r is a libvirt domain on none of the KVM hosts read (%s)' % (vm, ', '.join(read) or 'none')
    if unread:
        msg += '; not read: %s' % '; '.join(unread)
    raise GuestCheckError(msg)


def compare(vm: str, given: list[dict], seen: list[dict], driver: str | None = None) -> dict:
    """``given``: the host's view of the VM's GPUs (``vendor_device`` and ``companions``, each with
    ``vendor_device``; optionally ``address`` and the subsystem ids); ``seen``: the ``gpus`` of
    gpu_facts inside the guest. ``driver``: the driver every GPU must have in the guest (None: any
    driver at all).

    Returns ``ok``, ``missing`` (vendor:device not seen, one entry per missing GPU),
    ``missing_companions``, ``without_driver`` (guest addresses), ``matched`` (the guest's GPUs
    taken for the given ones) and ``messages``.  Among more guest GPUs of one vendor:device than
    were given (an emulated display adapter with the same ids), those with the given subsystem ids
    are taken first.
    """
    want = Counter(_vendor_device(g) for g in given)
    subsystems = {_vendor_device(g): set(s for s in [_subsystem(g)] if s) for g in given}
    have: dict[str, list[dict]] = {}
    for gpu in sorted(seen, key=lambda g: str(g.get('address'))):
        have.setdefault(_vendor_device(gpu), []).append(gpu)
    missing: list[str] = []
    missing_companions: list[str] = []
    without_driver: list[str] = []
    matched: list[dict] = []
    messages: list[str] = []
    for vendor_device, count in sorted(want.items()):
        wanted_subsystems = subsystems.get(vendor_device) or set()
        found = sorted(have.get(vendor_device, []), key=lambda g: _subsystem(g) not in wanted_subsystems)
        if len(found) < count:
            missing.extend([vendor_device] * (count - len(found)))
            on_host = sorted(str(g['address']) for g in given if _vendor_device(g) == vendor_device and g.get('address'))
            messages.append('%s: %d of the %d GPU(s) %s it was given%s are not seen in the guest'
                            % (vm, count - len(found), count, vendor_device,
                               ' (host %s)' % ', '.join(on_host) if on_host else ''))
        taken = sorted(found[:count], key=lambda g: str(g.get('address')))
        wanted_companions = Counter(_vendor_device(c) for g in given if _vendor_device(g) == vendor_device
                                    for c in g.get('companions') or [])
        seen_companions = Counter(_vendor_device(c) for g in taken for c in g.get('companions') or [])
        for companion, need in sorted(wanted_companions.items()):
            short = need - seen_companions.get(companion, 0)
            if short > 0:
                missing_companions.extend([companion] * short)
                messages.append('%s: the companion function %s of %s is not seen in the guest (%d missing)'
                                % (vm, companion, vendor_device, short))
        for gpu in taken:
            current = gpu.get('driver')
            matched.append({'address': str(gpu.get('address')), 'vendor_device': vendor_device, 'driver': current,
                            'companions': sorted(_vendor_device(c) for c in gpu.get('companions') or [])})
            if current in NO_DRIVER or (driver is not None and current != driver):
                without_driver.append(str(gpu.get('address')))
                messages.append('%s: GPU %s (%s) in the guest is on %s, not %s'
                                % (vm, gpu.get('address'), vendor_device, current or 'no driver',
                                   driver or 'a driver of its own'))
    return {'vm': vm, 'ok': not messages, 'missing': missing, 'missing_companions': missing_companions,
            'without_driver': without_driver, 'matched': matched, 'messages': messages}


def verdict(result: dict, host: str) -> str:
    """One line per guest: OK with what was seen, or what is missing."""
    if not result['ok']:
        return '%s on %s lacks: %s' % (result['vm'], host, '; '.join(
            m[len(result['vm']) + 2:] if m.startswith(result['vm'] + ': ') else m for m in result['messages']))
    if not result['matched']:
        return '%s on %s: OK - it was given no GPU' % (result['vm'], host)
    seen = []
    for match in result['matched']:
        with_companions = ' (with %s)' % ', '.join(match['companions']) if match['companions'] else ''
        seen.append('%s%s at %s on %s' % (match['vendor_device'], with_companions, match['address'], match['driver']))
    return '%s on %s: OK - %d GPU(s) given, all seen in the guest: %s' % (
        result['vm'], host, len(seen), ', '.join(seen))
