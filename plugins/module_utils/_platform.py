# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Where KVM passthrough cannot apply: one decision over a host's facts, one message.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

:func:`refusal` reads what Ansible's fact gathering and gpu_facts already know of a host (no new
probe of the host) and returns why VFIO passthrough to KVM guests cannot work there and what to use
instead, or an empty string. Facts that were not gathered are not guessed: the check they feed is
skipped, so a role run without full facts is not refused for what it does not know.
"""

from __future__ import annotations

SUPPORTED = ('supported: a Linux host with KVM (/dev/kvm, VT-x/AMD-V) and an IOMMU, on bare metal or as a KVM/QEMU '
             'guest with a virtual IOMMU (nested VFIO)')
# hypervisors under which a Linux guest cannot pass a device on to its own guests
NESTED = {
    'virtualbox': 'VirtualBox offers its guests no supported GPU passthrough, so there is no device to pass on; '
                  'run the KVM host on bare metal',
    'parallels': 'Parallels Desktop passes no PCI device through to its guests; run the KVM host on bare metal '
                 '(on Apple Silicon: Metal via Venus / virtio-gpu gives a Linux guest GPU acceleration)',
    'virtualpc': 'a Hyper-V guest cannot pass devices on to its own guests (no nested VFIO); on the Windows host use '
                 'Hyper-V GPU partitioning (GPU-P) or Discrete Device Assignment (DDA) instead',
    'hyperv': 'a Hyper-V guest cannot pass devices on to its own guests (no nested VFIO); on the Windows host use '
              'Hyper-V GPU partitioning (GPU-P) or Discrete Device Assignment (DDA) instead',
    'vmware': 'nested passthrough is not supported under VMware: a DirectPath I/O device given to this VM cannot be '
              'passed on to its guests; run KVM on bare metal (vmware_gpu_import carries the VMs\' GPU settings over)',
    'xen': 'a Xen guest cannot pass devices on to its own guests; run KVM on bare metal or use Xen PCI passthrough',
    'bhyve': 'a bhyve guest cannot pass devices on to its own guests; run KVM on bare metal',
}
NOT_LINUX = {
    'darwin': 'macOS has neither KVM nor VFIO, so no GPU can be passed through to a VM here; on Apple Silicon a Linux '
              'guest gets GPU acceleration through Metal via Venus / virtio-gpu (paravirtualised, not passthrough)',
    'windows': 'Windows has neither KVM nor VFIO; use Hyper-V GPU partitioning (GPU-P) or Discrete Device Assignment '
               '(DDA, Windows Server) to give a VM a GPU',
    'win32nt': 'Windows has neither KVM nor VFIO; use Hyper-V GPU partitioning (GPU-P) or Discrete Device Assignment '
               '(DDA, Windows Server) to give a VM a GPU',
}


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ''


def refusal(facts: object) -> str:
    """Why this host cannot pass GPUs to KVM guests (what is supported, what to use instead), or ''."""
    if not isinstance(facts, dict):
        return ''
    system = _text(facts.get('system'))
    family = _text(facts.get('os_family'))
    reasons: list[str] = []
    if family.lower() == 'windows' and system.lower() not in NOT_LINUX:
        system = 'Windows'
    if system and system.lower() != 'linux':
        reasons.append('%s (ansible_system %s)' % (
            NOT_LINUX.get(system.lower(), 'KVM passthrough (VFIO) exists on Linux only; this host runs %s' % system),
            system))
    else:
        role = _text(facts.get('virtualization_role')).lower()
        vtype = _text(facts.get('virtualization_type'))
        if role == 'guest' and vtype.lower() in NESTED:
            reasons.append('this host is itself a %s guest: %s' % (vtype, NESTED[vtype.lower()]))
        gpu = facts.get('gpu_passthrough')
        host = gpu.get('host') if isinstance(gpu, dict) else None
        if isinstance(host, dict) and 'virtualization' in host and not host.get('virtualization'):
            reasons.append('the CPU shows no hardware virtualization (no vmx or svm flag), so KVM cannot run: enable '
                           'VT-x / AMD-V in the firmware setup (or, in a VM, nested virtualization)')
        tech = facts.get('virtualization_tech_host')
        # a guest is exempt: the collection's QEMU test hosts are TCG guests without /dev/kvm whose own VMs run
        # with passthrough under QEMU's TCG (domain type qemu); a container shares its host's kernel
        if system.lower() == 'linux' and role not in ('guest', '') and isinstance(tech, list) \
                and not any(str(t).lower() == 'kvm' for t in tech):
            reasons.append('there is no /dev/kvm, so no KVM guest can run: load kvm_intel or kvm_amd (and enable '
                           'VT-x / AMD-V in the firmware setup)')
    if not reasons:
        return ''
    return 'KVM GPU passthrough cannot apply on this host: %s. %s.' % ('; '.join(reasons), SUPPORTED)
