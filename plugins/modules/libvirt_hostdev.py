#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: libvirt_hostdev
short_description: Attach host PCI devices (GPUs, their companions, SR-IOV VFs) and mediated devices to libvirt domains
version_added: 0.1.0
description:
  - Adds or removes PCI C(<hostdev>) entries of a libvirt domain, in its persistent definition,
    in the running domain, or both.
  - Entries are matched by their host (source) address, so nothing is ever duplicated and a second
    run reports no change. A device that is already in the domain is not an error; removing a
    device that is not there is no change.
  - A GPU and the other functions of its host slot (HDMI/DP audio, USB-C, UCSI) are attached
    together and placed on ONE guest slot as a multifunction device, as on real hardware;
    the guest function 0 carries C(multifunction='on') and guest functions mirror host functions.
  - Refuses a device that is already in another domain's definition, naming that domain,
    unless O(allow_shared=true).
  - Partitioned GPUs - an SR-IOV virtual function is a PCI address like any other (it has no companions);
    a mediated device (vGPU, C(mdev)) is given by its UUID and becomes a
    C(<hostdev mode='subsystem' type='mdev' model='vfio-pci'>) entry, matched by that UUID.
  - Uses libvirt-python and lxml (no virsh). The persistent definition is changed by defining
    the modified domain XML (read with its secrets, so nothing is lost); running domains get
    devices by hot-plug.
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
requirements:
  - libvirt-python
  - lxml
extends_documentation_fragment:
  - fleetgpu.passthrough.sysfs
  - fleetgpu.passthrough.sysfs.ACTION_MODULE
options:
  domain:
    description: Name of the libvirt domain.
    type: str
    required: true
  uri:
    description: libvirt connection URI.
    type: str
    default: qemu:///system
  devices:
    description:
      - Host PCI addresses (C(0000:41:00.0) or C(41:00.0)) to attach or remove. An SR-IOV virtual
        function is given by its own address.
      - "A mediated device (an mdev of a vGPU type, created for example by
        M(fleetgpu.passthrough.gpu_partition)) is given as the string C(mdev:<uuid>) or as a dict
        C({mdev: <uuid>, display: <bool>}). C(display=true) writes C(display='on') (the guest's
        display is the vGPU's; libvirt needs a C(<graphics>) device in the domain for it, and the
        module refuses it without one), V(false) C(display='off'); without C(display) an entry already
        in the domain keeps its setting, and a new one gets libvirt's default (libvirt 9 turns it on in
        a domain with a C(<graphics>) device). libvirt places mdevs itself (O(guest_address), O(rom),
        O(managed) and O(companions) apply to PCI devices only). A UUID that does not exist on the host
        now is attached to the definition with a warning (the domain starts once the mdev exists)."
      - May be empty; the module then changes nothing and reports the domain's hostdevs and the
        assignments of every domain at O(uri) (useful before choosing devices).
    type: list
    elements: raw
    default: []
  state:
    description:
      - V(present) makes the devices (and their companions) hostdevs of the domain.
      - V(absent) removes them.
    type: str
    choices: [present, absent]
    default: present
  where:
    description:
      - V(config) changes the persistent definition (applies at the next start).
      - V(live) hot-plugs into, or unplugs from, the running domain only. libvirt cannot hot-plug
        a multifunction device, so each function gets its own guest slot there.
      - V(both) does both; when the domain is not running only the definition changes (with a warning).
    type: str
    choices: [config, live, both]
    default: config
  managed:
    description:
      - C(managed='yes') lets libvirt detach the device from its host driver when the domain
        starts and give it back when the domain stops.
      - The default is V(false) because of the collection's ownership rule - a device that the
        role C(vfio_host) (or the module C(vfio_bind)) keeps on C(vfio-pci) belongs to that
        configuration, and libvirt must not hand it back to the host driver when the domain
        stops. With V(false) the device must be on C(vfio-pci) before the domain starts; the
        module warns when sysfs shows another driver.
    type: bool
    default: false
  companions:
    description:
      - Also attach (or remove) the other functions of each device's host slot that exist under
        O(sysfs_root) (audio, USB, UCSI, ...). SR-IOV virtual functions and bridges are never companions.
      - With V(true) and O(state=present) every listed device must exist under O(sysfs_root).
      - For O(state=absent) the companions are the other functions of the slot found in the domain.
    type: bool
    default: true
  rom:
    description: ROM BAR options for the listed devices (not their companions).
    type: dict
    suboptions:
      file:
        description: Path of a ROM image the guest sees instead of the device's own ROM.
        type: path
      bar:
        description: Whether the device's ROM BAR is visible to the guest.
        type: bool
  guest_address:
    description:
      - Guest PCI slot for the devices, as C(DDDD:BB:SS.F) or C(BB:SS.F); only the domain, bus and
        slot are used, functions mirror the host functions. Only with devices of one host slot.
      - Without it the module reuses the guest slot of a function already in the domain, else an
        empty C(pcie-root-port) (q35), else adds a new C(pcie-root-port); on i440fx machines it takes
        the lowest free slot of bus 0.
    type: str
  allow_shared:
    description:
      - Allow a device that is already in another domain's definition (for domains that never run
        at the same time).
    type: bool
    default: false
  allow_quarantined:
    description:
      - Before a device is added to the domain (one not yet in its persistent definition; with O(where=live), every
        device), the module checks its reset health as P(fleetgpu.passthrough.gpu_quarantine#module) does (config
        space readable, vendor id not C(ffff); it never resets the device). A device that fails is quarantined
        (not in check mode) and refused.
      - A device already in the quarantine record is refused too, unless this is V(true); it is then attached with a
        warning. Use it for a record known to be stale; P(fleetgpu.passthrough.gpu_quarantine#module) with
        O(fleetgpu.passthrough.gpu_quarantine#module:state=cleared) removes the entry instead.
    type: bool
    default: false
    version_added: 0.2.0
  start:
    description: Start the domain when it is not running (after the change).
    type: bool
    default: false
  restart:
    description:
      - When the persistent definition changed and the domain is running, shut it down (ACPI,
        up to O(shutdown_timeout) seconds, then forced off) and start it again so the change applies.
    type: bool
    default: false
  define_xml:
    description:
      - The full definition of O(domain), used only when no domain of that name exists at O(uri) - it is
        defined from this XML first, then the devices are attached. An existing domain is never redefined
        from it.
      - Its C(<name>) must be O(domain). XML libvirt rejects fails the task with libvirt's reason, naming the domain.
      - In check mode the devices are planned on this definition and nothing is defined.
    type: str
    version_added: 0.1.0
  shutdown_timeout:
    description: Seconds to wait for a graceful shutdown before the domain is forced off (0 forces at once).
    type: float
    default: 120
  unplug_timeout:
    description:
      - With O(state=absent) and O(where=live) or O(where=both), seconds to wait for the running guest to
        release the devices. A live detach only asks the guest (PCIe native or ACPI PCI hot-plug); the device
        leaves the running domain when the guest OS lets it go.
      - The module reads the running domain's XML until the devices are gone from it. When they are still
        there after this time, the task fails naming the domain and the devices, with RV(unplug_pending=true);
        the request stays with the guest, so a later run waits for the same unplug.
      - V(0) reads the running domain once, right after libvirt has passed the request on. Must not be negative.
    type: float
    default: 30
    version_added: 0.2.0
  assume_vfio:
    description:
      - Addresses that an earlier task of the same run puts on C(vfio-pci). With O(managed=false) they get no
        "bound to ..., not vfio-pci" warning.
      - For check mode, where M(fleetgpu.passthrough.vfio_bind) only predicts the move; role
        P(fleetgpu.passthrough.libvirt_gpu#role) passes the prediction of role P(fleetgpu.passthrough.vfio_host#role)
        here, so a check run warns exactly as the real run does.
    type: list
    elements: str
    default: []
  wiring:
    description:
      - Wire the domain for its GPUs, from the host's topology (as M(fleetgpu.passthrough.gpu_facts)
        reports it). The GPUs are the domain's PCI hostdevs after this task (display and accelerator
        classes; all of them when none is), so the wiring follows the devices.
      - The module owns only these elements of the persistent definition and changes nothing else -
        C(cputune/vcpupin) and C(cputune/emulatorpin), C(numatune/memory), C(memoryBacking/hugepages),
        the C(pcihole64) of the root PCI controller (SeaBIOS guests) and the C(-fw_cfg) pair for
        C(opt/ovmf/X-PciMmio64Mb) in C(qemu:commandline) (UEFI guests; libvirt reserves that name in
        C(sysinfo)). The C(elements) of RV(wiring) name each one and what happened to it.
      - Only with O(state=present), and O(where=config) or O(where=both) (a running domain gets it at its
        next start, or at once with O(restart=true)).
      - Fails before any change, naming the domain and what is short, when the GPUs' NUMA node has fewer
        CPUs than the domain's vCPUs, less free memory (V(strict)), or fewer free hugepages of the size
        asked for than the domain's memory needs (pages the running domain already holds count as its own).
    type: dict
    version_added: 0.2.0
    suboptions:
      pin_cpus:
        description:
          - Pin each vCPU to a CPU of its own on the GPUs' NUMA node (the node's highest-numbered CPUs, so
            that CPU 0 keeps the host's housekeeping), and the emulator threads to the node's other CPUs.
        type: bool
        default: true
      numa_mode:
        description:
          - Bind the guest memory to the GPUs' node, V(strict) (fails to start rather than use another
            node) or V(preferred); V(none) leaves C(numatune) alone.
        type: str
        choices: [strict, preferred, none]
        default: strict
      hugepages:
        description:
          - Back the guest memory with hugepages of this size on the GPUs' node (V(2M), V(1G), or a number
            of KiB). The host must have them reserved, see role option C(vfio_host_hugepages) of role
            P(fleetgpu.passthrough.vfio_host#role).
        type: str
      mmio64:
        description:
          - Size the guest's 64-bit MMIO window from the sum of the GPUs' BARs plus a quarter, rounded up
            to a power of two and never below 32 GiB (OVMF's default). Large-BAR GPUs do not boot without it.
        type: bool
        default: true
      allow_spread:
        description:
          - Allow GPUs of several NUMA nodes in one domain; the node with the most of them gets the vCPUs
            and memory. Without it such a domain is refused.
        type: bool
        default: false
      guest_numa:
        description:
          - Mirror the GPUs' NUMA locality inside the guest - one guest NUMA cell (C(cpu/numa)) with every
            vCPU and all memory, a C(pcie-expander-bus) bound to that cell, and each GPU slot (with its
            companion functions) behind a C(pcie-root-port) of its own on that bus. The guest then sees its
            GPUs on the NUMA node of its vCPUs, as on the host.
          - Needs a q35 machine and GPUs of one host NUMA node. A root port a GPU slot leaves stays in
            the definition as a free hotplug port.
        type: bool
        default: false
notes:
  - Check mode returns the plan (RV(devices), RV(live)) and defines nothing; diff mode shows the
    persistent domain XML before and after.
seealso:
  - module: fleetgpu.passthrough.vfio_bind
  - module: fleetgpu.passthrough.gpu_facts
'''

EXAMPLES = r'''
- name: Give the GPU at 41:00.0 (and its HDMI audio 41:00.1) to the domain train01
  fleetgpu.passthrough.libvirt_hostdev:
    domain: train01
    devices: ["0000:41:00.0"]

- name: Hot-plug into the running domain and keep it in the definition
  fleetgpu.passthrough.libvirt_hostdev:
    domain: train01
    devices: ["0000:41:00.0"]
    where: both

- name: A GPU whose ROM needs a clean image, on a chosen guest slot
  fleetgpu.passthrough.libvirt_hostdev:
    domain: desktop
    devices: ["0000:81:00.0"]
    rom:
      file: /var/lib/libvirt/vbios/gpu.rom
      bar: true
    guest_address: "0000:06:00.0"

- name: Wire train01 for its GPU - vCPUs and memory on the GPU's NUMA node, a 64-bit MMIO window for its BARs
  fleetgpu.passthrough.libvirt_hostdev:
    domain: train01
    devices: ["0000:41:00.0"]
    wiring:
      numa_mode: strict
      # hugepages: 1G   # with 1 GiB pages reserved on that node (role vfio_host, vfio_host_hugepages)

- name: A vGPU (mediated device, here a headless one) for the domain vdi01; an SR-IOV VF would be listed by its address
  fleetgpu.passthrough.libvirt_hostdev:
    domain: vdi01
    devices:
      - mdev: 9d5b7c2e-58a1-4f0e-9c1d-2b1f6f0e7a31
        display: false

- name: Take the vGPU away from vdi01 (the short form of an mdev entry)
  fleetgpu.passthrough.libvirt_hostdev:
    domain: vdi01
    devices: ["mdev:9d5b7c2e-58a1-4f0e-9c1d-2b1f6f0e7a31"]
    state: absent

- name: Take the GPU away again
  fleetgpu.passthrough.libvirt_hostdev:
    domain: train01
    devices: ["0000:41:00.0"]
    state: absent

- name: Unplug it from the running domain too (where it is running), allowing the guest two minutes to release it
  fleetgpu.passthrough.libvirt_hostdev:
    domain: train01
    devices: ["0000:41:00.0"]
    state: absent
    where: both
    unplug_timeout: 120
'''

RETURN = r'''
domain:
  description: The domain name.
  returned: success
  type: str
devices:
  description: One entry per host function the module looked at (listed devices and companions), then one per mediated device.
  returned: success
  type: list
  elements: dict
  contains:
    address:
      description: Host PCI address (null for a mediated device).
      type: str
    mdev:
      description: The mediated device's UUID (only in the entries of mediated devices).
      type: str
      version_added: 0.2.0
    display:
      description: Whether the mediated device's entry has C(display='on') (only in the entries of mediated devices).
      type: bool
      version_added: 0.2.0
    action:
      description: V(added), V(updated), V(removed) or V(unchanged).
      type: str
    guest_address:
      description: Guest PCI address in the definition (null when libvirt chooses it).
      type: str
    companion_of:
      description: The listed device this function rides along with, null for listed devices.
      type: str
    detail:
      description: Why nothing was done, when that needs saying.
      type: str
  sample:
    - {address: "0000:41:00.0", action: added, guest_address: "0000:07:00.0", companion_of: null, detail: ""}
    - {address: "0000:41:00.1", action: added, guest_address: "0000:07:00.1", companion_of: "0000:41:00.0", detail: ""}
live:
  description: Hot-plug actions on the running domain (empty unless O(where) is V(live) or V(both)).
  returned: success
  type: list
  elements: dict
  sample:
    - {address: "0000:41:00.0", action: removed}
unplug_pending:
  description:
    - V(true) when a live detach was asked for but the guest had not released the devices after
      O(unplug_timeout) seconds; the task then fails, and RV(pending) lists those devices.
    - V(false) on success (a live detach returns only once the devices are gone from the running domain).
  returned: always
  type: bool
  sample: false
  version_added: 0.2.0
pending:
  description: Host PCI addresses still in the running domain when O(unplug_timeout) ran out.
  returned: when RV(unplug_pending) is true
  type: list
  elements: str
  sample: ["0000:41:00.0"]
  version_added: 0.2.0
defined:
  description: Whether the domain was (or, in check mode, would be) defined from O(define_xml).
  returned: success
  type: bool
power:
  description: V(started), V(restarted) or null.
  returned: success
  type: str
hostdevs:
  description: The PCI hostdevs of the persistent definition after the change.
  returned: success
  type: list
  elements: dict
  sample:
    - {address: "0000:41:00.0", guest_address: "0000:07:00.0", managed: false, multifunction: true, rom: null}
mdevs:
  description: The mediated-device hostdevs of the persistent definition after the change.
  returned: success
  type: list
  elements: dict
  sample:
    - {uuid: "9d5b7c2e-58a1-4f0e-9c1d-2b1f6f0e7a31", model: vfio-pci, display: true, guest_address: "0000:08:00.0"}
  version_added: 0.2.0
mdev_assignments:
  description: Mediated-device UUID -> names of the domains at O(uri) that hold it (before the change).
  returned: success
  type: dict
  sample: {"9d5b7c2e-58a1-4f0e-9c1d-2b1f6f0e7a31": ["vdi01"]}
  version_added: 0.2.0
numa_nodes:
  description: Host NUMA nodes the domain's memory is pinned to (C(<numatune>)), empty when not pinned.
  returned: success
  type: list
  elements: int
  sample: [1]
wiring:
  description:
    - The wiring written (or, in check mode, that would be written) when O(wiring) is given, else null.
    - C(node) is the GPUs' NUMA node (null on a host without NUMA information); C(vcpu_pins) maps each
      vCPU to a host CPU; C(emulator_cpus) is a CPU list; C(numatune) is C(mode) and C(nodeset);
      C(hugepages) is C(size_kib) and C(pages); C(mmio64_mib) and C(pcihole64_kib) give the 64-bit MMIO
      window; C(gpus) are the host addresses it was computed from; C(firmware) is V(efi) or V(bios);
      C(guest_numa) is null, or the guest C(cell), the C(expander_index) of its expander bus and the
      C(root_ports) (controller indexes) the GPU slots sit behind.
    - C(elements) has one entry per owned element - C(element), C(action) (V(added), V(updated),
      V(removed), V(unchanged)), C(before) and C(after) (XML).
  returned: success
  type: dict
  sample:
    node: 1
    vcpu_pins: {"0": 14, "1": 15}
    emulator_cpus: "8-13"
    numatune: {mode: strict, nodeset: "1"}
    hugepages: {size_kib: 1048576, pages: 16}
    mmio64_mib: 524288
    pcihole64_kib: 536870912
    gpus: ["0000:41:00.0"]
    firmware: bios
    elements:
      - {element: numatune/memory, action: added, before: null, after: "<memory mode=\"strict\" nodeset=\"1\"/>"}
assignments:
  description: Host PCI address -> names of the domains at O(uri) that hold it (before the change).
  returned: success
  type: dict
  sample: {"0000:41:00.0": ["train01"]}
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import (
    HAS_LXML,
    LXML_IMPORT_ERROR,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_hostdev import (
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    backend_for,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import common_argspec, from_params


def argument_spec() -> dict:
    return dict(
        domain=dict(type='str', required=True),
        uri=dict(type='str', default='qemu:///system'),
        devices=dict(type='list', elements='raw', default=[]),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        where=dict(type='str', choices=['config', 'live', 'both'], default='config'),
        managed=dict(type='bool', default=False),
        companions=dict(type='bool', default=True),
        rom=dict(type='dict', options=dict(file=dict(type='path'), bar=dict(type='bool'))),
        guest_address=dict(type='str'),
        allow_shared=dict(type='bool', default=False),
        allow_quarantined=dict(type='bool', default=False),
        start=dict(type='bool', default=False),
        restart=dict(type='bool', default=False),
        shutdown_timeout=dict(type='float', default=120.0),
        unplug_timeout=dict(type='float', default=30.0),
        assume_vfio=dict(type='list', elements='str', default=[]),
        define_xml=dict(type='str'),
        wiring=dict(type='dict', options=dict(
            pin_cpus=dict(type='bool', default=True),
            numa_mode=dict(type='str', choices=['strict', 'preferred', 'none'], default='strict'),
            hugepages=dict(type='str'),
            mmio64=dict(type='bool', default=True),
            allow_spread=dict(type='bool', default=False),
            guest_numa=dict(type='bool', default=False),
        )),
        **common_argspec()
    )


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib('libvirt-python'), exception=str(LIBVIRT_IMPORT_ERROR))
    if not HAS_LXML:
        module.fail_json(msg=missing_required_lib('lxml'), exception=str(LXML_IMPORT_ERROR))
    try:
        backend = backend_for(module.params, from_params(module.params))
        result = backend.run(module.check_mode)
    except FleetGpuError as exc:
        module.fail_json(domain=module.params['domain'], **exc.result())
    if not module._diff:
        result.pop('diff')
    for warning in backend.warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
