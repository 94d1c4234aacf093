# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The iommu_check engine: is this host ready for VFIO passthrough?

PRIVATE to the fleetgpu.passthrough collection: not a public API.

:func:`check` reads the host (CPU flags, IOMMU units and groups, interrupt
remapping, the running command line, vfio modules, ``/dev/vfio/vfio``,
Secure Boot) and, for a list of target devices, their groups, and returns
``findings``: ``{name, severity, message, remedy}``.  Nothing is written.
"""

from __future__ import annotations

import importlib
import os
import sys

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.gpu_facts import (
    FactsError,
    host_facts,
    module_is_builtin,
    modules_builtin,
    parse_addresses,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._iommu import (
    HostIommu,
    cmdline_values,
    describe,
    offending_members,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import (
    PciAddress,
    PciDevice,
    class_name,
    list_addresses,
    read_locked_attributes,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs

EFI_GLOBAL_GUID = '8be4df61-93ca-11d2-aa0d-00e098032b8c'

# Valid values of amd_iommu= (kernel-parameters documentation).
AMD_IOMMU_VALUES = ('fullflush', 'off', 'force_enable', 'force_isolation', 'pgtbl_v1', 'pgtbl_v2',
                    'irtcachedis', 'nohugepages', 'v2_pgsizes_only')

# ACPI tables that describe an IOMMU: Intel VT-d (DMAR), AMD-Vi (IVRS), Arm SMMU (IORT), VIOT.
ACPI_IOMMU_TABLES = ('DMAR', 'IVRS', 'IORT', 'VIOT')

ERROR = 'error'
WARNING = 'warning'
INFO = 'info'

# Every finding this module can report, with its severity.
FINDINGS = {
    'no_virtualization': ERROR,
    'iommu_off': ERROR,
    'no_iommu_hardware': ERROR,
    'iommu_disabled_on_cmdline': ERROR,
    'cmdline_contradiction': WARNING,
    'cmdline_wrong_vendor': WARNING,
    'amd_iommu_invalid_value': WARNING,
    'amd_iommu_on_ignored': INFO,
    'no_interrupt_remapping': ERROR,
    'unsafe_interrupts_allowed': WARNING,
    'interrupt_remapping_unknown': WARNING,
    'vfio_unavailable': ERROR,
    'vfio_not_loaded': INFO,
    'no_vfio_device_node': WARNING,
    'secure_boot_enabled': INFO,
    'device_not_found': ERROR,
    'no_iommu_group': ERROR,
    'group_not_viable': ERROR,
    'boot_vga': WARNING,
    'vfio_ids_capture_boot_vga': WARNING,
    'device_stuck': ERROR,
    'python_module_missing': ERROR,
    'command_missing': WARNING,
}


class CheckError(FleetGpuError):
    """Bad input to iommu_check."""


class Finding:
    def __init__(self, name: str, message: str, remedy: str) -> None:
        self.name = name
        self.severity = FINDINGS[name]
        self.message = message
        self.remedy = remedy

    def as_dict(self) -> dict:
        return {'name': self.name, 'severity': self.severity, 'message': self.message, 'remedy': self.remedy}


def secure_boot(sysfs: Sysfs) -> bool | None:
    """Secure Boot state from the EFI variable (last byte), None when not readable."""
    for path in (sysfs.sys('firmware', 'efi', 'efivars', 'SecureBoot-%s' % EFI_GLOBAL_GUID),
                 sysfs.sys('firmware', 'efi', 'vars', 'SecureBoot-%s' % EFI_GLOBAL_GUID, 'data')):
        try:
            with open(path, 'rb') as handle:
                data = handle.read()
        except OSError:
            continue
        if data:
            return data[-1:] == b'\x01'
    return None


def vfio_modules(sysfs: Sysfs, release: str | None) -> dict:
    """Whether vfio-pci is built in, present as a module file, loaded; and /dev/vfio/vfio."""
    builtin = module_is_builtin(modules_builtin(sysfs, release), 'vfio_pci')
    available = builtin
    if release and not available:
        pci_dir = sysfs.host('lib', 'modules', release, 'kernel', 'drivers', 'vfio', 'pci')
        available = any(name.split('.ko', 1)[0].replace('-', '_') == 'vfio_pci' for name in sysfs.listdir(pci_dir))
    loaded_text = sysfs.read(sysfs.proc('modules'), default='')
    loaded = any(line.split(' ', 1)[0] == 'vfio_pci' for line in loaded_text.splitlines())
    loaded = loaded or sysfs.isdir(sysfs.sys('module', 'vfio_pci')) or builtin
    return {
        'vfio_pci_builtin': builtin,
        'vfio_pci_available': available,
        'vfio_pci_loaded': loaded,
        'dev_vfio': sysfs.exists(sysfs.dev('vfio', 'vfio')),
    }


def cmdline_findings(cmdline: str, cpu_vendor: str) -> list[Finding]:
    out: list[Finding] = []
    intel = cmdline_values(cmdline, 'intel_iommu')
    amd = cmdline_values(cmdline, 'amd_iommu')
    generic = cmdline_values(cmdline, 'iommu')
    if (cpu_vendor == 'intel' and intel and intel[-1] == 'off') or (cpu_vendor == 'amd' and 'off' in amd) \
            or (generic and generic[-1] == 'off'):
        token = 'iommu=off' if generic and generic[-1] == 'off' else ('intel_iommu=off' if cpu_vendor == 'intel'
                                                                      else 'amd_iommu=off')
        out.append(Finding('iommu_disabled_on_cmdline', 'the kernel command line has %s: the IOMMU is disabled' % token,
                           'remove %s (kernel_cmdline module, remove: [%s]) and reboot'
                           % (token, token.split('=', maxsplit=1)[0])))
    if intel and amd:
        out.append(Finding('cmdline_contradiction',
                           'the kernel command line has both intel_iommu=%s and amd_iommu=%s'
                           % (','.join(intel), ','.join(amd)),
                           'keep only the flag of this host\'s CPU vendor (%s)' % cpu_vendor))
    for key, values in (('intel_iommu', intel), ('amd_iommu', amd), ('iommu', generic)):
        if 'on' in values and 'off' in values:
            out.append(Finding('cmdline_contradiction', 'the kernel command line gives %s both on and off '
                               '(the last one wins: %s)' % (key, values[-1]),
                               'keep one %s= token' % key))
    if cpu_vendor == 'amd' and intel:
        out.append(Finding('cmdline_wrong_vendor', 'intel_iommu=%s is on the command line of an AMD host, where it '
                           'does nothing' % ','.join(intel), 'remove intel_iommu from this host\'s command line'))
    if cpu_vendor == 'intel' and amd:
        out.append(Finding('cmdline_wrong_vendor', 'amd_iommu=%s is on the command line of an Intel host, where it '
                           'does nothing' % ','.join(amd), 'remove amd_iommu from this host\'s command line'))
    if 'on' in amd:
        # The guides that tell users to add amd_iommu=on are wrong but harmless: the kernel logs
        # "AMD-Vi: Unknown option" and keeps AMD-Vi on, its default. Reported, never a failure.
        out.append(Finding('amd_iommu_on_ignored', 'amd_iommu=on is on the command line: the kernel does not know '
                           'this value and ignores it (AMD-Vi is on by default), so it does no harm',
                           'nothing to do; you may remove amd_iommu=on from your own kernel arguments, the '
                           'collection leaves it alone'))
    bad = [v for v in amd if v not in AMD_IOMMU_VALUES and v != 'on']
    if bad:
        out.append(Finding('amd_iommu_invalid_value', 'amd_iommu=%s is not a valid value (the kernel logs '
                           '"AMD-Vi: Unknown option"); AMD-Vi is on by default' % ','.join(bad),
                           'remove amd_iommu=%s; valid values are %s' % (','.join(bad), ', '.join(AMD_IOMMU_VALUES))))
    return out


def vfio_ids(cmdline: str) -> list[tuple[str, str]]:
    """(vendor, device) pairs of ``vfio-pci.ids=`` / ``vfio_pci.ids=`` on the command line."""
    out: list[tuple[str, str]] = []
    for key in ('vfio-pci.ids', 'vfio_pci.ids'):
        for value in cmdline_values(cmdline, key):
            parts = value.lower().split(':')
            if len(parts) >= 2:
                out.append((parts[0].zfill(4), parts[1].zfill(4)))
    return out


def vfio_ids_findings(sysfs: Sysfs, cmdline: str) -> list[Finding]:
    """vfio-pci.ids that also match the boot VGA device: vfio-pci would take the host console."""
    ids = vfio_ids(cmdline)
    if not ids:
        return []
    out: list[Finding] = []
    for addr in list_addresses(sysfs):
        path = sysfs.sys('bus', 'pci', 'devices', str(addr))
        if sysfs.read(path + '/boot_vga', default='0') != '1':
            continue
        dev = PciDevice.read(sysfs, addr)
        if (dev.vendor_id, dev.device_id) in ids:
            out.append(Finding('vfio_ids_capture_boot_vga',
                               'vfio-pci.ids on the command line lists %s, which also matches the boot VGA device %s: '
                               'vfio-pci would take the host console at the next boot' % (dev.vendor_device, addr),
                               'bind per address instead (vfio_bind devices, driver_override) and remove %s from '
                               'vfio-pci.ids' % dev.vendor_device))
    return out


def missing_python_modules(names: list[str]) -> list[str]:
    """The Python modules (import names) the interpreter running this check cannot import."""
    missing: list[str] = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def python_module_findings(names: list[str]) -> list[Finding]:
    """A finding naming the Python modules (import names) the interpreter cannot import."""
    missing = missing_python_modules(names)
    if not missing:
        return []
    return [Finding('python_module_missing', 'the Python interpreter %s on this host cannot import %s'
                    % (sys.executable, ', '.join(missing)),
                    'install the distribution packages that provide %s for that interpreter' % ', '.join(missing))]


def missing_commands(paths: list[str]) -> list[str]:
    """The programs (absolute paths on the running host) that are not there."""
    for path in paths:
        if not os.path.isabs(path):
            raise CheckError('commands: %r is not an absolute path' % path)
    return [path for path in paths if not os.path.exists(path)]


def command_findings(missing: list[str]) -> list[Finding]:
    if not missing:
        return []
    return [Finding('command_missing', 'programs not on this host: %s' % ', '.join(missing),
                    'install the packages that provide them (role vfio_host does, with vfio_host_install_packages)')]


class IommuCheck:
    def __init__(self, sysfs: Sysfs, devices: list | None = None, allow_unsafe_interrupts: bool = False,
                 python_modules: list[str] | None = None, commands: list[str] | None = None) -> None:
        self.sysfs = sysfs
        self.allow_unsafe_interrupts = allow_unsafe_interrupts
        self.python_modules = list(python_modules or [])
        self.commands_missing = missing_commands(list(commands or []))
        try:
            self.targets = parse_addresses(devices, option='devices')
        except FactsError as exc:
            raise CheckError(str(exc)) from None

    def run(self) -> dict:
        s = self.sysfs
        iommu = HostIommu(s)
        host = host_facts(s, iommu)
        vfio = vfio_modules(s, host['kernel_release'])
        host.update(vfio)
        sb = secure_boot(s)
        host['secure_boot'] = sb
        host['iommu_units'] = iommu.units
        host['iommu_groups'] = len(iommu.groups)
        findings: list[Finding] = []
        vendor = host['cpu_vendor']
        if host['virtualization'] is None:
            flag = 'svm' if vendor == 'amd' else 'vmx'
            findings.append(Finding('no_virtualization', 'the CPU does not show hardware virtualization (no vmx '
                                    'or svm flag in /proc/cpuinfo)',
                                    'enable %s (VT-x / AMD-V) in the firmware setup' % flag))
        findings.extend(cmdline_findings(iommu.cmdline, vendor))
        if not iommu.enabled:
            if vendor == 'intel':
                remedy = ('enable VT-d in the firmware setup, add intel_iommu=on to the kernel command line '
                          '(kernel_cmdline module, add: [intel_iommu=on]) and reboot')
            elif vendor == 'amd':
                remedy = ('enable the IOMMU (AMD-Vi / SVM) in the firmware setup, remove any amd_iommu=off '
                          'and reboot')
            else:
                remedy = 'enable the IOMMU in the firmware setup and on the kernel command line, then reboot'
            findings.append(Finding('iommu_off', 'the IOMMU is not active: no IOMMU groups in /sys/kernel/iommu_groups '
                                    'and no unit in /sys/class/iommu', remedy))
            tables = self.sysfs.sys('firmware', 'acpi', 'tables')
            if self.sysfs.isdir(tables) and not any(
                    self.sysfs.exists(os.path.join(tables, name)) for name in ACPI_IOMMU_TABLES):
                findings.append(Finding('no_iommu_hardware', 'the firmware describes no IOMMU: no %s table in %s, so '
                                        'no kernel argument can turn one on'
                                        % (' or '.join(ACPI_IOMMU_TABLES), tables),
                                        'enable VT-d / AMD-Vi (IOMMU) in the firmware setup, or run on hardware that '
                                        'has an IOMMU; nothing on this host can be passed through until then'))
        elif iommu.interrupt_remapping is False and self.allow_unsafe_interrupts:
            findings.append(Finding('unsafe_interrupts_allowed', 'interrupt remapping is off and '
                                    'allow_unsafe_interrupts is set: a VM given a device can inject interrupts '
                                    'into the host (MSI spoofing)',
                                    'turn interrupt remapping on (remove intremap=off / nointremap, enable x2APIC / '
                                    'interrupt remapping in the firmware) and drop allow_unsafe_interrupts'))
        elif iommu.interrupt_remapping is False:
            findings.append(Finding('no_interrupt_remapping', 'interrupt remapping is off: vfio refuses to assign '
                                    'devices (vfio_iommu_type1 allow_unsafe_interrupts=0), so no VM can start with '
                                    'a passed-through device',
                                    'remove intremap=off / nointremap from the command line, enable x2APIC / '
                                    'interrupt remapping in the firmware, or use a platform that supports it; to '
                                    'run without it anyway (a VM can then inject interrupts into the host), set '
                                    'allow_unsafe_interrupts (role vfio_host: vfio_host_allow_unsafe_interrupts)'))
        elif iommu.interrupt_remapping is None:
            findings.append(Finding('interrupt_remapping_unknown', 'interrupt remapping state cannot be read from '
                                    'sysfs for IOMMU units %s' % ', '.join(iommu.units),
                                    'check the kernel log for "Enabled IRQ remapping"'))
        if not vfio['vfio_pci_available']:
            findings.append(Finding('vfio_unavailable', 'vfio-pci is neither built into kernel %s nor installed as a '
                                    'module under /lib/modules/%s' % (host['kernel_release'], host['kernel_release']),
                                    'install the kernel\'s modules package (vfio-pci ships with the distribution '
                                    'kernel)'))
        elif not vfio['vfio_pci_loaded']:
            findings.append(Finding('vfio_not_loaded', 'vfio-pci is available but not loaded',
                                    'load it (modprobe vfio-pci); the vfio_bind module and the vfio_host role do '
                                    'this'))
        elif not vfio['dev_vfio']:
            findings.append(Finding('no_vfio_device_node', 'vfio-pci is loaded but /dev/vfio/vfio does not exist',
                                    'check that udev runs and that the vfio module is loaded'))
        if sb:
            findings.append(Finding('secure_boot_enabled', 'Secure Boot is on: kernel modules must be signed '
                                    '(out-of-tree GPU drivers included)',
                                    'nothing to do for vfio-pci; sign or enroll keys for out-of-tree modules'))
        findings.extend(vfio_ids_findings(s, iommu.cmdline))
        python_missing = missing_python_modules(self.python_modules)
        findings.extend(python_module_findings(python_missing))
        findings.extend(command_findings(self.commands_missing))
        devices = []
        for addr in self.targets:
            devices.append(self._device(addr, iommu, findings))
        self._stuck_devices(devices, findings)
        errors = [f for f in findings if f.severity == ERROR]
        return {
            'host': host,
            'devices': devices,
            'findings': [f.as_dict() for f in findings],
            'ready': not errors,
            'commands_missing': self.commands_missing,
            'python_modules_missing': python_missing,
            'python_interpreter': sys.executable,
        }

    def _stuck_devices(self, devices: list[dict], findings: list[Finding]) -> None:
        """Targets whose device lock does not answer (a driver stuck in its probe), in one bounded batch."""
        present = [PciDevice(self.sysfs, PciAddress.parse(d['address'])) for d in devices if d['exists']]
        if not present:
            return
        _values, stuck = read_locked_attributes(self.sysfs, present, names=('driver_override',))
        for entry in devices:
            names = stuck.get(PciAddress.parse(entry['address']))
            entry['stuck'] = names or []
            if names:
                findings.append(Finding('device_stuck', '%s did not answer within %gs (%s): its device lock is held, '
                                        'probably by a driver stuck in its probe' % (entry['address'],
                                                                                     self.sysfs.timeout,
                                                                                     ', '.join(names)),
                                        'keep that driver from binding (modprobe.blacklist=<driver> on the kernel '
                                        'command line) and reboot; nothing can unbind it while it is stuck'))

    def _device(self, addr: PciAddress, iommu: HostIommu, findings: list[Finding]) -> dict:
        s = self.sysfs
        entry: dict = {'address': str(addr), 'exists': False, 'iommu_group': None, 'viable': False,
                       'offending_members': [], 'driver': None, 'stuck': []}
        if not s.isdir(s.sys('bus', 'pci', 'devices', str(addr))):
            findings.append(Finding('device_not_found', 'device %s given in devices does not exist on this host'
                                    % addr, 'check the address with gpu_facts (ansible_facts.gpu_passthrough.gpus)'))
            return entry
        dev = PciDevice.read(s, addr)
        entry.update(exists=True, driver=dev.driver, iommu_group=dev.iommu_group)
        if dev.boot_vga:
            findings.append(Finding('boot_vga', '%s is the boot VGA device: the host console runs on it' % addr,
                                    'pass another GPU, or move the console (firmware setting for the primary '
                                    'display) before binding it to vfio-pci (vfio_bind allow_boot_vga)'))
        if dev.iommu_group is None:
            if iommu.enabled:
                findings.append(Finding('no_iommu_group', '%s has no IOMMU group' % addr,
                                        'check that the IOMMU covers this device (kernel log, firmware settings)'))
            return entry
        members = [PciDevice.read(s, a) for a in iommu.groups.get(dev.iommu_group, [])]
        bad = offending_members(members, set(self.targets))
        entry['offending_members'] = [{'address': str(b.address), 'class_name': class_name(b.class_code),
                                      'driver': b.driver} for b in bad]
        entry['group_members'] = [str(m.address) for m in members]
        entry['viable'] = not bad
        if bad:
            findings.append(Finding('group_not_viable', 'IOMMU group %d of %s (members %s) also holds %s, which '
                                    'would have to leave the host with it; a group only changes with the hardware '
                                    '(another slot), never with a reboot'
                                    % (dev.iommu_group, addr, ', '.join(str(m.address) for m in members),
                                       ', '.join(describe(b) for b in bad)),
                                    'pass those devices too (add them to devices, vfio_bind include_group), move '
                                    'the GPU to a slot with its own group, or bind them to vfio-pci'))
        return entry


def check(sysfs: Sysfs, devices: list | None = None, allow_unsafe_interrupts: bool = False,
          python_modules: list[str] | None = None, commands: list[str] | None = None) -> dict:
    return IommuCheck(sysfs, devices, allow_unsafe_interrupts, python_modules, commands).run()


def failure_message(findings: list[dict], fail_on: list[str]) -> str | None:
    """The message listing each finding named in ``fail_on`` and what to do, or None."""
    hit = [f for f in findings if f['name'] in fail_on]
    if not hit:
        return None
    lines = ['iommu_check found %d problem(s) listed in fail_on:' % len(hit)]
    for f in hit:
        lines.append('- %s: %s. To do: %s.' % (f['name'], f['message'], f['remedy']))
    return '\n'.join(lines)
