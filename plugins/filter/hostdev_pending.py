# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: hostdev_pending
short_description: Keep the domains of a GPU placement that libvirt_hostdev may still change
version_added: 0.1.0
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
description:
  - Takes the result of P(fleetgpu.passthrough.gpu_placement#filter) and one read of every domain by
    M(fleetgpu.passthrough.libvirt_gpu_info), and returns the entries M(fleetgpu.passthrough.libvirt_hostdev)
    may change - the others it would leave exactly as they are, so they need no run of it.
  - An entry is dropped only when the domain is persistent, every GPU and companion function of its slot
    (as M(fleetgpu.passthrough.gpu_facts) lists them) is already in its persistent definition with the asked
    C(managed) setting and a guest address, no C(wiring) is asked, the change is to the definition alone
    (O(where=config)) and the domain runs when C(start) asks for it (O(state=present)); or when it has no GPU
    to give back (O(state=absent)). Anything else is kept, so check mode predicts exactly what a real run does.
options:
  _input:
    description: The entries of P(fleetgpu.passthrough.gpu_placement#filter) (C(name), C(devices), C(start), C(wiring)).
    type: list
    elements: dict
    required: true
  info:
    description: The result of M(fleetgpu.passthrough.libvirt_gpu_info).
    type: dict
    required: true
  facts:
    description: The host's C(gpu_passthrough) facts from M(fleetgpu.passthrough.gpu_facts).
    type: dict
    required: true
  state:
    description: The O(fleetgpu.passthrough.libvirt_hostdev#module:state) the entries are applied with.
    type: str
    default: present
    choices: [present, absent]
  where:
    description: The O(fleetgpu.passthrough.libvirt_hostdev#module:where) they are applied with.
    type: str
    default: config
  managed:
    description: The O(fleetgpu.passthrough.libvirt_hostdev#module:managed) they are applied with.
    type: bool
    default: false
  companions:
    description: The O(fleetgpu.passthrough.libvirt_hostdev#module:companions) they are applied with.
    type: bool
    default: true
'''

EXAMPLES = r'''
- name: Attach only where something changes
  fleetgpu.passthrough.libvirt_hostdev:
    domain: "{{ item.name }}"
    devices: "{{ item.devices }}"
  loop: "{{ placement | fleetgpu.passthrough.hostdev_pending(libvirt_info, ansible_facts.gpu_passthrough) }}"
'''

RETURN = r'''
_value:
  description: The entries of the input that M(fleetgpu.passthrough.libvirt_hostdev) may change, in input order.
  type: list
  elements: dict
'''

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev_pending import pending


def hostdev_pending(plan: list, info: dict, facts: dict, state: str = 'present', where: str = 'config',
                    managed: bool = False, companions: bool = True) -> list:
    return pending(plan or [], info or {}, facts or {}, state, where, bool(managed), bool(companions))


class FilterModule:
    def filters(self) -> dict:
        return {'hostdev_pending': hostdev_pending}
