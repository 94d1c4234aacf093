# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Which domains of a libvirt_gpu plan libvirt_hostdev may change, judged from one libvirt_gpu_info read.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Role libvirt_gpu reads every domain once (libvirt_gpu_info) and runs libvirt_hostdev only for the
domains this module cannot prove settled.  The judgement errs one way only: a domain is "settled"
when libvirt_hostdev, given the role's arguments, would certainly change nothing (so skipping it
changes no result, in check mode or not); anything else - a wiring to compare, a live change, a
domain to start or define, a hostdev whose settings differ - is left to libvirt_hostdev, which
decides exactly.  The functions compared are a superset of those libvirt_hostdev adds for a GPU:
the GPU, the other GPU and companion functions of its slot that gpu_facts lists.
"""

from __future__ import annotations

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress, PciAddressError


def pending(plan: list[dict], info: dict, facts: dict, state: str = 'present', where: str = 'config',
            managed: bool = False, companions: bool = True) -> list[dict]:
    """The entries of ``plan`` (gpu_placement's result) that libvirt_hostdev may change, in plan order."""
    domains = {str(d.get('name')): d for d in (info or {}).get('domains') or [] if isinstance(d, dict)}
    functions = _slot_functions(facts or {})
    return [item for item in plan or []
            if not _settled(item, domains.get(str(item.get('name'))), functions, state, where, managed, companions)]


def _slot_functions(facts: dict) -> dict[tuple[int, int, int], set[PciAddress]]:
    """Host slot -> every function gpu_facts lists there (GPUs and their companions)."""
    out: dict[tuple[int, int, int], set[PciAddress]] = {}
    for gpu in facts.get('gpus') or []:
        for entry in [gpu] + list(gpu.get('companions') or []):
            try:
                addr = PciAddress.parse(str(entry.get('address')))
            except PciAddressError:
                continue
            out.setdefault(addr.slot_key, set()).add(addr)
    return out


def _settled(item: dict, dom: dict | None, functions: dict[tuple[int, int, int], set[PciAddress]], state: str,
             where: str, managed: bool, companions: bool) -> bool:
    if dom is None or not dom.get('persistent'):
        return False  # to define from its domain_xml, or transient: libvirt_hostdev decides (or says why not)
    try:
        devices = [PciAddress.parse(str(text)) for text in item.get('devices') or []]
    except PciAddressError:
        return False
    if state == 'absent':
        return not devices  # nothing of this domain to give back
    if item.get('binding') == 'dynamic':
        managed = companions = True  # libvirt moves the whole group: every function, managed (role libvirt_gpu)
    if item.get('wiring') or where != 'config' or (item.get('start') and not dom.get('active')):
        return False
    wanted: set[PciAddress] = set(devices)
    if companions:
        for addr in devices:
            known = functions.get(addr.slot_key)
            if not known or addr not in known:
                return False  # gpu_facts does not show the slot: cannot know its companions
            wanted |= known
    config: dict[PciAddress, dict] = {}
    for hostdev in dom.get('config_hostdevs') or []:
        try:
            config[PciAddress.parse(str(hostdev.get('address')))] = hostdev
        except PciAddressError:
            return False
    for addr in wanted:
        hostdev = config.get(addr)
        if hostdev is None or bool(hostdev.get('managed')) != managed or not hostdev.get('guest_address'):
            return False
    for key in {a.slot_key for a in wanted}:
        in_slot = [a for a in config if a.slot_key == key]
        if len(in_slot) > 1 and not _multifunction_marked(config, in_slot):
            return False
    return True


def _multifunction_marked(config: dict[PciAddress, dict], in_slot: list[PciAddress]) -> bool:
    """A slot of several functions: libvirt_hostdev marks function 0 of the guest slot multifunction."""
    for addr in in_slot:
        guest = PciAddress.parse(str(config[addr].get('guest_address')))
        if guest.function == 0 and not config[addr].get('multifunction'):
            return False
    return True
