# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: kvm_refusal
short_description: Say why KVM GPU passthrough cannot apply on a host, from facts already gathered
version_added: 0.1.0
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
description:
  - Takes a host's C(ansible_facts) and returns an empty string when nothing in them rules out VFIO passthrough
    to KVM guests, else one message that says why, what is supported and what to use instead.
  - "Refused: a host that is not Linux (C(system) C(Darwin): Metal via Venus / virtio-gpu on Apple Silicon;
    Windows: Hyper-V GPU partitioning (GPU-P) or DDA); a Linux host that is itself a guest
    (C(virtualization_role) C(guest)) of VirtualBox, Parallels, Hyper-V (C(VirtualPC)), VMware, Xen or bhyve,
    none of which lets a guest pass a device on; a CPU without C(vmx) / C(svm) (C(gpu_passthrough.host.virtualization)
    from M(fleetgpu.passthrough.gpu_facts)); a Linux host that is not a guest (C(virtualization_role) C(host)) and
    has no C(/dev/kvm) (C(virtualization_tech_host) without C(kvm))."
  - A KVM/QEMU guest and a container are not refused here, with or without C(/dev/kvm) (a QEMU test host under
    TCG passes devices to its own TCG guests); whether the guest has a virtual IOMMU is what
    M(fleetgpu.passthrough.iommu_check) finds (C(no_iommu_hardware)).
  - A fact that was not gathered is not guessed; the check it feeds is skipped.
options:
  _input:
    description: The host's C(ansible_facts).
    type: dict
    required: true
'''

EXAMPLES = r'''
- name: Refuse a host where KVM passthrough cannot apply, before any change
  ansible.builtin.assert:
    that: ansible_facts | fleetgpu.passthrough.kvm_refusal | length == 0
    fail_msg: "{{ ansible_facts | fleetgpu.passthrough.kvm_refusal }}"
'''

RETURN = r'''
_value:
  description: The refusal message, or an empty string.
  type: str
'''

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._platform import refusal


def kvm_refusal(facts: object) -> str:
    return refusal(facts)


class FilterModule:
    def filters(self) -> dict:
        return {'kvm_refusal': kvm_refusal}
