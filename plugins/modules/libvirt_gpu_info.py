#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: libvirt_gpu_info
short_description: Read every libvirt domain's PCI hostdevs, power state and NUMA pinning in one run
version_added: 0.1.0
description:
  - Connects read-only to libvirt and returns, for every domain (persistent or transient), its power state,
    the host PCI devices in its persistent and running definitions, and the host NUMA nodes its memory is
    pinned to.
  - Made for the fleet play of C(site.yml) and C(facts.yml), which reads it on every host before placing
    VM requests with M(fleetgpu.passthrough.fleet_plan).
  - When the host's Python lacks the libvirt binding or lxml, the module reads the same through the libvirt
    client program (C(virsh --readonly)), so the fleet can still place VMs on that host; role
    P(fleetgpu.passthrough.vfio_host#role) installs the binding before role P(fleetgpu.passthrough.libvirt_gpu#role)
    changes anything there. RV(via) and RV(python_modules_missing) say how it was read. Read that way, a
    domain whose definition cannot be read makes the result C(available=false) with the reason (it could hold
    any GPU, so no VM is placed on that host).
  - A host without libvirt (no daemon, nothing answering at O(uri), neither the binding nor C(virsh)) is not a
    failure - the result says C(available=false) and why, so a fleet run goes on and no VM is placed there.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  uri:
    description: libvirt connection URI.
    type: str
    default: qemu:///system
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The module never changes anything.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - libvirt-python and lxml on the managed host, or the libvirt client program C(virsh) without them.
seealso:
  - module: fleetgpu.passthrough.fleet_plan
  - module: fleetgpu.passthrough.libvirt_hostdev
'''

EXAMPLES = r'''
- name: Which domain holds which GPU
  fleetgpu.passthrough.libvirt_gpu_info:
  register: libvirt_info

- name: Show the running domains and their devices
  ansible.builtin.debug:
    msg: "{{ libvirt_info.domains | selectattr('active') | items2dict(key_name='name', value_name='hostdevs') }}"
  when: libvirt_info.available
'''

RETURN = r'''
available:
  description: Whether libvirt answered at O(uri).
  returned: always
  type: bool
  sample: true
uri:
  description: The URI asked.
  returned: always
  type: str
via:
  description: How the domains were read - C(python) (the libvirt binding), C(virsh) (without it), or null.
  returned: always
  type: str
  sample: python
  version_added: 0.1.0
python_modules_missing:
  description: The Python modules (C(libvirt), C(lxml)) the host's Python cannot import; empty when it has both.
  returned: always
  type: list
  elements: str
  sample: []
  version_added: 0.1.0
python_interpreter:
  description: The Python interpreter the module ran with on the host (the one RV(python_modules_missing) is about).
  returned: always
  type: str
  sample: /usr/bin/python3
  version_added: 0.1.0
error:
  description: Why libvirt is not available (null when it is).
  returned: always
  type: str
  sample: "no libvirt at qemu:///system: Failed to connect socket to '/var/run/libvirt/libvirt-sock'"
domains:
  description: One entry per domain, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    state:
      description: Power state (C(running), C(shut off), C(paused), ...).
      type: str
    active:
      description: Whether it runs.
      type: bool
    persistent:
      description: Whether it has a persistent definition.
      type: bool
    hostdevs:
      description: Host PCI addresses in its persistent or running definition.
      type: list
      elements: str
    mdevs:
      description:
        - UUIDs (lower case) of the mediated devices (C(<hostdev type='mdev'>)) in its persistent or running
          definition; a domain that is not running names its mdevs here although it holds none in the kernel
          (P(fleetgpu.passthrough.gpu_facts#module)'s C(held_by)).
      type: list
      elements: str
      version_added: 0.1.0
    config_hostdevs:
      description:
        - The PCI hostdevs of its persistent definition (empty for a transient domain), each as
          M(fleetgpu.passthrough.libvirt_hostdev) returns them - C(address), C(guest_address), C(managed),
          C(multifunction), C(rom).
        - Role P(fleetgpu.passthrough.libvirt_gpu#role) reads them to run M(fleetgpu.passthrough.libvirt_hostdev)
          only for the domains it would change.
      type: list
      elements: dict
      version_added: 0.1.0
    numa_nodes:
      description: Host NUMA nodes its memory is pinned to (C(<numatune>)), empty when not pinned.
      type: list
      elements: int
  sample:
    - {name: train01, state: running, active: true, persistent: true, hostdevs: ["0000:41:00.0", "0000:41:00.1"], mdevs: [],
       config_hostdevs: [{address: "0000:41:00.0", guest_address: "0000:07:00.0", managed: false, multifunction: true,
                          rom: null}, {address: "0000:41:00.1", guest_address: "0000:07:00.1", managed: false,
                                       multifunction: false, rom: null}],
       numa_nodes: [1]}
assignments:
  description:
    - Host PCI address -> names of the domains whose persistent or running definition holds it (the
      RV(fleetgpu.passthrough.libvirt_hostdev#module:assignments) map of every domain, in one read).
    - Empty when RV(available) is false.
  returned: always
  type: dict
  sample: {"0000:41:00.0": ["train01"], "0000:41:00.1": ["train01"]}
  version_added: 0.1.0
mdev_assignments:
  description:
    - Mediated device UUID -> names of the domains whose persistent or running definition holds it, running or not.
    - Empty when RV(available) is false.
  returned: always
  type: dict
  sample: {"8d6a3f0e-6c41-5d0e-9b1c-0e6a2b9f4c11": ["vdi01"]}
  version_added: 0.1.0
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_gpu_info import read


def main() -> None:
    module = AnsibleModule(argument_spec=dict(uri=dict(type='str', default='qemu:///system')),
                           supports_check_mode=True)
    result = read(module.params['uri'], run=lambda argv: module.run_command(argv, environ_update={'LC_ALL': 'C'}),
                  virsh=module.get_bin_path('virsh'))
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
