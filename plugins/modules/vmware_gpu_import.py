#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: vmware_gpu_import
short_description: Derive the fleet's VM GPU requests from VMware .vmx files and OVF descriptors (controller side)
version_added: 0.1.0
description:
  - An action plugin that reads, on the controller, VMware virtual machine files and turns their GPU
    passthrough (DirectPath I/O, dynamic DirectPath) and vGPU settings into VM requests in the shape of the
    inventory variable C(fleetgpu_vms), ready for M(fleetgpu.passthrough.fleet_plan).
  - "From a C(.vmx) file: C(displayName) and the C(pciPassthruN.*) keys C(present), C(id), C(vendorId),
    C(deviceId), C(subVendorId), C(subDeviceId), C(systemId), C(vgpu), C(allowedDevices) and C(customLabel).
    Keys are matched without regard to case; values may be double-quoted (with VMware's C(|XX) escapes),
    single-quoted or bare; ids may be hexadecimal (C(0x10de), C(10DE)), decimal or VMware's signed
    16-bit form (C(-0x7391))."
  - "From an OVF descriptor (C(.ovf)): every C(VirtualSystem) (its C(Name) or C(ovf:id)), its hardware items
    whose C(ResourceSubType) is C(vmware.pcipassthrough) or C(vmware.vgpu) (C(vmw:Config) keys C(backing.vgpu),
    C(backing.id), C(backing.vendorId), C(backing.deviceId), C(backing.subVendorId), C(backing.subDeviceId),
    C(backing.systemId)), and C(pciPassthruN.*) keys kept as C(vmw:ExtraConfig). A DTD or entity declaration
    is refused before the XML is parsed."
  - A GPU is requested by identity (vendor:device, and subsystem ids when the model gives them), through the
    fleet's model table O(models). The old host's PCI address and system id are returned as information only;
    they are never used for placement.
  - "What cannot become a request is never dropped silently: a vGPU profile (the fleet places no mediated
    devices yet) and a GPU the model table does not name make the whole VM C(pending), with the reason; a
    network or storage adapter (a DirectPath NIC), a dynamic DirectPath device given only by a custom label,
    an entry without ids and a disabled entry are C(skipped), each with file, line, key and reason."
  - A file that cannot be read or parsed fails the task with a message naming the file and the line.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  paths:
    description:
      - Files (C(.vmx), C(.ovf)) or directories, on the controller. A directory is searched recursively for
        files ending in C(.vmx) or C(.ovf) (case ignored); files are read in sorted order.
    type: list
    elements: path
    required: true
  models:
    description:
      - The fleet's GPU model table, C(fleetgpu_models) (see M(fleetgpu.passthrough.fleet_plan)). Only models
        given by C(vendor_id) + C(device_id) can match an imported device; where several match, the one with
        more matching subsystem ids wins, and a tie makes the VM pending.
      - Without it, every GPU request is pending with the reason that the fleet has no model for its vendor:device.
    type: raw
attributes:
  action:
    description: Runs on the controller as an action plugin.
    support: full
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: It only reads files; check mode gives the same result.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
notes:
  - Passthrough needs the devices on the new host; the import only says what each VM asked for.
    Placement and the checks of each host are the work of M(fleetgpu.passthrough.fleet_plan) and the roles.
  - The requests carry no C(domain_xml); fleet_plan places them only where their domain is defined already.
    See C(docs/vmware_import.md) and the playbook C(fleetgpu.passthrough.import_vmware).
seealso:
  - module: fleetgpu.passthrough.fleet_plan
'''

EXAMPLES = r'''
- name: Derive the VM requests of the exported VMs
  fleetgpu.passthrough.vmware_gpu_import:
    paths:
      - /srv/vsphere-export
    models: "{{ fleetgpu_models }}"
  register: imported
  delegate_to: localhost
  run_once: true

- name: Show what is not imported and why
  ansible.builtin.debug:
    msg: "{{ imported.pending + imported.skipped }}"

- name: Place them as a dry run
  fleetgpu.passthrough.fleet_plan:
    models: "{{ fleetgpu_models }}"
    vms: "{{ imported.vms }}"
    mode: report
  run_once: true
  delegate_to: localhost
'''

RETURN = r'''
vms:
  description: The VM requests, C(fleetgpu_vms) entries C({name, gpus}) with C(gpus) a list of C({model, count}).
  returned: success
  type: list
  elements: dict
  sample: [{name: train01, gpus: [{model: a100, count: 1}]}]
pending:
  description:
    - VMs that need GPUs the fleet cannot place yet, with C(vm), C(file), C(kind) (V(vgpu) or V(no_model)),
      C(gpus) (vGPU C({profile, count}) or the C({vendor_id, device_id}) asked for), C(whole_gpus) (the part
      that has a model), C(reason) and C(devices).
  returned: success
  type: list
  elements: dict
  sample: [{vm: vdi07, kind: vgpu, gpus: [{profile: grid_t4-4q, count: 1}], reason: "vGPU profile(s) grid_t4-4q: ..."}]
skipped:
  description: Passthrough entries that are not GPU requests, with C(vm), C(file), C(line), C(key), C(reason) and
    the ids and old host address when the file gives them.
  returned: success
  type: list
  elements: dict
  sample: [{vm: db01, file: /srv/export/db01.vmx, line: 40, key: pciPassthru1, vendor_id: "15b3", device_id: "101b",
            old_host_address: "0000:81:00.0", reason: "network / storage adapter (...), not a GPU: ..."}]
sources:
  description: Per VM, its file and every passthrough entry read (C(kind) V(gpu), V(vgpu) or V(skip)), old addresses included.
  returned: success
  type: list
  elements: dict
files:
  description: The files read, in order.
  returned: success
  type: list
  elements: str
msg:
  description: Counts of requests, pending VMs, skipped entries and files.
  returned: success
  type: str
'''
