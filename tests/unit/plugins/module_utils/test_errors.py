"""The one error root (plugins/module_utils/_errors.py): every error family derives from it, the
result a module fails with, context, and the shape that makes each module catch only it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _cmdline, _files, _hostcmd, _hostdev, _hugepages
from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _pci, _sysfs, _topology, _vm_wiring
from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _bootloader, _fleet_report, _gpu_selection, _initramfs
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import (
    fleet_plan, gpu_facts, guest_check, iommu_check, libvirt_hostdev, vfio_bind, vmware_gpu_import)

REPO = Path(__file__).resolve().parents[4]
ROOTS = [
    (_sysfs.SysfsError, None), (_bootloader.BootloaderError, None), (fleet_plan.FleetError, None),
    (_initramfs.InitramfsError, None), (_cmdline.CmdlineError, ValueError), (_pci.PciAddressError, ValueError),
    (_pci.PciIdError, ValueError), (_pci.PciDeviceNotFound, LookupError), (_gpu_selection.SelectionError, ValueError),
    (iommu_check.CheckError, None), (vfio_bind.BindingError, None), (_topology.CpuListError, ValueError),
    (_hostdev.HostdevError, None), (libvirt_hostdev.LibvirtError, None), (gpu_facts.FactsError, None),
    (vmware_gpu_import.VmwareImportError, None), (_hostcmd.CommandError, None), (_files.FileError, None),
    (_vm_wiring.WiringError, ValueError), (guest_check.GuestCheckError, None), (_fleet_report.ReportError, None),
    (_hugepages.HugepagesError, ValueError),
]


@pytest.mark.parametrize('cls, also', ROOTS, ids=[root[0].__name__ for root in ROOTS])
def test_every_error_family_derives_from_the_root(cls: type, also: type | None) -> None:
    assert issubclass(cls, FleetGpuError)
    if also is not None:
        # callers that catch the Python kind still catch it
        assert issubclass(cls, also)


def test_result_holds_the_message_and_details() -> None:
    exc = FleetGpuError('no such device 0000:77:00.0', details={'devices': ['0000:77:00.0']})
    assert exc.result() == {'msg': 'no such device 0000:77:00.0', 'devices': ['0000:77:00.0']}
    assert FleetGpuError('plain').result() == {'msg': 'plain'}


def test_context_comes_before_the_message() -> None:
    exc = _pci.PciAddressError('invalid PCI address %r' % 'x')
    assert exc.add_context('entry x') is exc
    exc.add_context('the journal /tmp/j.json')
    assert str(exc) == "the journal /tmp/j.json: entry x: invalid PCI address 'x'"
    assert exc.result()['msg'] == str(exc)


def test_binding_error_details_reach_the_result() -> None:
    exc = vfio_bind.BindingApplyError('write failed', rolled_back=['0000:02:00.0'])
    assert exc.result() == {'msg': 'write failed', 'rolled_back': ['0000:02:00.0']}


def _handlers(path: Path) -> list[ast.ExceptHandler]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ExceptHandler)]


@pytest.mark.parametrize('path', sorted((REPO / 'plugins' / 'modules').glob('*.py'))
                         + sorted((REPO / 'plugins' / 'action').glob('*.py')), ids=lambda p: '%s/%s' % (p.parent.name, p.name))
def test_modules_catch_only_the_root(path: Path) -> None:
    """No module or action plugin catches a tuple of the collection's errors or one family of them."""
    ours = set()
    for handler in _handlers(path):
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        for name in names:
            text = ast.unparse(name) if name is not None else ''
            if text.endswith(('Error', 'NotFound')) and text != 'AnsibleUndefinedVariable':
                assert not isinstance(handler.type, ast.Tuple) or text in ('KeyError', 'TypeError'), ast.unparse(handler)
                if text not in ('KeyError', 'TypeError'):
                    ours.add(text)
    assert ours <= {'FleetGpuError'}, (path, ours)
