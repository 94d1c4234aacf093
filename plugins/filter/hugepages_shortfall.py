# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: hugepages_shortfall
short_description: Say where the kernel reserved fewer hugepages than asked for
version_added: 0.1.0
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
description:
  - Takes a host's C(ansible_facts.gpu_passthrough) from M(fleetgpu.passthrough.gpu_facts), read after the boot that
    applied a reservation, and the C(expected) list of P(fleetgpu.passthrough.hugepages_plan#filter), and returns one
    sentence per node (or for the whole host) where the kernel holds fewer pages of the size than asked for.
  - At boot the kernel reserves what it finds and carries on when memory is short; this says so.
options:
  _input:
    description: The host's C(ansible_facts.gpu_passthrough), read after the reboot.
    type: dict
    required: true
  expected:
    description: The C(expected) list of P(fleetgpu.passthrough.hugepages_plan#filter).
    type: list
    elements: dict
    required: true
'''

EXAMPLES = r'''
- name: Warn when the kernel reserved fewer pages than asked for
  ansible.builtin.debug:
    msg: "{{ ansible_facts['gpu_passthrough'] | fleetgpu.passthrough.hugepages_shortfall(hugepages.expected) }}"
'''

RETURN = r'''
_value:
  description: One sentence per shortfall; empty when every page is there.
  type: list
  elements: str
'''

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hugepages import shortfall


def hugepages_shortfall(facts: dict, expected: list) -> list:
    return shortfall(facts or {}, expected or [])


class FilterModule:
    def filters(self) -> dict:
        return {'hugepages_shortfall': hugepages_shortfall}
