#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: kernel_cmdline
short_description: Manage persistent kernel arguments through the host's bootloader tooling
version_added: 0.1.0
description:
  - Adds, replaces and removes kernel command line arguments as a set. An argument is never duplicated, and
    adding C(key=value) replaces every other value of C(key), so C(intel_iommu=off) never stays next to
    C(intel_iommu=on).
  - Works through one backend per bootloader, detected from the files present on the host, in this order
    (the first match wins); O(bootloader) overrides it.
  - C(kernelstub) when C(/etc/kernelstub/configuration) exists (Pop!_OS); runs C(kernelstub --add-options/--delete-options).
  - C(proxmox-boot-tool) when C(/etc/kernel/proxmox-boot-uuids) exists; writes C(/etc/kernel/cmdline), runs
    C(proxmox-boot-tool refresh).
  - C(systemd-boot) when C(loader/loader.conf) exists under C(/boot/efi), C(/efi) or C(/boot); writes
    C(/etc/kernel/cmdline), runs C(kernel-install add) for every installed kernel.
  - C(grubby) when grubby is installed and C(/boot/loader/entries) exists (RHEL, Rocky, Alma, Fedora); runs
    C(grubby --update-kernel=ALL), keeps C(GRUB_CMDLINE_LINUX) of C(/etc/default/grub) in step and runs
    C(grub2-mkconfig --update-bls-cmdline) where that option exists (RHEL 9.3 and later).
  - C(grub) when C(/etc/default/grub) exists (Debian, Ubuntu); writes the drop-in
    C(/etc/default/grub.d/zz-fleetgpu-passthrough.cfg), which sorts after other drop-ins, and runs C(update-grub).
  - Files are replaced atomically; the previous content is kept as C(<file>.fleetgpu.bak). When the bootloader
    command fails the task fails and the previous files are put back.
  - The returned C(reboot_required) tells whether the running kernel (C(/proc/cmdline)) lacks an added argument or still has
    a removed one.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  add:
    description:
      - Arguments that must be present, each C(key) or C(key=value). C(key=value) replaces other values of C(key).
    type: list
    elements: str
    default: []
  remove:
    description:
      - Arguments that must be absent. A bare C(key) removes every value of that key; C(key=value) removes exactly
        that token.
    type: list
    elements: str
    default: []
  bootloader:
    description:
      - Bootloader backend. C(auto) detects it (see the description for the order).
    type: str
    default: auto
    choices: [auto, grub, grubby, systemd-boot, kernelstub, proxmox-boot-tool]
  root:
    description:
      - Directory prefixed to every file path the module reads or writes (C(/etc/default/grub) becomes
        C(ROOT/etc/default/grub)). For tests and chroots.
    type: path
    default: /
  update:
    description:
      - Run the bootloader's command after changing the files (C(update-grub), C(grubby), C(kernel-install),
        C(kernelstub), C(proxmox-boot-tool refresh)).
      - With V(false) only the files are written.
    type: bool
    default: true
extends_documentation_fragment:
  - fleetgpu.passthrough.sysfs
  - fleetgpu.passthrough.sysfs.ACTION_MODULE
notes:
  - C(/etc/kernel/cmdline) is read whole by kernel-install and proxmox-boot-tool and so carries no comment header.
  - When O(sysfs_root) is given, the running command line is read from its sibling C(proc/cmdline).
seealso:
  - module: fleetgpu.passthrough.vfio_host_config
'''

EXAMPLES = r'''
- name: Turn the Intel IOMMU on in passthrough mode
  fleetgpu.passthrough.kernel_cmdline:
    add:
      - intel_iommu=on
      - iommu=pt
  register: cmdline

- name: Reboot when the running kernel does not have them yet
  ansible.builtin.reboot:
  when: cmdline.reboot_required

- name: Drop a vfio-pci ids argument, whatever its value
  fleetgpu.passthrough.kernel_cmdline:
    remove:
      - vfio-pci.ids
'''

RETURN = r'''
bootloader:
  description: The backend used.
  returned: always
  type: str
  sample: grub
cmdline_before:
  description: Configured arguments of the default boot entry before the change.
  returned: always
  type: str
  sample: quiet intel_iommu=off
cmdline_after:
  description: Configured arguments after the change (predicted in check mode).
  returned: always
  type: str
  sample: quiet intel_iommu=on iommu=pt
reboot_required:
  description: The running kernel lacks an added argument or still has a removed one.
  returned: always
  type: bool
missing:
  description: Added arguments the running kernel does not have.
  returned: always
  type: list
  elements: str
lingering:
  description: Arguments of the running kernel that the change removes or replaces.
  returned: always
  type: list
  elements: str
files:
  description: Files changed (or that would change in check mode).
  returned: always
  type: list
  elements: str
commands:
  description: Commands run (or that would run in check mode), as argument lists.
  returned: always
  type: list
  elements: list
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import BootloaderError, backend
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import Change, CmdlineError, check_length, split
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._files import FileError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostcmd import CommandError, ModuleRunner
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs, SysfsError, common_argspec


def run(module: AnsibleModule) -> dict:
    params = module.params
    change = Change(params['add'], params['remove'])
    sysfs = Sysfs(params['sysfs_root'], timeout=params['timeout'])
    running = split(sysfs.cmdline())
    loader = backend(params['bootloader'], params['root'], ModuleRunner(module), params['update'], running)
    plan = loader.plan(change)
    check_length(plan.after)
    if plan.changed and not module.check_mode:
        loader.apply(plan)
    missing = change.missing(running)
    lingering = change.lingering(running)
    result = {
        'changed': plan.changed,
        'bootloader': loader.name,
        'cmdline_before': ' '.join(plan.before),
        'cmdline_after': ' '.join(plan.after),
        'reboot_required': bool(missing or lingering),
        'missing': missing,
        'lingering': lingering,
        'files': [f.path for f in plan.files if f.changed],
        'commands': plan.commands if params['update'] else [],
    }
    if module._diff:
        diffs = [{'before_header': 'kernel arguments', 'after_header': 'kernel arguments',
                  'before': ' '.join(plan.before) + '\n', 'after': ' '.join(plan.after) + '\n'}]
        diffs += [f.diff() for f in plan.files if f.changed]
        result['diff'] = diffs
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            add=dict(type='list', elements='str', default=[]),
            remove=dict(type='list', elements='str', default=[]),
            bootloader=dict(type='str', default='auto',
                            choices=['auto', 'grub', 'grubby', 'systemd-boot', 'kernelstub', 'proxmox-boot-tool']),
            root=dict(type='path', default='/'),
            update=dict(type='bool', default=True),
            **common_argspec()
        ),
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except (BootloaderError, CmdlineError, CommandError, FileError, SysfsError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
