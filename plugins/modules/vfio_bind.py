#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: vfio_bind
short_description: Bind whole IOMMU groups to vfio-pci at runtime, and give them back
version_added: 0.1.0
description:
  - Moves PCI devices to C(vfio-pci) (or a vendor variant such as C(nvgrace_gpu_vfio_pci)) now, without a reboot,
    when the IOMMU is already on; with O(state=absent) puts them back on the driver they had before.
  - Works on whole IOMMU groups. Every endpoint of a requested device's group moves together; bridges and PCIe ports
    are left alone. A group that holds an endpoint that was not requested is refused unless O(include_group=true).
  - Per device, in this order, loads the driver module when it is not loaded (C(modprobe), skipped when
    C(/sys/bus/pci/drivers/<driver>) exists, and never run when O(sysfs_root) does not resolve to C(/sys), since it
    would load the module into the running host's kernel, not the simulated one), writes C(driver_override), unbinds the current driver, writes the
    address to C(drivers_probe), and verifies the C(driver) link and C(/dev/vfio/<group>). It never writes C(new_id),
    which would also capture an identical device the host still uses.
  - A restore points C(driver_override) at the driver recorded in the journal, unbinds, probes, and clears the
    override again, so no other driver that claims the device can win. A device the journal does not know goes to
    the kernel's default driver (override cleared, then probed). Group members the journal says moved together with
    a listed device are restored with it.
  - Refuses unsafe work by default, each time naming the device and what to do; the boot VGA device
    (O(allow_boot_vga)), a device in use (O(allow_in_use)) by processes holding its C(/dev/dri) nodes, its
    ALSA nodes (C(/dev/snd/pcmC*)), C(/dev/nvidiaN) or C(/dev/vfio/<group>), or by running libvirt domains (asked read-only only when O(sysfs_root)
    is C(/sys), libvirt-python is installed and C(qemu:///system) answers), a device without IOMMU group, an SR-IOV
    physical function with virtual functions enabled, and the parent of live mediated devices.
  - Every kernel write is bounded by O(timeout). A write that does not return (a driver stuck in its probe holds the
    device lock) fails the task with a message naming the device, its driver and the processes holding it.
  - After a restore (O(state=absent)), each device given back is checked as P(fleetgpu.passthrough.gpu_quarantine#module)
    does (read only, never a reset). A device whose config space does not answer, or whose journaled driver did not
    bind again, is quarantined (RV(quarantined)), so placement skips it until it is cleared.
  - The original drivers are recorded in a journal before anything changes. When a device of a group fails, the
    devices of that group already moved are put back, and the result lists them in RV(rolled_back). A run after a
    crash converges.
  - The journal is not trusted blindly. A journal that cannot be read, is truncated, is not a vfio_bind journal,
    has another version, or holds an invalid address, driver or vendor:device fails the task with a message naming
    the journal file, which is left as it is. A restore compares the journaled vendor:device with the card now at
    that address and refuses a mismatch, naming both. A C(driver_override) that cannot be read is never taken as
    empty; the task fails before changing anything, so the original override is not lost.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  devices:
    description:
      - PCI addresses of the devices, C(DDDD:BB:SS.F) or C(BB:SS.F).
      - Mutually exclusive with O(match).
    type: list
    elements: str
  match:
    description:
      - Select every endpoint whose ids match, instead of listing addresses. Matching identical GPUs selects all of
        them, including a boot VGA device, which is then refused unless O(allow_boot_vga=true).
    type: dict
    suboptions:
      vendor_id:
        description: PCI vendor id, four hex digits (C(10de)).
        type: str
        required: true
      device_id:
        description: PCI device id, four hex digits.
        type: str
        required: true
      subsystem_vendor_id:
        description: Subsystem vendor id, to tell apart boards of one chip.
        type: str
      subsystem_device_id:
        description: Subsystem device id.
        type: str
  state:
    description:
      - V(present) binds the devices' groups to O(driver).
      - V(absent) puts the devices that are on O(driver) back on their journaled driver, or on the kernel's default
        driver when the journal does not know them.
    type: str
    choices: [present, absent]
    default: present
  driver:
    description:
      - The driver to bind to. Lower-case letters, digits, C(_) and C(-) only.
    type: str
    default: vfio-pci
  include_group:
    description:
      - Take every endpoint of the requested devices' IOMMU groups, also those not listed.
    type: bool
    default: false
  allow_boot_vga:
    description:
      - Take the boot VGA device too (the host loses that console). A warning is emitted.
    type: bool
    default: false
  allow_in_use:
    description:
      - Move devices that processes or running libvirt domains hold. A warning is emitted; the unbind may block until
        they let go, and then fails after O(timeout).
    type: bool
    default: false
  release_ids:
    description:
      - With O(state=absent), when O(driver) takes a device straight back on the restoring probe because the
        device's vendor:device is in the driver's dynamic id table (its C(ids=) module option or a C(new_id)),
        remove that id from the table (C(remove_id)) and probe again.
      - Devices of that vendor:device already bound to O(driver) stay bound; later probes no longer pick O(driver)
        for them. Role P(fleetgpu.passthrough.vfio_host#role) sets this when it removes its configuration.
      - Without it such a restore fails with a message that says how to remove the ids.
    type: bool
    default: false
  journal_path:
    description:
      - Where the original drivers are recorded (a JSON file readable by root only, replaced atomically).
    type: path
    default: /var/lib/fleetgpu-passthrough/vfio_bind.json
extends_documentation_fragment:
  - fleetgpu.passthrough.sysfs
  - fleetgpu.passthrough.sysfs.ACTION_MODULE
notes:
  - Runs as root. Nothing is written in check mode, not even the journal.
  - For a binding that survives reboots, configure C(vfio-pci) early in boot (the C(vfio_host) role); this module
    changes the running kernel only.
seealso:
  - module: fleetgpu.passthrough.gpu_facts
  - module: fleetgpu.passthrough.iommu_check
'''

EXAMPLES = r'''
- name: Give the GPU and its HDMI audio function to vfio-pci
  fleetgpu.passthrough.vfio_bind:
    devices:
      - "0000:01:00.0"
      - "0000:01:00.1"

- name: Take the whole IOMMU group of a GPU, whatever else it holds
  fleetgpu.passthrough.vfio_bind:
    devices: ["0000:01:00.0"]
    include_group: true

- name: Bind every RTX 3090 (refused if one of them is the boot console)
  fleetgpu.passthrough.vfio_bind:
    match:
      vendor_id: "10de"
      device_id: "2204"
    include_group: true

- name: Give the devices back to their original drivers
  fleetgpu.passthrough.vfio_bind:
    devices: ["0000:01:00.0", "0000:01:00.1"]
    state: absent
'''

RETURN = r'''
devices:
  description: Every endpoint of the groups handled, with its driver before and after (planned in check mode).
  returned: always
  type: list
  elements: dict
  contains:
    address:
      description: PCI address.
      type: str
      sample: "0000:01:00.0"
    group:
      description: IOMMU group number.
      type: int
      sample: 12
    vendor_device:
      description: C(vendor:device) ids.
      type: str
      sample: "10de:2204"
    class_name:
      description: PCI class name.
      type: str
      sample: VGA compatible controller
    driver_before:
      description: Driver bound before the task, null for none.
      type: str
      sample: nvidia
    driver_after:
      description: Driver bound after the task (planned in check mode; null on a restore without journal means the
        kernel's default driver). After a failure, the driver the device is really on.
      type: str
      sample: vfio-pci
    changed:
      description: Whether this device changes driver.
      type: bool
  sample:
    - address: "0000:01:00.0"
      group: 12
      vendor_device: "10de:2204"
      class_name: VGA compatible controller
      driver_before: nvidia
      driver_after: vfio-pci
      changed: true
rolled_back:
  description: Devices put back on their original driver after a failure in their group.
  returned: always
  type: list
  elements: str
  sample: ["0000:01:00.1"]
released_ids:
  description: vendor:device ids taken out of O(driver)'s dynamic id table during a restore (see O(release_ids)).
  returned: always
  type: list
  elements: str
  sample: ["1002:5159"]
stuck:
  description: Devices whose kernel writes did not return within O(timeout).
  returned: always
  type: list
  elements: str
  sample: []
quarantined:
  description:
    - With O(state=absent), the quarantine entries (C(address), C(reason), C(time), C(source), C(vendor_device)) of
      the devices given back that failed their reset-health check (see P(fleetgpu.passthrough.gpu_quarantine#module)),
      that is config space unreadable or reading vendor id C(ffff), or the journaled driver not bound again. Such a device is
      recorded in C(ROOT/var/lib/fleetgpu-passthrough/quarantine.json) and a warning names it; when its driver did
      not come back the task fails and its message says that the device is quarantined.
  returned: always
  type: list
  elements: dict
  sample: []
journal_path:
  description: The journal file used.
  returned: always
  type: str
  sample: /var/lib/fleetgpu-passthrough/vfio_bind.json
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import common_argspec
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.vfio_bind import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            devices=dict(type='list', elements='str'),
            match=dict(type='dict', options=dict(
                vendor_id=dict(type='str', required=True),
                device_id=dict(type='str', required=True),
                subsystem_vendor_id=dict(type='str'),
                subsystem_device_id=dict(type='str'),
            )),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            driver=dict(type='str', default='vfio-pci'),
            include_group=dict(type='bool', default=False),
            allow_boot_vga=dict(type='bool', default=False),
            allow_in_use=dict(type='bool', default=False),
            release_ids=dict(type='bool', default=False),
            journal_path=dict(type='path', default='/var/lib/fleetgpu-passthrough/vfio_bind.json'),
            **common_argspec()
        ),
        mutually_exclusive=[('devices', 'match')],
        required_one_of=[('devices', 'match')],
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except FleetGpuError as exc:
        module.fail_json(**exc.result())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
