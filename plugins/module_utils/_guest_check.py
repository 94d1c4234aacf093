# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What a VM was given on its host, against what its guest sees (issue 16's verify_guests).

PRIVATE to the fleetgpu.passthrough collection: not a public API.

The guest's addresses differ from the host's, so GPUs are matched by vendor:device (and their
companion functions by vendor:device under the matched GPU), as many of each as were given.
"""
from __future__ import annotations

from collections import Counter

#: Drivers that mean "no driver of its own" inside a guest.
NO_DRIVER = (None, '', 'vfio-pci', 'pci-stub')


def compare(vm: str, given: list[dict], seen: list[dict], driver: str | None = None) -> dict:
    """``given``: the host's view of the VM's GPUs (``vendor_device`` and ``companions``, each with
    ``vendor_device``); ``seen``: the ``gpus`` of gpu_facts inside the guest. ``driver``: the
    driver every GPU must have in the guest (None: any driver at all).

    Returns ``ok``, ``missing`` (vendor:device not seen, one entry per missing GPU),
    ``missing_companions``, ``without_driver`` (guest addresses) and ``messages``.
    """
    want = Counter(str(g.get('vendor_device')) for g in given)
    have: dict[str, list[dict]] = {}
    for gpu in sorted(seen, key=lambda g: str(g.get('address'))):
        have.setdefault(str(gpu.get('vendor_device')), []).append(gpu)
    missing: list[str] = []
    missing_companions: list[str] = []
    without_driver: list[str] = []
    messages: list[str] = []
    for vendor_device, count in sorted(want.items()):
        found = have.get(vendor_device, [])
        if len(found) < count:
            missing.extend([vendor_device] * (count - len(found)))
            messages.append('%s: %d of the %d GPU(s) %s it was given are not seen in the guest'
                            % (vm, count - len(found), count, vendor_device))
        matched = found[:count]
        wanted_companions = Counter(str(c.get('vendor_device')) for g in given if g.get('vendor_device') == vendor_device
                                    for c in g.get('companions') or [])
        seen_companions = Counter(str(c.get('vendor_device') or '%s:%s' % (c.get('vendor_id'), c.get('device_id')))
                                  for g in matched for c in g.get('companions') or [])
        for companion, need in sorted(wanted_companions.items()):
            short = need - seen_companions.get(companion, 0)
            if short > 0:
                missing_companions.extend([companion] * short)
                messages.append('%s: the companion function %s of %s is not seen in the guest (%d missing)'
                                % (vm, companion, vendor_device, short))
        for gpu in matched:
            current = gpu.get('driver')
            if current in NO_DRIVER or (driver is not None and current != driver):
                without_driver.append(str(gpu.get('address')))
                messages.append('%s: GPU %s (%s) in the guest is on %s, not %s'
                                % (vm, gpu.get('address'), vendor_device, current or 'no driver',
                                   driver or 'a driver of its own'))
    return {'vm': vm, 'ok': not messages, 'missing': missing, 'missing_companions': missing_companions,
            'without_driver': without_driver, 'messages': messages}
