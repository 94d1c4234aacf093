#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: gpu_quarantine
short_description: Check that PCI devices can be reset and answer, quarantine those that do not, clear the quarantine
version_added: 0.2.0
description:
  - With O(state=checked), checks the reset health of the devices at O(addresses), or of every GPU of the host when
    O(addresses) is empty, and quarantines each device that fails.
  - The check reads, for each device, C(reset_method) (the reset methods the kernel can use, kernel 5.15 and later),
    the first bytes of its C(config) space, and its C(driver) link. A device whose config space cannot be read, or
    reads vendor id C(ffff) (a device that no longer answers), or whose reads do not return within O(timeout)
    seconds, fails. A device without any reset method (no C(reset_method) attribute, or an empty one) only gets a
    warning, since many GPUs lack FLR and the kernel hides the attribute when it knows no method.
  - The check never resets a device. It reads C(reset_method); it does not write C(reset).
  - A failed device is recorded in C(ROOT/var/lib/fleetgpu-passthrough/quarantine.json), where ROOT is the parent of
    O(sysfs_root) (C(/) for C(/sys)), with its address, the reason and the time. An entry already there is kept as it
    is, also when the device passes the check again; only O(state=cleared) removes it.
  - A quarantined device is reported by P(fleetgpu.passthrough.gpu_facts#module) in C(quarantined), skipped by fleet
    placement (P(fleetgpu.passthrough.fleet_plan#module)), and refused by P(fleetgpu.passthrough.libvirt_hostdev#module)
    unless that module is given O(fleetgpu.passthrough.libvirt_hostdev#module:allow_quarantined=true).
    P(fleetgpu.passthrough.vfio_bind#module) with O(fleetgpu.passthrough.vfio_bind#module:state=absent) quarantines a
    device whose original driver did not come back.
  - With O(state=cleared), removes the entries of O(addresses). An address that is not quarantined is no change. The
    device need not exist any more.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  addresses:
    description:
      - PCI addresses of the devices, C(DDDD:BB:SS.F) or C(BB:SS.F).
      - With O(state=checked), empty means every GPU of the host (display controllers, and processing accelerators
        with O(include_accelerators=true)); an address that does not exist on the host fails the task, naming it.
      - Required with O(state=cleared).
    type: list
    elements: str
    default: []
  state:
    description:
      - V(checked) checks the devices and quarantines the ones that fail.
      - V(cleared) releases the devices from the quarantine.
    type: str
    choices: [checked, cleared]
    default: checked
  include_accelerators:
    description:
      - With O(state=checked) and no O(addresses), also check processing accelerators (PCI class C(0x12)).
    type: bool
    default: false
extends_documentation_fragment:
  - fleetgpu.passthrough.sysfs
  - fleetgpu.passthrough.sysfs.ACTION_MODULE
seealso:
  - module: fleetgpu.passthrough.gpu_facts
  - module: fleetgpu.passthrough.vfio_bind
  - module: fleetgpu.passthrough.libvirt_hostdev
'''

EXAMPLES = r'''
- name: Check every GPU of the host and quarantine those that do not answer
  fleetgpu.passthrough.gpu_quarantine:
  register: health

- name: Show the quarantined devices and why
  ansible.builtin.debug:
    msg: "{{ health.quarantined }}"

- name: Check one GPU and its audio function after a VM gave them back
  fleetgpu.passthrough.gpu_quarantine:
    addresses:
      - "0000:01:00.0"
      - "0000:01:00.1"

- name: Release a GPU from the quarantine once it was repaired (or the host rebooted)
  fleetgpu.passthrough.gpu_quarantine:
    state: cleared
    addresses:
      - "0000:01:00.0"
'''

RETURN = r'''
devices:
  description:
    - With O(state=checked), one entry per device checked, sorted by address.
    - C(healthy) is false when the device failed a check (C(problems) says which); C(warnings) are findings that do
      not quarantine it (no reset method).
    - C(reset_method) is the kernel's list of reset methods, or null when the attribute does not exist.
    - C(config_vendor_id) is the vendor id read from the config space (null when it could not be read).
    - C(quarantined) is the device's entry in the record (C(address), C(reason), C(time), C(source),
      C(vendor_device)) or false.
  type: list
  elements: dict
  returned: always
  sample:
    - address: "0000:01:00.0"
      vendor_device: "10de:2204"
      healthy: true
      reset_method: [flr, bus]
      config_readable: true
      config_vendor_id: "10de"
      driver: vfio-pci
      problems: []
      warnings: []
      quarantined: false
added:
  description: The addresses this run quarantined (would quarantine, in check mode).
  type: list
  elements: str
  returned: always
  sample: ["0000:41:00.0"]
cleared:
  description: The addresses this run released (would release, in check mode).
  type: list
  elements: str
  returned: always
  sample: []
quarantined:
  description: Every entry of the record after the run (in check mode, as it would be), keyed by address.
  type: dict
  returned: always
  sample:
    "0000:41:00.0":
      address: "0000:41:00.0"
      reason: "its config space reads vendor id ffff: the device does not answer (it did not come back from a reset, or fell off the bus)"
      time: "2026-03-02T10:15:00Z"
      source: gpu_quarantine
      vendor_device: "10de:2204"
quarantine_path:
  description: The quarantine record file.
  type: str
  returned: always
  sample: /var/lib/fleetgpu-passthrough/quarantine.json
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import common_argspec, from_params
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_quarantine import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            addresses=dict(type='list', elements='str', default=[]),
            state=dict(type='str', choices=['checked', 'cleared'], default='checked'),
            include_accelerators=dict(type='bool', default=False),
            **common_argspec()
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        result, warnings = run(from_params(params), params['state'], params['addresses'],
                               include_accelerators=params['include_accelerators'],
                               check_mode=module.check_mode, diff=module._diff)
    except FleetGpuError as exc:
        module.fail_json(**exc.result())
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
