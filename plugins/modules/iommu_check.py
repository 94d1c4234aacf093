#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: iommu_check
short_description: Check that a host and its devices are ready for VFIO passthrough
version_added: 0.1.0
description:
  - Read-only. Reports the host's readiness for VFIO passthrough and never changes anything (C(changed) is always false).
  - "Host checks: CPU virtualization flags (C(vmx)/C(svm)), IOMMU active (groups in C(/sys/kernel/iommu_groups),
    units in C(/sys/class/iommu)), interrupt remapping (Intel: the IR bit of each DMAR unit's C(ecap); AMD: an
    IVHD unit, unless the command line turns remapping off), IOMMU tokens of the running command line and their
    contradictions (C(intel_iommu=off), both vendors' flags, values of C(amd_iommu) the kernel does not know;
    C(amd_iommu=on), which the kernel ignores, is reported as C(amd_iommu_on_ignored) with severity info),
    C(vfio-pci.ids) that also match the boot VGA device, vfio-pci
    built in, installed or loaded, C(/dev/vfio/vfio), and Secure Boot where the EFI variable can be read."
  - "Device checks, for each address in O(devices): the device exists, has an IOMMU group, and its group is
    viable: every other member is one of O(devices), a function of the same slot, a bridge or PCIe port, or
    already on vfio-pci. Offending members are named."
  - A target whose C(driver_override) does not answer within O(timeout) (a driver stuck in its probe holds the
    device lock) is reported as C(device_stuck); the read runs in a separate process, so the task does not hang.
  - Each finding has a C(name), a C(severity) (error, warning, info), a C(message) and a C(remedy).
    O(fail_on) turns the named findings into a task failure whose message lists each problem and what to do.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  devices:
    description:
      - PCI addresses of the devices to pass through (C(0000:41:00.0), or C(41:00.0) for domain 0).
    type: list
    elements: str
    default: []
  fail_on:
    description:
      - Names of findings that fail the task when found.
    type: list
    elements: str
    default: []
    choices:
      - no_virtualization
      - iommu_off
      - no_iommu_hardware
      - iommu_disabled_on_cmdline
      - cmdline_contradiction
      - cmdline_wrong_vendor
      - amd_iommu_invalid_value
      - amd_iommu_on_ignored
      - no_interrupt_remapping
      - unsafe_interrupts_allowed
      - interrupt_remapping_unknown
      - vfio_unavailable
      - vfio_not_loaded
      - no_vfio_device_node
      - secure_boot_enabled
      - device_not_found
      - no_iommu_group
      - group_not_viable
      - boot_vga
      - vfio_ids_capture_boot_vga
      - device_stuck
      - python_module_missing
      - command_missing
  allow_unsafe_interrupts:
    description:
      - Accept a host whose interrupt remapping is off. The finding C(no_interrupt_remapping) (an error) becomes
        C(unsafe_interrupts_allowed) (a warning), and the task warns that a VM given a device can then inject
        interrupts into the host.
      - VFIO itself still refuses such a host until the C(vfio_iommu_type1) module option
        C(allow_unsafe_interrupts=1) is set; the collection does not set it. Role
        P(fleetgpu.passthrough.vfio_host#role) passes this option from C(vfio_host_allow_unsafe_interrupts).
    type: bool
    default: false
  python_modules:
    description:
      - Python modules that must import in the interpreter that runs this module on the host; each one that does
        not is named in the finding C(python_module_missing) (an error).
      - The P(fleetgpu.passthrough.libvirt_gpu#role) role needs V(libvirt) (libvirt-python) and V(lxml).
    type: list
    elements: str
    default: []
    choices: [libvirt, lxml]
  commands:
    description:
      - Programs (absolute paths on the managed host) that must be there; those that are not are listed in
        RV(commands_missing) and named in the finding C(command_missing) (a warning).
      - Role P(fleetgpu.passthrough.vfio_host#role) uses it to decide, in the same read, whether to install its
        packages.
    type: list
    elements: path
    default: []
    version_added: 0.1.0
extends_documentation_fragment:
  - fleetgpu.passthrough.sysfs
  - fleetgpu.passthrough.sysfs.INFO_MODULE
seealso:
  - module: fleetgpu.passthrough.gpu_facts
  - module: fleetgpu.passthrough.kernel_cmdline
'''

EXAMPLES = r'''
- name: Check the host
  fleetgpu.passthrough.iommu_check:
  register: iommu

- name: Stop when the IOMMU is off or the GPU's group cannot be passed
  fleetgpu.passthrough.iommu_check:
    devices:
      - "0000:41:00.0"
      - "0000:41:00.1"
    fail_on: [iommu_off, no_interrupt_remapping, group_not_viable, device_not_found]

- name: Check, before any change, that libvirt_hostdev can run here
  fleetgpu.passthrough.iommu_check:
    python_modules: [libvirt, lxml]
    fail_on: [python_module_missing]

- name: Report
  ansible.builtin.debug:
    msg: "{{ iommu.findings | map(attribute='message') | list }}"
'''

RETURN = r'''
ready:
  description: True when no finding of severity C(error) was found.
  returned: always
  type: bool
  sample: true
findings:
  description: What was found, each with C(name), C(severity), C(message) and C(remedy).
  returned: always
  type: list
  elements: dict
  sample:
    - name: iommu_off
      severity: error
      message: "the IOMMU is not active: no IOMMU groups in /sys/kernel/iommu_groups and no unit in /sys/class/iommu"
      remedy: enable VT-d in the firmware setup, add intel_iommu=on to the kernel command line and reboot
host:
  description:
    - The host facts of gpu_facts (C(cpu_vendor), C(virtualization), C(iommu_enabled), C(iommu_type),
      C(interrupt_remapping), C(cmdline), C(kernel_release), C(vfio_pci_builtin)) plus C(vfio_pci_available),
      C(vfio_pci_loaded), C(dev_vfio), C(secure_boot) (bool or null), C(iommu_units) and C(iommu_groups) (count).
  returned: always
  type: dict
devices:
  description: One entry per address in O(devices) with C(address), C(exists), C(driver), C(iommu_group),
    C(group_members), C(viable), C(offending_members) and C(stuck).
  returned: always
  type: list
  elements: dict
commands_missing:
  description: The programs of O(commands) that are not on the host.
  returned: always
  type: list
  elements: str
  sample: [/usr/sbin/update-initramfs]
  version_added: 0.1.0
python_modules_missing:
  description:
    - The modules of O(python_modules) that the host's Python cannot import (also named in the finding
      C(python_module_missing)).
    - Role P(fleetgpu.passthrough.vfio_host#role) uses it to decide whether to install the distribution packages
      that provide them.
  returned: always
  type: list
  elements: str
  sample: [libvirt]
  version_added: 0.1.0
python_interpreter:
  description: The Python interpreter the module ran with on the host (the one O(python_modules) were checked for).
  returned: always
  type: str
  sample: /usr/bin/python3
  version_added: 0.1.0
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.iommu_check import (
    FINDINGS,
    CheckError,
    check,
    failure_message,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import common_argspec, from_params


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            devices=dict(type='list', elements='str', default=[]),
            fail_on=dict(type='list', elements='str', default=[], choices=sorted(FINDINGS)),
            allow_unsafe_interrupts=dict(type='bool', default=False),
            python_modules=dict(type='list', elements='str', default=[], choices=['libvirt', 'lxml']),
            commands=dict(type='list', elements='path', default=[]),
            **common_argspec()
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        sysfs = from_params(params)
        if not sysfs.isdir(sysfs.sys('bus', 'pci')):
            raise CheckError('%s is not a sysfs tree (no bus/pci): check sysfs_root' % sysfs.sys_root)
        result = check(sysfs, params['devices'], allow_unsafe_interrupts=params['allow_unsafe_interrupts'],
                       python_modules=params['python_modules'], commands=params['commands'])
    except FleetGpuError as exc:
        module.fail_json(**exc.result())
    for finding in result['findings']:
        if finding['name'] == 'unsafe_interrupts_allowed':
            module.warn('%s. To do: %s.' % (finding['message'], finding['remedy']))
    message = failure_message(result['findings'], params['fail_on'])
    if message:
        module.fail_json(msg=message, changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
