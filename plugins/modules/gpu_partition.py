#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: gpu_partition
short_description: Split a GPU into SR-IOV virtual functions or mediated devices (vGPU), persisted across reboots
version_added: 0.3.0
description:
  - Sets the number of SR-IOV virtual functions (VFs) of a physical function (PF), and creates or removes mediated
    devices (mdev, such as NVIDIA vGPU types) of a parent, so they can be given to VMs with
    P(fleetgpu.passthrough.libvirt_hostdev#module).
  - "SR-IOV: writes C(sriov_numvfs) of the PF, within C(sriov_totalvfs). The kernel refuses a new non-zero count
    while VFs are enabled, so a change between two non-zero counts writes C(0) first. Such a change (or going back
    to 0) is refused before anything is written while a VF is in use: a process holds its C(/dev/vfio/<group>) (or
    another node of it), or a running libvirt domain has it (asked read-only, only when O(sysfs_root) is C(/sys))."
  - "SR-IOV persistence (O(persist=true)): a udev rule
    C(ROOT/etc/udev/rules.d/70-fleetgpu-passthrough-sriov-<address>.rules) sets C(sriov_numvfs) when the PF's driver
    binds (C(ACTION==\"bind\")), so the VFs come back at boot once the PF driver is there, without racing it. The
    rule is also how the module knows that the collection set the count: O(state=absent) returns the count to 0 and
    removes the rule only when that rule exists."
  - "mdev: creates mediated devices of a type the parent offers (its id, or its human name from the type's C(name)
    file), each with a UUID given or derived from the parent, type and O(mdevs[].name) (or the entry's index), so
    repeated runs and other hosts get the same UUID. New devices must fit in the type's C(available_instances)."
  - "mdev persistence (O(persist=true)): the device is defined with C(mdevctl define --auto) and started with
    C(mdevctl start), so it comes back at boot (Debian package C(mdevctl); without it the task fails naming the
    package). With O(persist=false) the UUID is written to the type's C(create) file in sysfs, which lasts until
    reboot."
  - "Removal (O(state=absent)): stops and undefines devices mdevctl knows, or writes C(remove) in sysfs. A mediated
    device that a running domain uses (a process holds its C(/dev/vfio/<group>), named by the QEMU process's guest
    name, or the live XML of a running libvirt domain has it) is never removed: the task fails naming the domain."
  - The mediated devices the collection created are recorded in C(ROOT/var/lib/fleetgpu-passthrough/partition.json),
    so O(state=absent) without O(mdevs) removes those and no others, and
    P(fleetgpu.passthrough.gpu_facts#module) reports which are the collection's.
  - Everything is decided before anything is changed; check mode returns that plan (VF addresses from the PF's
    C(sriov_offset) and C(sriov_stride), the UUIDs, the commands, the files) and diff mode shows the VF count, the
    mediated devices and the udev rule before and after.
  - With a prefix O(root), the host tools (C(mdevctl)) run inside that root through C(chroot), or not at all; they
    never run on the running host.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  parent:
    description:
      - The device to split. A PCI address (C(0000:03:00.0), or C(03:00.0)) or the name of an mdev parent as
        listed in C(/sys/class/mdev_bus/) (C(mbochs) for the kernel's sample driver; a GPU's is its PCI address).
    type: str
    required: true
  sriov_numvfs:
    description:
      - The number of SR-IOV VFs wanted on the PCI device O(parent); C(0) disables them.
      - Refused when the device has no SR-IOV capability or the number is over its C(sriov_totalvfs).
      - Ignored with O(state=absent) (the count goes back to 0 only when the collection set it).
    type: int
  mdevs:
    description:
      - The mediated devices wanted on O(parent) (O(state=present)), or to remove (O(state=absent)).
      - With O(state=absent) and no O(mdevs), every mediated device of O(parent) that the collection created is
        removed.
    type: list
    elements: dict
    suboptions:
      type:
        description:
          - The mdev type, by id (C(nvidia-63), C(mbochs-2)) or by its human name (C(GRID T4-4Q)).
          - A type the parent does not offer fails the task with the list of the types it offers (ids and names).
        type: str
        required: true
      uuid:
        description:
          - The device's UUID. Default, a stable UUID derived from the parent, the type id and O(mdevs[].name)
            (or the entry's position in the list).
        type: str
      name:
        description:
          - A label for the device (the VM it is for); it makes the derived UUID and is recorded with it.
        type: str
  state:
    description:
      - V(present) sets the VF count and creates the mediated devices.
      - V(absent) removes the listed mediated devices, or without O(mdevs) those the collection created on O(parent)
        and the VFs the collection enabled.
    type: str
    choices: [present, absent]
    default: present
  persist:
    description:
      - Keep the VFs (udev rule) and mediated devices (mdevctl definition, started automatically) across reboots.
      - With V(false), only the running kernel is changed, and the udev rule is left as it is.
    type: bool
    default: true
  root:
    description:
      - The root of the host's file system, for the udev rule, mdevctl's definitions and the record. For tests,
        chroots, images and containers; with another root than C(/), C(mdevctl) runs inside it through C(chroot)
        or not at all.
      - Default, the parent of O(sysfs_root) (C(/) for C(/sys), C(/host) for C(/host/sys)), where
        P(fleetgpu.passthrough.gpu_facts#module) reads the rule and the record.
      - C(/) with another O(sysfs_root) than C(/sys) is refused where mdevctl would run (it would act on the
        running host's kernel).
    type: path
extends_documentation_fragment:
  - fleetgpu.passthrough.sysfs
  - fleetgpu.passthrough.sysfs.ACTION_MODULE
notes:
  - C(udevadm verify) (systemd 253 and later) is not in Debian 12's udev (252); the rule is one line in the format
    documented in udev(7).
  - A mediated device in use cannot be removed by the kernel without waiting for its user; that is why the module
    refuses it instead.
seealso:
  - module: fleetgpu.passthrough.gpu_facts
  - module: fleetgpu.passthrough.libvirt_hostdev
  - module: fleetgpu.passthrough.vfio_bind
'''

EXAMPLES = r'''
- name: Enable 4 SR-IOV VFs on a GPU, applied again at every boot when its driver binds
  fleetgpu.passthrough.gpu_partition:
    parent: "0000:03:00.0"
    sriov_numvfs: 4

- name: Two vGPUs of a type named by its human name, with stable UUIDs, persisted with mdevctl
  fleetgpu.passthrough.gpu_partition:
    parent: "0000:04:00.0"
    mdevs:
      - type: GRID T4-4Q
        name: vdi01-0
      - type: GRID T4-4Q
        name: vdi02-0
  register: vgpus

- name: Show the UUIDs to attach
  ansible.builtin.debug:
    msg: "{{ vgpus.mdevs | map(attribute='uuid') | list }}"

- name: A mediated device until the next reboot only (no mdevctl needed)
  fleetgpu.passthrough.gpu_partition:
    parent: mbochs
    persist: false
    mdevs:
      - type: mbochs-1
        uuid: 0f3e6b8a-3c1e-4d52-9a53-7a6c1d2e4f10

- name: Remove the mediated devices the collection created on the GPU
  fleetgpu.passthrough.gpu_partition:
    parent: "0000:04:00.0"
    state: absent

- name: Disable the VFs the collection enabled and drop the udev rule
  fleetgpu.passthrough.gpu_partition:
    parent: "0000:03:00.0"
    state: absent
'''

RETURN = r'''
parent:
  description: The parent, as the kernel names it (a full PCI address, or the mdev_bus name).
  type: str
  returned: always
  sample: "0000:01:00.0"
vfs:
  description:
    - The VFs of the parent after the run (in check mode, as they would be; their driver is null when they do not
      exist yet). Empty when O(sriov_numvfs) was not asked.
  type: list
  elements: dict
  returned: always
  sample:
    - address: "0000:01:00.4"
      driver: vfio-pci
mdevs:
  description:
    - One entry per mediated device of the request (or removed), with its UUID, type id, type name, parent, label,
      C(state) (C(created), C(kept) or C(removed)) and whether mdevctl keeps it across reboots (C(persistent)).
  type: list
  elements: dict
  returned: always
  sample:
    - uuid: "5b4f1c9e-2f0a-5e1c-9d41-3b8e0b8a2c11"
      type: nvidia-63
      type_name: GRID T4-4Q
      parent: "0000:04:00.0"
      name: vdi01-0
      state: created
      persistent: true
files:
  description: The files changed (or that would change in check mode), paths below O(root).
  type: list
  elements: str
  returned: always
  sample: ["/etc/udev/rules.d/70-fleetgpu-passthrough-sriov-0000:01:00.0.rules"]
commands:
  description: The mdevctl commands run (or that would run in check mode), as argument lists.
  type: list
  elements: list
  returned: always
  sample: [["mdevctl", "define", "--uuid", "5b4f1c9e-2f0a-5e1c-9d41-3b8e0b8a2c11", "--parent", "0000:02:00.0",
            "--type", "nvidia-63", "--auto"], ["mdevctl", "start", "--uuid", "5b4f1c9e-2f0a-5e1c-9d41-3b8e0b8a2c11"]]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import common_argspec
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_partition import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            parent=dict(type='str', required=True),
            sriov_numvfs=dict(type='int'),
            mdevs=dict(type='list', elements='dict', options=dict(
                type=dict(type='str', required=True),
                uuid=dict(type='str'),
                name=dict(type='str'),
            )),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            persist=dict(type='bool', default=True),
            root=dict(type='path'),
            **common_argspec()
        ),
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except FleetGpuError as exc:
        module.fail_json(**exc.result())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
