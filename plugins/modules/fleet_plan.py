#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: fleet_plan
short_description: Place VM GPU requests across the fleet, detect drift, write the fleet report (controller side)
version_added: 0.1.0
description:
  - An action plugin that runs on the controller, once, after every GPU host has run
    M(fleetgpu.passthrough.gpu_facts) and M(fleetgpu.passthrough.libvirt_gpu_info) in the same play
    (registered as O(facts_result) and O(libvirt_result)). It reads those results from C(hostvars).
  - Validates the named GPU models (O(models), the inventory variable C(fleetgpu_models)) and the VM requests
    (O(vms), C(fleetgpu_vms)); every malformed or contradictory input fails the task with a message naming it.
  - Matches every GPU of every host to at most one model and checks each per-host mapping of a model against
    what the host really has (ids, IOMMU group); a missing or changed card is drift, and the model is refused
    on that host.
  - Places the requests. Existing assignments (read from libvirt) are kept and never moved; the other
    requests go, in list order, to the host chosen by O(policy) among the hosts that fit (capacity, NUMA
    policy, pin, drift, libvirt present, domain defined there or C(domain_xml) given). Within a host GPUs
    already on vfio-pci come first. The boot GPU, GPUs in use, stuck, without a viable IOMMU group or held by
    another domain are never given; the boot GPU is given only on hosts where C(vfio_host_allow_boot_vga) is true.
  - With O(mode=place), any request that cannot be placed fails the task (use it with C(run_once) and
    C(any_errors_fatal) before the rolling converge) with, per request, a table of every host, its free GPUs
    per model and why it was rejected. With O(mode=report) nothing fails; problems are written to the report.
  - Sets the fact C(fleetgpu_plan) on every host of the play (C(hosts) - per host C(vfio_host_devices),
    C(libvirt_gpu_domains) and C(vms) -, C(placement) and C(policy)) and the C(set_stats) artifact
    C(fleetgpu_placement), a list of C({vm, host, model, devices}).
  - Writes C(fleet-report.json) and a self-contained C(fleet-report.html) (no script, no network fetch)
    into O(report_dir) on the controller, each only when its content changed.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  models:
    description:
      - Model name -> identity. Identity is exactly one of C(vendor_id) + C(device_id) (optionally
        C(subsystem_vendor_id), C(subsystem_device_id)), C(name) (the exact PCI device name as gpu_facts
        reports it, or vendor and device name; compared literally, case-insensitively) or C(name_regex).
      - Optional C(hosts), host -> list of PCI addresses. A model with C(hosts) exists only at those addresses,
        and each is checked against the identity and its IOMMU group (drift).
      - Optional C(description).
    type: raw
  vms:
    description:
      - The VM requests, each C(name) (the libvirt domain name, unique), C(gpus) (list of C({model, count}) for whole
        GPUs, or C({profile, count}) for mediated devices (vGPU) of a type - see below),
        C(numa) (V(required) - all GPUs on one host NUMA node, V(preferred) (default), V(any)), optional C(host)
        (pin), optional C(domain_xml) (its definition, used on the chosen host when the domain does not exist
        there), C(start) (bool), C(mode) (V(whole), the default, or V(partition)), optional C(wiring) (the
        option of M(fleetgpu.passthrough.libvirt_hostdev), passed to the chosen host; unknown keys are refused),
        optional C(binding) (V(static), the default - the GPUs stay on vfio-pci; V(dynamic) - they stay on their
        host driver, out of the host's C(vfio_host_devices) and in its C(vfio_host_dynamic_devices), and libvirt
        moves them when the VM starts and stops).
      - A C(gpus) entry C({profile, count}) asks for C(count) mediated devices of one type - its id (C(nvidia-222),
        C(mbochs-2)) or its human name (C(GRID T4-4Q)), compared case-insensitively - on any mdev parent of one
        host (the C(mdev_parents) that M(fleetgpu.passthrough.gpu_facts) reports). Placement counts each parent's
        C(available_instances) per type and never gives a parent more than it has across the VMs of one plan; once
        the plan gives a parent one type, its other types count as none free there (types share the parent). With
        V(spread) a VM's mdevs go to the parents with the most free instances, with V(pack) to the fullest that still
        has room. NUMA does not apply to them.
      - Each mdev gets a stable UUID, derived from the parent, the type id and C(<vm>-<n>); a later run finds the
        VM's mdevs by it (or by its domain holding them, running or in its definition), keeps them and anchors the
        VM to its host. The host's part of the plan lists them as C(mdevs) of the VM (C({parent, type, uuid, name})); role
        P(fleetgpu.passthrough.libvirt_gpu#role) creates them with M(fleetgpu.passthrough.gpu_partition) and attaches
        them. A profile that no parent of the fleet offers fails with O(mode=place), listing the types offered.
      - A V(partition) request that asks by C(model) is never placed, and never as whole GPUs; it is unplaced with the
        reason (ask by C(profile) instead).
    type: raw
  policy:
    description:
      - V(spread) puts a new VM on the fitting host with the most free pool GPUs (performance);
        V(pack) on the one with the fewest (consolidation). Ties go to the host name.
    type: str
    default: spread
  report_dir:
    description:
      - Controller directory for C(fleet-report.json) and C(fleet-report.html); no report without it.
      - A relative path is relative to the directory C(ansible-playbook) runs in.
    type: path
  mode:
    description: V(place) fails on bad input and on requests that cannot be placed; V(report) only reports.
    type: str
    choices: [place, report]
    default: place
  hosts:
    description: The hosts to consider. Defaults to C(ansible_play_hosts_all), so failed and unreachable hosts are reported.
    type: list
    elements: str
  facts_result:
    description: Name of the variable the gpu_facts task registered on each host.
    type: str
    default: fleetgpu_gpu_facts
  libvirt_result:
    description: Name of the variable the libvirt_gpu_info task registered on each host.
    type: str
    default: fleetgpu_libvirt_info
  check_result:
    description: Name of the variable an iommu_check task registered on each host (its findings go to the report); optional.
    type: str
    default: fleetgpu_iommu_check
attributes:
  action:
    description: Runs on the controller as an action plugin.
    support: full
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: In check mode the plan is computed and published but the report files are not written.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
notes:
  - Passthrough VMs do not live-migrate; a VM that already holds GPUs stays on its host. To move one, remove its
    GPUs (C(restore.yml) or role C(libvirt_gpu) with C(libvirt_gpu_state=absent)) first.
seealso:
  - module: fleetgpu.passthrough.libvirt_gpu_info
  - module: fleetgpu.passthrough.gpu_facts
'''

EXAMPLES = r'''
- name: Place the VM requests over every host of the play (fails before any change when one does not fit)
  fleetgpu.passthrough.fleet_plan:
    models:
      a100: {vendor_id: "10de", device_id: "20b2"}
      p4: {name: "GP104GL [Tesla P4]"}
    vms:
      - {name: train01, gpus: [{model: a100, count: 2}], numa: required, start: true}
      - {name: infer01, gpus: [{model: p4, count: 1}], domain_xml: "{{ lookup('template', 'infer01.xml.j2') }}"}
    policy: spread
    report_dir: "{{ playbook_dir }}/reports"
  run_once: true
  delegate_to: localhost
'''

RETURN = r'''
placement:
  description:
    - One entry per VM and model (C(devices) are PCI addresses) or per VM and profile (C(profile); C(devices) are the
      mdev UUIDs, C(mdevs) their parent, type, UUID and name).
  returned: always
  type: list
  elements: dict
  sample: [{vm: train01, host: node1, model: a100, devices: ["0000:13:00.0", "0000:14:00.0"]},
           {vm: vdi01, host: node2, profile: "GRID T4-2Q", devices: ["8d6a3f0e-6c41-5d0e-9b1c-0e6a2b9f4c11"],
            mdevs: [{parent: "0000:41:00.0", type: nvidia-223, uuid: "8d6a3f0e-6c41-5d0e-9b1c-0e6a2b9f4c11", name: vdi01-1}]}]
hosts:
  description:
    - Per host, C(vfio_host_devices) (its pool GPUs), C(libvirt_gpu_domains) (its placed VMs, each with C(gpus) for
      whole GPUs and C(mdevs) for mediated devices) and C(vms).
  returned: always
  type: dict
drift:
  description: Host -> drift messages.
  returned: always
  type: dict
unplaced:
  description: The requests that could not be placed, with per-host reasons.
  returned: always
  type: list
  elements: dict
errors:
  description: Model problems found in O(mode=report) (in O(mode=place) they fail the task).
  returned: always
  type: list
  elements: str
summary:
  description: Host, GPU and VM counts; failed and unreachable hosts by name.
  returned: always
  type: dict
report:
  description: Paths of the report files (C(json), C(html)), null in check mode.
  returned: when O(report_dir) is set
  type: dict
report_msg:
  description: Where the report is.
  returned: when O(report_dir) is set
  type: str
'''
