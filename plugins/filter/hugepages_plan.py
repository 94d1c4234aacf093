# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: hugepages_plan
short_description: Check a hugepage reservation against a host and render its kernel arguments
version_added: 0.1.0
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
description:
  - Takes a list of C({size, count, node}) entries (role C(vfio_host)'s C(vfio_host_hugepages)) and the host's
    C(ansible_facts.gpu_passthrough) from M(fleetgpu.passthrough.gpu_facts), and returns the kernel arguments that
    reserve those pages at boot, with what the kernel should then hold.
  - C(size) is C(2M), C(1G), C(2048kB) or a number of KiB; it must be a size the host's kernel offers (the
    C(hugepages) sizes of C(host.numa_nodes)). C(count) is a positive number of pages. C(node) is a NUMA node of
    the host; without it the kernel spreads the pages over the nodes.
  - One entry without C(node) renders C(hugepagesz=2M hugepages=64); one entry per node renders the kernel's node
    form C(hugepagesz=1G hugepages=0:4,1:4) (Linux 5.16 and later). One page size per host.
  - A reservation of more than 90 percent of the memory of its node (or of the host, without C(node)) is refused.
  - Nothing is raised for bad input; the result's C(error) names the option and the entry at fault.
options:
  _input:
    description: The reservation entries.
    type: list
    elements: dict
    required: true
  facts:
    description: The host's C(ansible_facts.gpu_passthrough).
    type: dict
    required: true
  default_size:
    description: The default hugepage size to set (C(default_hugepagesz)); empty leaves it to the kernel.
    type: raw
    default: ''
  option:
    description: The name of the entries' variable, used in messages.
    type: str
    default: vfio_host_hugepages
'''

EXAMPLES = r'''
- name: Work out the kernel arguments for 64 pages of 2 MiB
  ansible.builtin.set_fact:
    hugepages: "{{ [{'size': '2M', 'count': 64}] | fleetgpu.passthrough.hugepages_plan(ansible_facts['gpu_passthrough']) }}"

- name: Stop on a reservation the host cannot hold
  ansible.builtin.assert:
    that: hugepages.error | length == 0
    fail_msg: "{{ hugepages.error }}"
'''

RETURN = r'''
_value:
  description: The plan.
  type: dict
  contains:
    args:
      description: The kernel arguments, in the order the kernel needs them (C(hugepagesz=) before C(hugepages=)).
      type: list
      elements: str
    expected:
      description: Per node (C(node) null for the whole host), C(size_kib) and C(count) the kernel should reserve.
      type: list
      elements: dict
    error:
      description: Why the reservation was refused; empty when it was not.
      type: str
'''

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hugepages import HugepagesError, plan


def hugepages_plan(entries: object, facts: dict, default_size: object = '', option: str = 'vfio_host_hugepages') -> dict:
    try:
        result = plan(entries, facts or {}, default_size, option)
    except HugepagesError as exc:
        return {'args': [], 'expected': [], 'error': str(exc)}
    result['error'] = ''
    return result


class FilterModule:
    def filters(self) -> dict:
        return {'hugepages_plan': hugepages_plan}
