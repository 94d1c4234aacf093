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
    command fails the task fails and the previous files are put back; commands that already ran are undone
    (C(grubby), C(kernelstub)) or run again with the previous files (C(kernel-install) for every kernel,
    C(proxmox-boot-tool)). When that too fails, the message says exactly what is left to fix by hand.
  - Refused before anything is written, with the reason, are an argument with an unbalanced double quote, one with
    a control character (a newline, a tab), and a command line longer than the kernel keeps (2048 bytes on x86,
    terminating NUL included, counting the arguments already there).
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
        C(ROOT/etc/default/grub)). For tests, chroots and images.
      - The root is compared by resolved path, so C(//) or C(/.) are the running host's C(/).
      - With another root, the bootloader's commands act on that root too, never on the running host; each runs
        inside it through C(chroot ROOT PROGRAM ...) when the root holds the program (in C(/usr/local/sbin),
        C(/usr/local/bin), C(/usr/sbin), C(/usr/bin), C(/sbin) or C(/bin)), and is not run at all otherwise; such a
        command is returned in RV(skipped_commands) with a warning.
    type: path
    default: /
  update:
    description:
      - Run the bootloader's command after changing the files (C(update-grub), C(grubby), C(kernel-install),
        C(kernelstub), C(proxmox-boot-tool refresh)).
      - With V(false) only the files are written.
    type: bool
    default: true
  undo:
    description:
      - Give back what this collection changed on the command line, and nothing else.
      - Every change the module makes is recorded in C(ROOT/var/lib/fleetgpu-passthrough/kernel_cmdline.json),
        the arguments it added that were not there before, and the host's own arguments it removed or replaced.
        An argument that was already on the command line before is never recorded, so it is never taken away.
      - With V(true) the recorded additions are removed and the displaced arguments are put back; O(remove), when
        given, limits this to the keys it names. A host the module never changed is left exactly as it is
        (no file written, no reboot required). Afterwards no file of the collection remains (drop-in, record,
        C(.fleetgpu.bak) copies).
      - Cannot be combined with O(add).
    type: bool
    default: false
  trial:
    description:
      - Boot the new command line once before it is made permanent (a boot-once trial with automatic fallback).
      - V(off) writes the change permanently, as without this option.
      - V(stage) leaves the permanent configuration as it is and adds a one-time boot entry, the default entry's
        arguments with the change and C(panic=N) (O(panic_timeout)), selected for the next boot only (GRUB through
        the managed script C(/etc/grub.d/42_fleetgpu-passthrough-trial) and C(grub-reboot), systemd-boot through
        the loader entry C(fleetgpu-passthrough-trial.conf) and C(bootctl set-oneshot)). A kernel that panics
        reboots by itself after O(panic_timeout) seconds, into the old default entry. When the running kernel
        already has the change and the trial entry is there, the host runs the trial now, C(trial.state) in RV(trial) is
        C(booted) and nothing is written. When the configuration already holds the change, nothing is staged.
      - V(commit) makes the change permanent and removes the trial entry, once the host came up on it. When the
        running kernel lacks the change, the host fell back to its previous command line; the task fails, nothing
        permanent is written and the trial entry is removed. Check mode predicts the commit of a trial that came up.
      - V(discard) removes the trial entry and its one-time selection, nothing else.
      - C(grubby), C(kernelstub) and C(proxmox-boot-tool) have no one-time boot entry here; with V(stage) the
        change is written permanently, with a warning, unless O(trial_required) is true.
    type: str
    default: 'off'
    choices: ['off', stage, commit, discard]
    version_added: 0.2.0
  trial_required:
    description:
      - With O(trial=stage), fail (writing nothing) on a bootloader that has no one-time boot entry instead of
        writing the change permanently.
    type: bool
    default: false
    version_added: 0.2.0
  panic_timeout:
    description:
      - Seconds after which a trial boot that panics reboots by itself (C(panic=N) on the trial entry only).
      - A hang that does not panic is not caught by it; a hardware watchdog is.
    type: int
    default: 10
    version_added: 0.2.0
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

- name: Try the IOMMU arguments for one boot first (the permanent configuration stays as it is)
  fleetgpu.passthrough.kernel_cmdline:
    add:
      - intel_iommu=on
    trial: stage
  register: trial

- name: Reboot into the trial entry (a panic there reboots into the old entry by itself)
  ansible.builtin.reboot:
  when: trial.trial.state == 'staged'

- name: Make them permanent once the host came up with them (fails when it fell back)
  fleetgpu.passthrough.kernel_cmdline:
    add:
      - intel_iommu=on
    trial: commit

- name: Drop a vfio-pci ids argument, whatever its value
  fleetgpu.passthrough.kernel_cmdline:
    remove:
      - vfio-pci.ids

- name: Give back the IOMMU arguments this collection added (the administrator's own stay)
  fleetgpu.passthrough.kernel_cmdline:
    undo: true
    remove:
      - intel_iommu
      - iommu
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
reboot_reasons:
  description:
    - Why a reboot is needed, one sentence each (C(the running kernel lacks ...), C(the running kernel still
      has ...)); empty when RV(reboot_required) is false.
  returned: always
  type: list
  elements: str
  sample: ["the running kernel lacks intel_iommu=on iommu=pt"]
  version_added: 0.1.0
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
  description:
    - Commands run (or that would run in check mode), as argument lists (as seen inside O(root); with a prefix
      root they run through C(chroot)).
  returned: always
  type: list
  elements: list
skipped_commands:
  description:
    - Commands not run because O(root) is another tree that does not hold the program (a prefix root never runs
      the running host's tools). Run them inside that tree yourself.
  returned: always
  type: list
  elements: list
  sample: [[update-grub]]
trial:
  description:
    - The boot-once trial (O(trial)). C(state) is C(none) (nothing to try or nothing done), C(staged) (the trial
      entry is selected for the next boot), C(booted) (the running kernel is the trial; verify, then commit),
      C(committed), C(discarded) or C(unsupported) (the bootloader has no one-time boot entry).
    - C(entry) is the trial entry's identifier, C(cmdline) its command line (when staged), C(arguments) what the
      trial changes against the configuration (a removed argument with a leading C(-)), C(supported) whether the
      bootloader has a one-time boot entry.
  returned: always
  type: dict
  sample: {mode: stage, state: staged, entry: fleetgpu-passthrough-trial, supported: true,
           cmdline: "root=UUID=0a1b ro quiet intel_iommu=on panic=10", arguments: [intel_iommu=on]}
  version_added: 0.2.0
recorded:
  description:
    - The record after this run (predicted in check mode) of what this collection changed on the command line.
    - C(added) are the arguments it added, C(displaced) the host's own arguments it removed or replaced.
  returned: always
  type: dict
  sample: {added: [intel_iommu=on], displaced: []}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._bootloader import names as bootloaders
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import common_argspec
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.kernel_cmdline import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            add=dict(type='list', elements='str', default=[]),
            remove=dict(type='list', elements='str', default=[]),
            bootloader=dict(type='str', default='auto', choices=bootloaders()),
            root=dict(type='path', default='/'),
            update=dict(type='bool', default=True),
            undo=dict(type='bool', default=False),
            trial=dict(type='str', default='off', choices=['off', 'stage', 'commit', 'discard']),
            trial_required=dict(type='bool', default=False),
            panic_timeout=dict(type='int', default=10),
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
