#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: guest_check
short_description: Check that a VM's guest sees the GPUs its KVM host gave it, with their drivers (controller side)
version_added: 0.1.0
description:
  - An action plugin that runs on the controller for one guest (a VM reached as an ordinary inventory host).
    It compares what the VM was given on its KVM host with what M(fleetgpu.passthrough.gpu_facts) found inside
    the guest (O(guest_gpus)), and fails the guest when it lacks a GPU, a companion function or a driver.
  - What was given is read from C(hostvars) - what an earlier play on the KVM hosts O(hosts) registered as
    O(facts_result) (M(fleetgpu.passthrough.gpu_facts)) and O(libvirt_result)
    (M(fleetgpu.passthrough.libvirt_gpu_info)). A GPU of the host whose address is a hostdev of the domain
    O(vm) was given to it, with those of its companion functions (HDMI audio, USB-C) that are hostdevs of the
    domain too. Hostdevs that are no GPU (a NIC, an NVMe drive) are not looked for.
  - The guest's PCI addresses are not the host's, so GPUs are matched by vendor:device, as many of each as were
    given; when the guest has more GPUs of one vendor:device than were given (an emulated display adapter with
    the same ids), those with the host GPU's subsystem ids are taken first. A companion function is looked for
    under its GPU, on the same guest slot (where role P(fleetgpu.passthrough.libvirt_gpu#role) places it); a
    companion a VM definition put on a slot of its own is reported missing.
  - A GPU in the guest counts as having a driver when it is bound to one other than C(vfio-pci) and
    C(pci-stub); with O(driver), it must be that driver.
  - Input that does not tell which host to look at fails with a message naming the VM and the host - a VM that
    is a domain on none of O(hosts), or on more than one of them (set O(vm_host)), an O(vm_host) that is not in
    the inventory or not among O(hosts), a host that could not be read.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  vm:
    description: The name of the libvirt domain the guest runs in.
    type: str
    required: true
  guest_gpus:
    description: The C(gpus) of M(fleetgpu.passthrough.gpu_facts) run inside the guest (C(ansible_facts.gpu_passthrough.gpus)).
    type: list
    elements: raw
    required: true
  driver:
    description:
      - The driver every given GPU must be bound to in the guest (for example C(nvidia), C(amdgpu)).
      - Without it, any driver other than C(vfio-pci) and C(pci-stub) will do.
    type: str
  vm_host:
    description:
      - The KVM host (an inventory host among O(hosts)) the VM is defined on.
      - Without it, every host of O(hosts) is searched for the domain O(vm); it must be on exactly one.
    type: str
  hosts:
    description: The KVM hosts whose registered results are read.
    type: list
    elements: str
    required: true
  facts_result:
    description: The variable each KVM host registered M(fleetgpu.passthrough.gpu_facts) in.
    type: str
    default: fleetgpu_gpu_facts
  libvirt_result:
    description: The variable each KVM host registered M(fleetgpu.passthrough.libvirt_gpu_info) in.
    type: str
    default: fleetgpu_libvirt_info
attributes:
  action:
    description: Runs on the controller as an action plugin.
    support: full
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The check reads only; check mode gives the same result.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
notes:
  - Playbook C(fleetgpu.passthrough.verify_guests) runs the plays around it - the KVM hosts first, then every guest.
seealso:
  - module: fleetgpu.passthrough.gpu_facts
  - module: fleetgpu.passthrough.libvirt_gpu_info
'''

EXAMPLES = r'''
# In a play on the KVM hosts (group gpu_hosts), before:
#   - fleetgpu.passthrough.gpu_facts: register fleetgpu_gpu_facts
#   - fleetgpu.passthrough.libvirt_gpu_info: register fleetgpu_libvirt_info
# Then, in a play on the guests:
- name: Read the GPUs the guest sees
  fleetgpu.passthrough.gpu_facts:

- name: Check that the guest sees every GPU its VM was given, on the NVIDIA driver
  fleetgpu.passthrough.guest_check:
    vm: "{{ fleetgpu_vm_name | default(inventory_hostname) }}"
    guest_gpus: "{{ ansible_facts.gpu_passthrough.gpus }}"
    driver: nvidia
    hosts: "{{ groups['gpu_hosts'] }}"
  register: guest_gpus_checked

- name: Say what was seen
  ansible.builtin.debug:
    msg: "{{ guest_gpus_checked.msg }}"
'''

RETURN = r'''
msg:
  description: One line - the VM, its host and OK with what the guest sees, or what it lacks.
  returned: always
  type: str
  sample: "desk01 on gpu01: OK - 1 GPU(s) given, all seen in the guest: 10de:2204 (with 10de:1aef) at 0000:06:00.0 on nvidia"
vm:
  description: The VM checked.
  returned: when its host was found
  type: str
host:
  description: The KVM host the VM is a domain on.
  returned: when its host was found
  type: str
ok:
  description: Whether the guest sees every GPU and companion it was given, each GPU with its driver.
  returned: when its host was found
  type: bool
given:
  description: The GPUs the VM was given on its host (host C(address), C(vendor_device), subsystem ids, C(companions)).
  returned: when its host was found
  type: list
  elements: dict
matched:
  description: The guest's GPUs taken for the given ones (guest C(address), C(vendor_device), C(driver), C(companions)).
  returned: when its host was found
  type: list
  elements: dict
missing:
  description: vendor:device of every given GPU the guest does not see (one entry per GPU).
  returned: when its host was found
  type: list
  elements: str
  sample: ["10de:2204"]
missing_companions:
  description: vendor:device of every given companion function not seen under its GPU in the guest.
  returned: when its host was found
  type: list
  elements: str
  sample: ["10de:1aef"]
without_driver:
  description: Guest addresses of the GPUs without a driver of their own, or not on O(driver).
  returned: when its host was found
  type: list
  elements: str
  sample: ["0000:06:00.0"]
driver:
  description: The driver asked for (null for any).
  returned: when its host was found
  type: str
messages:
  description: One message per problem, each naming the VM, the GPU vendor:device and the driver.
  returned: when its host was found
  type: list
  elements: str
  sample: ["desk01: GPU 0000:06:00.0 (10de:2204) in the guest is on nouveau, not nvidia"]
'''
