#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: gpu_facts
short_description: Gather the host's GPUs, their IOMMU groups and whether each can be passed to a VM
version_added: 0.1.0
description:
  - Reads the kernel's sysfs and procfs (never C(lspci)) and returns the fact C(gpu_passthrough) with the
    host's CPU and IOMMU state and one entry per GPU.
  - By default a GPU is any display controller (PCI base class C(0x03), which includes the C(0x0302)
    "3D controller" class of data-centre GPUs). O(include_accelerators) adds processing accelerators (class C(0x12)).
  - Each GPU gets a C(state) (C(available), C(vfio-ready), C(boot-vga), C(in-use), C(unusable)) with
    human-readable C(state_reasons).
  - Attributes that take the device lock (C(driver_override), C(sriov_numvfs), C(reset_method)) are read in a
    separate process with a time bound. A device whose driver is stuck in its probe is reported in C(stuck)
    and as C(unusable) instead of hanging the play; each such device adds at most O(timeout) seconds.
  - Names come from the system's C(pci.ids) when it is installed (C(/usr/share/misc/pci.ids) or
    C(/usr/share/hwdata/pci.ids)); they are null otherwise.
  - On a host that is not Linux (macOS) it fails at once with a message that says what is supported and what
    to use there instead (see the filter P(fleetgpu.passthrough.kvm_refusal#filter)).
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  vendors:
    description:
      - Only report GPUs of these PCI vendor ids (four hex digits, for example C(10de) or C(0x1002)).
    type: list
    elements: str
    default: []
  addresses:
    description:
      - Only report the PCI functions at these addresses (C(0000:41:00.0), or C(41:00.0) for domain 0).
      - An address given here is reported even when its class is not a GPU class.
      - An address that does not exist on the host fails the task, naming it.
    type: list
    elements: str
    default: []
  include_accelerators:
    description:
      - Also report processing accelerators (PCI class C(0x12)).
    type: bool
    default: false
extends_documentation_fragment:
  - fleetgpu.passthrough.sysfs
  - fleetgpu.passthrough.sysfs.FACTS_MODULE
seealso:
  - module: fleetgpu.passthrough.iommu_check
  - module: fleetgpu.passthrough.vfio_bind
  - module: fleetgpu.passthrough.gpu_quarantine
'''

EXAMPLES = r'''
- name: Gather the GPUs of the host
  fleetgpu.passthrough.gpu_facts:

- name: Show the GPUs that can be passed through right now
  ansible.builtin.debug:
    msg: "{{ ansible_facts.gpu_passthrough.gpus | selectattr('state', 'in', ['available', 'vfio-ready'])
             | map(attribute='address') | list }}"

- name: Only NVIDIA GPUs and accelerators, from a host's /sys mounted in a container
  fleetgpu.passthrough.gpu_facts:
    vendors: ['10de']
    include_accelerators: true
    sysfs_root: /host/sys

- name: Two given functions
  fleetgpu.passthrough.gpu_facts:
    addresses:
      - "0000:41:00.0"
      - "81:00.0"   # quoted: YAML reads an unquoted 81:00.0 as a base-60 number
'''

RETURN = r'''
ansible_facts:
  description: The facts gathered.
  returned: always
  type: complex
  contains:
    gpu_passthrough:
      description: Host state and GPUs.
      returned: always
      type: complex
      contains:
        host:
          description:
            - C(cpu_vendor) (intel, amd, other), C(cpu_vendor_id), C(virtualization) (vmx, svm or null),
              C(iommu_enabled), C(iommu_type) (intel, amd, other or null), C(interrupt_remapping) (bool or null),
              C(cmdline), C(kernel_release), C(vfio_pci_builtin).
            - C(numa_nodes), the host's NUMA nodes from C(/sys/devices/system/node), each with C(node),
              C(cpus) (list of CPU numbers), C(memory_mib), C(memory_free_mib) and C(hugepages) (per page size
              C(size_kib), C(total) reserved, C(free)). Empty on a kernel without these files.
          type: dict
          returned: always
          sample:
            cpu_vendor: intel
            cpu_vendor_id: GenuineIntel
            virtualization: vmx
            iommu_enabled: true
            iommu_type: intel
            interrupt_remapping: true
            cmdline: root=/dev/sda1 ro intel_iommu=on
            kernel_release: 6.1.0-27-amd64
            vfio_pci_builtin: false
            numa_nodes:
              - node: 0
                cpus: [0, 1, 2, 3]
                memory_mib: 65536
                memory_free_mib: 51200
                hugepages:
                  - {size_kib: 2048, total: 0, free: 0}
                  - {size_kib: 1048576, total: 16, free: 16}
        gpus:
          description:
            - One entry per GPU, sorted by address, with C(address), C(vendor_id), C(device_id), C(vendor_device),
              C(subsystem_vendor_id), C(subsystem_device_id), C(class), C(class_name), C(vendor_name),
              C(device_name), C(subsystem_name), C(driver), C(driver_override), C(iommu_group),
              C(iommu_group_members) (address, vendor_id, device_id, class, class_name, driver, is_bridge),
              C(companions) (other functions of the same slot with their C(kind) audio, usb, ucsi or other),
              C(boot_vga), C(numa_node), C(reset_method), C(sriov) (totalvfs, numvfs, is_vf, physfn, vfs),
              C(mdev_types), C(state), C(state_reasons), C(stuck).
            - C(quarantined), false, or the device's entry in the reset-health quarantine record
              (C(address), C(reason), C(time), C(source), C(vendor_device)) written by
              P(fleetgpu.passthrough.gpu_quarantine#module) when the device failed its reset-health check. Fleet
              placement skips a quarantined GPU whatever its C(state); C(state) itself is not changed by it.
            - C(bars), the GPU's memory BARs from sysfs C(resource) (C(index), C(bytes), C(prefetchable), C(mem64);
              I/O-port BARs and the expansion ROM left out), and C(bar_bytes), their sum - what the guest's 64-bit
              MMIO window must hold.
            - C(root_complex) (such as C(0000:00)), C(root_port) (the PCIe root port above the GPU, or null for a
              device on the root bus) and C(upstream_bridges) (every bridge from the root port down to the GPU),
              from the GPU's sysfs path.
          type: list
          elements: dict
          returned: always
          sample:
            - address: "0000:01:00.0"
              vendor_id: "10de"
              device_id: "2204"
              vendor_device: "10de:2204"
              class: "0x030000"
              class_name: VGA compatible controller
              driver: nvidia
              iommu_group: 2
              companions:
                - {address: "0000:01:00.1", kind: audio, class: "0x040300", driver: snd_hda_intel}
              boot_vga: false
              numa_node: 0
              bars:
                - {index: 0, bytes: 16777216, prefetchable: false, mem64: false}
                - {index: 1, bytes: 268435456, prefetchable: true, mem64: true}
                - {index: 3, bytes: 33554432, prefetchable: true, mem64: true}
              bar_bytes: 318767104
              root_complex: "0000:00"
              root_port: "0000:00:01.0"
              upstream_bridges: ["0000:00:01.0"]
              state: available
              state_reasons: ["0000:01:00.0 is on nvidia and its group can be handed to a VM"]
              stuck: []
              quarantined: false
        mdev_parents:
          description:
            - Every parent of mediated devices (C(/sys/class/mdev_bus)), GPU or not (the kernel's sample C(mbochs)),
              with C(parent) (a PCI address or the parent's name), C(types) (C(type) id, C(type_name) the human
              name such as C(GRID T4-4Q), C(description), C(device_api), C(available_instances)) and C(mdevs), the
              mediated devices that exist now (C(uuid), C(type), C(type_name), C(parent), C(iommu_group),
              C(held_by), C(persistent), C(collection)).
            - C(persistent) is true when mdevctl has a definition of the device (C(/etc/mdevctl.d)), C(collection)
              when P(fleetgpu.passthrough.gpu_partition#module) created it (its record in
              C(/var/lib/fleetgpu-passthrough/partition.json)); both are read below the parent of O(sysfs_root).
            - C(held_by) is who has the device's C(/dev/vfio/<group>) open - the libvirt domain name of a QEMU
              process (from its C(-name guest=) argument), or C(PID (command)) for another process - or null.
              This module does not ask libvirt; a domain that is defined but not running holds nothing here.
              P(fleetgpu.passthrough.libvirt_gpu_info#module)'s C(mdev_assignments) names the domains whose
              definitions hold each mdev, running or not; the fleet's plan and report use both.
          type: list
          elements: dict
          returned: always
          sample:
            - parent: "0000:04:00.0"
              types:
                - {type: nvidia-224, type_name: GRID T4-4Q, description: "framebuffer=4096M", device_api: vfio-pci,
                   available_instances: 3}
              mdevs:
                - {uuid: "5b4f1c9e-2f0a-5e1c-9d41-3b8e0b8a2c11", type: nvidia-224, type_name: GRID T4-4Q,
                   parent: "0000:04:00.0", iommu_group: 31, held_by: vdi01, persistent: true, collection: true}
        sriov_parents:
          description:
            - Every PCI function with C(sriov_totalvfs) greater than 0, GPU or not, with C(address), C(totalvfs),
              C(numvfs) (null when it did not answer within O(timeout)), C(driver), C(vfs) (C(address), C(driver),
              C(iommu_group), C(held_by) as for C(mdev_parents)) and C(persisted), the VF count the collection's
              udev rule applies when the PF's driver binds (null without such a rule).
          type: list
          elements: dict
          returned: always
          sample:
            - address: "0000:03:00.0"
              totalvfs: 8
              numvfs: 2
              driver: i915
              vfs:
                - {address: "0000:03:00.1", driver: vfio-pci, iommu_group: 40, held_by: null}
                - {address: "0000:03:00.2", driver: vfio-pci, iommu_group: 41, held_by: vm7}
              persisted: 2
'''

import platform

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._platform import refusal
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import common_argspec, from_params
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import gather


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            vendors=dict(type='list', elements='str', default=[]),
            addresses=dict(type='list', elements='str', default=[]),
            include_accelerators=dict(type='bool', default=False),
            **common_argspec()
        ),
        supports_check_mode=True,
    )
    params = module.params
    # not Linux (macOS): say what is and is not supported instead of "no sysfs tree"
    refused = refusal({'system': platform.system()})
    if refused:
        module.fail_json(msg=refused)
    try:
        sysfs = from_params(params)
        facts = gather(sysfs, vendors=params['vendors'], addresses=params['addresses'],
                       include_accelerators=params['include_accelerators'], timeout=sysfs.timeout)
    except FleetGpuError as exc:
        module.fail_json(**exc.result())
    module.exit_json(changed=False, ansible_facts={'gpu_passthrough': facts})


if __name__ == '__main__':
    main()
