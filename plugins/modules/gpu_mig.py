#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: gpu_mig
short_description: Lay out NVIDIA MIG instances on GPUs from a declared layout, persisted across reboots
version_added: 0.3.0
description:
  - Gives each listed NVIDIA GPU a MIG (Multi-Instance GPU) layout - MIG mode on and GPU instances of the profiles
    asked for (C(1g.10gb) x 2, C(3g.40gb)...), each with its default compute instance - through C(nvidia-smi), called
    with argument lists, never through a shell. The vGPU types of those instances are then offered as mediated device
    types, which P(fleetgpu.passthrough.gpu_partition#module) creates and the fleet places like any other
    (C(fleetgpu_vms[].gpus[].profile)).
  - "Reads first: C(nvidia-smi --query-gpu=index,pci.bus_id,name,mig.mode.current,mig.mode.pending), then per GPU
    C(nvidia-smi mig -i IDX -lgip) (the profiles, checked against the layout), C(-lgi) and C(-lci) (the instances there
    are). A GPU whose instances already match the layout (same profiles, in any order, each with a compute instance)
    is left alone. Otherwise C(nvidia-smi -i IDX -mig 1) when MIG mode is off, C(nvidia-smi mig -i IDX -dci) and
    C(-dgi) when instances exist, and C(nvidia-smi mig -i IDX -cgi PROFILES -C) (largest instances first)."
  - A GPU's layout is replaced as a whole; nvidia-smi refuses to destroy an instance in use (a running VM's vGPU),
    and the task then fails with its message. Other GPUs are not touched.
  - "Persistence (O(persist=true)): the layouts of every GPU the module manages are kept in
    C(ROOT/etc/fleetgpu-passthrough/mig-layout.json) and re-applied at boot by a collection-managed oneshot unit,
    C(ROOT/etc/systemd/system/fleetgpu-mig.service) (enabled through its C(multi-user.target.wants) link), ordered
    before C(nvidia-vgpud), C(nvidia-vgpu-mgr) and C(libvirtd), so the vGPU types exist when they start. The unit
    names each GPU by its PCI bus id, not its index."
  - With O(state=absent), the listed GPUs lose their instances and MIG mode, and leave the persisted layout; the unit
    and the layout file go when no GPU is left in it.
  - Check mode runs only the read commands and returns the commands it would run and the files it would write;
    diff mode shows the layout before and after and the files.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  gpus:
    description: The GPUs and their layouts.
    type: list
    elements: dict
    required: true
    suboptions:
      gpu:
        description: The GPU, by its nvidia-smi index (C(0)) or its PCI address (C(0000:41:00.0), or C(41:00.0)).
        type: raw
        required: true
      instances:
        description:
          - The GPU instances it gets, each with its default compute instance. Empty with O(state=present) - MIG mode
            on, no instance.
          - A profile the GPU does not offer, more instances of one profile than it holds, or a layout over its compute
            slices fails before anything is changed, listing the GPU's profiles. Other combinations the hardware cannot
            place are refused by nvidia-smi when the instances are created.
        type: list
        elements: dict
        default: []
        suboptions:
          profile:
            description: A GPU instance profile by name (C(1g.10gb), C(MIG 1g.10gb)) or numeric id (C(19)), as
              C(nvidia-smi mig -lgip) lists them.
            type: str
            required: true
          count:
            description: How many instances of it.
            type: int
            default: 1
  state:
    description: V(present) lays the instances out; V(absent) removes them and turns MIG mode off.
    type: str
    choices: [present, absent]
    default: present
  persist:
    description: Keep the layout across reboots (the unit C(fleetgpu-mig.service) and its layout file).
    type: bool
    default: true
  nvidia_smi:
    description: Path of C(nvidia-smi). Default, found in C(PATH) and the sbin directories; when it is not there the
      task fails saying so (MIG needs the NVIDIA driver and its tools).
    type: path
  root:
    description: Root of the host's file system for the persisted files (tests, images). nvidia-smi always runs on
      the host the module runs on.
    type: path
    default: /
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
notes:
  - Without NVIDIA hardware in the project's test machines, this module is tested against a recorded command interface
    - a fake C(nvidia-smi) written for the tests that keeps its state in a directory and prints the tool's documented
    output formats - not against a real GPU.
  - When nvidia-smi leaves MIG mode pending (a process still uses the GPU), the module warns, returns
    RV(reboot_required) and creates the instances at the next boot through the unit.
seealso:
  - module: fleetgpu.passthrough.gpu_partition
  - module: fleetgpu.passthrough.gpu_facts
'''

EXAMPLES = r'''
- name: Two 3g.40gb instances on the first GPU, seven 1g.10gb on the second, kept across reboots
  fleetgpu.passthrough.gpu_mig:
    gpus:
      - gpu: 0
        instances:
          - {profile: 3g.40gb, count: 2}
      - gpu: "0000:c1:00.0"
        instances:
          - {profile: 1g.10gb, count: 7}
  register: mig

- name: Show the instances of each GPU
  ansible.builtin.debug:
    msg: "{{ mig.gpus | map(attribute='layout') | list }}"

- name: Give the first GPU back as a whole GPU (no instances, MIG mode off)
  fleetgpu.passthrough.gpu_mig:
    gpus:
      - gpu: 0
    state: absent
'''

RETURN = r'''
gpus:
  description: Per listed GPU, its index, PCI bus id, name, MIG state, layout and GPU instances (after the change).
  type: list
  elements: dict
  returned: always
  sample:
    - index: 0
      bus_id: "00000000:41:00.0"
      name: NVIDIA A100 80GB PCIe
      mig: enabled
      layout: [3g.40gb, 3g.40gb]
      instances:
        - {gi_id: 1, profile: 3g.40gb, profile_id: 9, placement: "0:4", compute_instances: [0]}
commands:
  description: The nvidia-smi argument lists run (or, in check mode, to run).
  type: list
  elements: list
  returned: always
  sample: [["/usr/bin/nvidia-smi", "mig", "-i", "0", "-cgi", "3g.40gb,3g.40gb", "-C"]]
files:
  description: The files written or removed (the layout, the unit, its wants link).
  type: list
  elements: str
  returned: always
unit:
  description: The systemd unit that re-applies the layout at boot, null when none is needed.
  type: str
  returned: always
  sample: fleetgpu-mig.service
reboot_required:
  description: True when MIG mode stays pending until a GPU reset or a reboot.
  type: bool
  returned: always
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_mig import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            gpus=dict(type='list', elements='dict', required=True, options=dict(
                gpu=dict(type='raw', required=True),
                instances=dict(type='list', elements='dict', default=[], options=dict(
                    profile=dict(type='str', required=True),
                    count=dict(type='int', default=1),
                )),
            )),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            persist=dict(type='bool', default=True),
            nvidia_smi=dict(type='path'),
            root=dict(type='path', default='/'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    smi = params['nvidia_smi'] or module.get_bin_path('nvidia-smi')
    if params['nvidia_smi'] and not module.get_bin_path(params['nvidia_smi']):
        module.fail_json(msg='nvidia_smi: %s is not an executable file' % params['nvidia_smi'])
    systemctl = module.get_bin_path('systemctl') if module.params['root'] in ('/', '//') else None

    def run_cmd(argv: list) -> tuple:
        return module.run_command(argv, environ_update={'LANG': 'C', 'LC_ALL': 'C'})

    def reload() -> None:
        if systemctl:
            module.run_command([systemctl, 'daemon-reload'])
    try:
        result, warnings = run(run_cmd, smi, params['gpus'], params['state'], params['persist'], params['root'],
                               module.check_mode, module._diff, reload)
    except FleetGpuError as exc:
        module.fail_json(**exc.result())
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
