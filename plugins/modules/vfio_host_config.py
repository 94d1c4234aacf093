#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: vfio_host_config
short_description: Make a host's choice of GPUs for vfio-pci survive a reboot (modprobe.d, initramfs)
version_added: 0.1.0
description:
  - Resolves the selected GPUs from the facts of M(fleetgpu.passthrough.gpu_facts) and the selectors, then decides
    how they are bound early at boot.
  - When every PCI function of a vendor:device on the host is selected, C(options vfio-pci ids=) in modprobe.d
    (the kernel arguments to put on the command line are returned instead when vfio-pci is built into the kernel).
    Otherwise the functions are listed in C(/etc/fleetgpu-passthrough/vfio-pci-addresses) and an early-boot script in
    the initramfs writes C(vfio-pci) into their C(driver_override) before udev loads any host driver, so an identical
    card kept by the host keeps its driver.
  - "Writes C(softdep <driver> pre: vfio-pci) lines for the host drivers of the selected functions and their vendors
    (nouveau, nvidia, amdgpu, radeon, snd_hda_intel, xhci_pci), C(blacklist) lines only for drivers named in
    O(blacklist) (refused while a device that is not selected still uses that driver), and
    C(/etc/modules-load.d/fleetgpu-passthrough.conf) with C(vfio), C(vfio_iommu_type1), C(vfio_pci)."
  - Installs the generator's hook and early script (initramfs-tools, dracut, mkinitcpio), rebuilds the images, and
    lists the running kernel's image to verify that vfio-pci and the configuration are inside. A failed rebuild
    restores the previous files and fails; an image that lacks them fails the task.
  - Every file starts with a header saying it is managed by fleetgpu.passthrough, is replaced atomically with the
    previous version kept as C(<file>.fleetgpu.bak), and is mode 0644 (0755 for the scripts the generator runs).
  - Returns the kernel arguments the host needs (C(cmdline_add), C(cmdline_remove)) for
    M(fleetgpu.passthrough.kernel_cmdline).
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  state:
    description:
      - V(present) writes the configuration; V(absent) removes every file this module writes and rebuilds the initramfs.
    type: str
    default: present
    choices: [present, absent]
  facts:
    description:
      - The C(gpu_passthrough) facts of M(fleetgpu.passthrough.gpu_facts). Required with O(state=present).
      - Their shape is checked; an error names the path of the bad element (C(facts.gpus[0].address is missing)).
    type: dict
  devices:
    description:
      - Selectors. Each has exactly one of C(address), C(vendor_id) with C(device_id) (optionally
        C(subsystem_vendor_id), C(subsystem_device_id)), C(name) or C(name_regex); and C(count), a whole number or
        C(all) (default 1 for an address, C(all) otherwise; C(1.9) is refused, not truncated). Companion functions
        (HDMI audio, USB-C) go with their GPU.
      - C(name) is a literal, case-insensitive substring of the text made of the vendor, device and subsystem
        names, C(vendor:device) and the class name (C(RTX 4090), C(10de:2684)).
      - C(name_regex) is a regular expression (case-insensitive) on the same text. It is refused when it could take
        exponential time (an unbounded repeat of a group that holds a repeat or alternatives, like C((.*.*)*) or
        C((a+)+); more than 4 unbounded repeats; back-references) or is longer than 200 characters; the text is cut
        to 512 characters.
      - The same GPU selected again by an entry that asks for a number of GPUs (an address listed twice) is refused
        as a duplicate.
    type: list
    elements: dict
    default: []
  dynamic_devices:
    description:
      - PCI addresses (C(DDDD:BB:SS.F) or C(BB:SS.F)) of GPUs that stay on their host driver - the GPUs of libvirt
        domains with C(binding) V(dynamic) (role P(fleetgpu.passthrough.libvirt_gpu#role)), which libvirt moves to
        vfio-pci when the domain starts and back when it stops. No selector of O(devices) selects them, so they get
        no early binding; an C(address) selector naming one is refused.
      - With them, O(devices) may be empty - the host then gets the kernel arguments (the IOMMU) and no early binding.
    type: list
    elements: str
    default: []
  allow_boot_vga:
    description: Allow selecting the GPU that shows the host console.
    type: bool
    default: false
  iommu_pt:
    description: Return C(iommu=pt) among the kernel arguments to add.
    type: bool
    default: true
  blacklist:
    description:
      - Host drivers (kernel module names) to blacklist. Refused while a device that is not selected still uses one.
      - Each must be a module name (letters, digits, C(_), C(-), at most 64). A space or a newline is refused,
        since it would write a malformed or an extra modprobe.d line.
    type: list
    elements: str
    default: []
  initramfs:
    description:
      - initramfs generator. V(auto) detects it (mkinitcpio, dracut, initramfs-tools, in that order).
        V(none) writes only modprobe.d and modules-load.d.
    type: str
    default: auto
    choices: [auto, initramfs-tools, dracut, mkinitcpio, none]
  kernel_release:
    description:
      - Kernel whose image is verified. Default the running one (from the facts or procfs).
      - When given it must be installed under O(root) (C(/lib/modules/<release>) exists); otherwise the task fails
        before anything is written.
    type: str
  root:
    description:
      - Directory prefixed to every file path (tests, chroots, images). Compared by resolved path, so C(//) or
        C(/.) are the running host's C(/).
      - With another root the initramfs commands act on that root too, never on the running host; each runs inside
        it through C(chroot ROOT PROGRAM ...) when the root holds the program, and is not run at all otherwise
        (returned in RV(skipped_commands), with a warning; the image is then not verified either).
    type: path
    default: /
  update:
    description: Rebuild and verify the initramfs. With V(false) only the files are written.
    type: bool
    default: true
extends_documentation_fragment:
  - fleetgpu.passthrough.sysfs
  - fleetgpu.passthrough.sysfs.ACTION_MODULE
seealso:
  - module: fleetgpu.passthrough.kernel_cmdline
  - module: fleetgpu.passthrough.gpu_facts
'''

EXAMPLES = r'''
- name: Read the GPUs
  fleetgpu.passthrough.gpu_facts:

- name: Persist vfio-pci for the two Tesla P4 cards (the console stays on the BMC's graphics)
  fleetgpu.passthrough.vfio_host_config:
    facts: "{{ ansible_facts.gpu_passthrough }}"
    devices:
      - vendor_id: "10de"
        device_id: "1bb3"
        count: 2
  register: vfio_cfg

- name: Put the kernel arguments in place
  fleetgpu.passthrough.kernel_cmdline:
    add: "{{ vfio_cfg.cmdline_add }}"
    remove: "{{ vfio_cfg.cmdline_remove }}"
'''

RETURN = r'''
selected:
  description: The selected GPUs, as in the facts.
  returned: state=present, or state=absent with O(facts) and O(devices)
  type: list
  elements: dict
bind:
  description: Functions to bind to vfio-pci (the GPUs and their companions), with their current driver.
  returned: state=present, or state=absent with O(facts) and O(devices)
  type: list
  elements: dict
ids:
  description: vendor:device pairs bound by C(vfio-pci ids=).
  returned: always
  type: list
  elements: str
addresses:
  description: Functions bound at boot by address (C(driver_override)).
  returned: always
  type: list
  elements: str
softdeps:
  description: Modules ordered after vfio-pci.
  returned: always
  type: list
  elements: str
cmdline_add:
  description: Kernel arguments the host needs.
  returned: always
  type: list
  elements: str
  sample: [intel_iommu=on, iommu=pt]
cmdline_remove:
  description: Kernel arguments the host must not have (with state=absent, the ones this collection adds).
  returned: always
  type: list
  elements: str
initramfs:
  description: The generator used, or C(none).
  returned: always
  type: str
rebuild:
  description: Whether the initramfs was (or in check mode would be) rebuilt, and why.
  returned: always
  type: str
files:
  description: Files changed (or that would change in check mode).
  returned: always
  type: list
  elements: str
commands:
  description: Commands run (or that would run), as argument lists (paths as seen inside O(root)).
  returned: always
  type: list
  elements: list
skipped_commands:
  description: Commands not run because O(root) is another tree that does not hold the program.
  returned: always
  type: list
  elements: list
  sample: [[update-initramfs, -u, -k, all]]
verified_unchanged:
  description:
    - Images not listed again this run because a real run of this module found them good and they have not
      changed since (same inode, size, modification and change times, same expectations). The record is
      C(ROOT/var/lib/fleetgpu-passthrough/initramfs_verified.json); O(state=absent) removes it.
  returned: always
  type: list
  elements: str
  sample: [/boot/initrd.img-6.1.0-27-amd64]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._initramfs import names as generators
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import common_argspec
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.vfio_host_config import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', default='present', choices=['present', 'absent']),
            facts=dict(type='dict'),
            devices=dict(type='list', elements='dict', default=[]),
            dynamic_devices=dict(type='list', elements='str', default=[]),
            allow_boot_vga=dict(type='bool', default=False),
            iommu_pt=dict(type='bool', default=True),
            blacklist=dict(type='list', elements='str', default=[]),
            initramfs=dict(type='str', default='auto', choices=generators()),
            kernel_release=dict(type='str'),
            root=dict(type='path', default='/'),
            update=dict(type='bool', default=True),
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
