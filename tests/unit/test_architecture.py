"""The import rules of docs/ARCHITECTURE.md, checked on the source tree.

A module file is docs + argument spec + its engine; an engine builds on rooms (and on another
engine only where docs/ARCHITECTURE.md says so); a room never reaches up into an engine, a module
or an action plugin, and never takes an AnsibleModule.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / 'plugins'
PREFIX = 'ansible_collections.fleetgpu.passthrough.plugins.'

# what a module file may import from the collection besides its own engine
MODULE_MAY_IMPORT = {
    'module_utils._errors', 'module_utils._sysfs', 'module_utils._platform',
    # backend registries, for the options' choices
    'module_utils._bootloader', 'module_utils._initramfs',
    # whether lxml is importable (libvirt_hostdev says so before it reads anything)
    'module_utils._hostdev',
}
# engines built on another module's reading
ENGINE_MAY_IMPORT_ENGINE = {
    'iommu_check': {'gpu_facts'},
    'libvirt_gpu_info': {'libvirt_hostdev'},
    'vmware_gpu_import': {'fleet_plan'},
    # which running domain holds a device: libvirt_gpu_info's reading
    'vfio_bind': {'libvirt_gpu_info'},
    # the running domains that hold a device (libvirt_gpu_info), stopped over libvirt_hostdev's connection
    'libvirt_domain_drain': {'libvirt_gpu_info', 'libvirt_hostdev'},
    # which running domain holds a VF (libvirt_gpu_info's reading) or an mdev (its libvirt binding)
    'gpu_partition': {'libvirt_gpu_info'},
}
# the one adapter from an AnsibleModule to the rooms: _hostcmd.ModuleRunner
ROOM_MAY_TAKE_A_MODULE = {'_hostcmd'}
# rooms that serve one engine and read through another
ROOM_MAY_IMPORT_ENGINE = {
    '_domain_wiring': {'gpu_facts'},
    '_fleet_report': {'fleet_plan'},
}


def collection_imports(path: Path) -> set[str]:
    """The collection-relative names a file imports (``module_utils._pci``, ``modules.gpu_facts``...)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + ['%s.%s' % (node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith(PREFIX):
                found.add(name[len(PREFIX):])
            elif name == 'ansible.module_utils.basic':
                found.add(name)
    return found


def top(name: str) -> str:
    """``module_utils._pci.PciAddress`` -> ``module_utils._pci``; engines keep their module name."""
    parts = name.split('.')
    if parts[:2] == ['module_utils', 'module_backends'] and len(parts) > 2:
        return '.'.join(parts[:3])
    return '.'.join(parts[:2])


def engines_of(imports: set[str]) -> set[str]:
    return {top(n).split('.')[2] for n in imports if top(n).startswith('module_utils.module_backends.')}


ROOMS = sorted(p for p in (PLUGINS / 'module_utils').rglob('*.py')
               if 'module_backends' not in p.parts and p.name != '__init__.py' or p.parent.name in ('_bootloader', '_initramfs'))
ENGINES = sorted(p for p in (PLUGINS / 'module_utils' / 'module_backends').glob('*.py') if p.name != '__init__.py')
MODULES = sorted((PLUGINS / 'modules').glob('*.py'))


def test_the_layout_has_what_the_rules_speak_of() -> None:
    assert len(MODULES) >= 10 and len(ENGINES) >= 10 and len(ROOMS) >= 15
    # every module has an engine named after it
    assert {p.stem for p in MODULES} <= {p.stem for p in ENGINES}


@pytest.mark.parametrize('path', MODULES, ids=lambda p: p.stem)
def test_a_module_file_imports_its_engine_and_shared_argument_handling_only(path: Path) -> None:
    imports = {top(n) for n in collection_imports(path) if n != 'ansible.module_utils.basic'}
    allowed = MODULE_MAY_IMPORT | {'module_utils.module_backends.%s' % path.stem}
    assert imports <= allowed, '%s imports %s' % (path.name, sorted(imports - allowed))


@pytest.mark.parametrize('path', ENGINES, ids=lambda p: p.stem)
def test_an_engine_builds_on_rooms_and_named_engines_only(path: Path) -> None:
    imports = collection_imports(path)
    assert not {n for n in imports if n.startswith(('modules.', 'action.', 'filter.'))}, path.name
    others = engines_of(imports) - {path.stem}
    allowed = ENGINE_MAY_IMPORT_ENGINE.get(path.stem, set())
    assert others <= allowed, '%s imports the engines %s' % (path.name, sorted(others - allowed))


@pytest.mark.parametrize('path', ROOMS, ids=lambda p: str(p.relative_to(PLUGINS / 'module_utils')))
def test_a_room_never_reaches_up(path: Path) -> None:
    imports = collection_imports(path)
    assert not {n for n in imports if n.startswith(('modules.', 'action.', 'filter.'))}, path.name
    takes_module = 'ansible.module_utils.basic' in imports
    assert path.stem in ROOM_MAY_TAKE_A_MODULE or not takes_module, '%s takes an AnsibleModule; rooms take a _hostcmd.Runner' % path.name
    engines = engines_of(imports)
    allowed = ROOM_MAY_IMPORT_ENGINE.get(path.stem, set())
    assert engines <= allowed, '%s imports the engines %s' % (path.name, sorted(engines - allowed))


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / '_room.py'
    bad.write_text('from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.vfio_bind import Binder\n'
                   'from ansible.module_utils.basic import AnsibleModule\n')
    imports = collection_imports(bad)
    assert engines_of(imports) == {'vfio_bind'}
    assert 'ansible.module_utils.basic' in imports
