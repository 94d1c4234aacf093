"""The execution environment definition: ansible-builder writes a build context that holds
the collection, its Python requirements and its system packages.

No container engine runs here, so the build stages are replayed locally: the galaxy stage's
``ansible-galaxy collection install -r requirements.yml`` and the builder stage's
introspection of the installed collection, both from the generated context.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from bindep.depends import Depends

from conftest import REPO, playbook_env, tool

EE_FILE = REPO / 'execution-environment.yml'

# (bindep profiles, packages that must be selected, packages that must not be)
BINDEP_CASES = [
    (['platform:dpkg'], ['libvirt0', 'pci.ids'],
     ['libvirt-dev', 'gcc', 'pkg-config', 'python3-dev', 'libvirt-libs', 'hwdata']),
    (['platform:dpkg', 'compile'], ['libvirt0', 'libvirt-dev', 'pkg-config', 'gcc', 'python3-dev', 'pci.ids'],
     ['libvirt-devel', 'python3-devel', 'hwdata']),
    (['platform:rpm'], ['libvirt-libs', 'hwdata'],
     ['libvirt-devel', 'gcc', 'python3-devel', 'pkgconf-pkg-config', 'libvirt0', 'pci.ids']),
    (['platform:rpm', 'compile'], ['libvirt-libs', 'libvirt-devel', 'pkgconf-pkg-config', 'gcc', 'python3-devel', 'hwdata'],
     ['libvirt-dev', 'python3-dev', 'pci.ids']),
]


def _names(reqs_text: str) -> set[str]:
    """Distribution names of a pip requirements text (comments and versions stripped)."""
    names = set()
    for line in reqs_text.splitlines():
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        for sep in ('>=', '<=', '==', '~=', '!=', '<', '>', '[', ';', ' '):
            line = line.split(sep, 1)[0]
        names.add(line.strip().lower())
    return names


@pytest.fixture(scope='module')
def ee_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ansible-builder create` output for the collection's execution-environment.yml."""
    ctx = tmp_path_factory.mktemp('ee') / 'context'
    proc = subprocess.run([tool('ansible-builder'), 'create', '-f', str(EE_FILE), '-c', str(ctx),
                           '--output-filename', 'Containerfile', '-v', '3'],
                          capture_output=True, text=True, cwd=str(REPO), timeout=300, check=False)
    assert proc.returncode == 0, 'ansible-builder create failed:\n%s\n%s' % (proc.stdout, proc.stderr)
    return ctx


def test_definition_is_schema_version_3() -> None:
    definition = yaml.safe_load(EE_FILE.read_text())
    assert definition['version'] == 3
    deps = definition['dependencies']
    assert deps['python'] == 'requirements.txt'
    assert deps['system'] == 'bindep.txt'
    assert 'ansible-core' in deps['ansible_core']['package_pip']
    assert 'ansible-runner' in deps['ansible_runner']['package_pip']


def test_containerfile_installs_everything(ee_context: Path) -> None:
    text = (ee_context / 'Containerfile').read_text()
    assert 'FROM $EE_BASE_IMAGE AS base' in text, 'base image must stay overridable with --build-arg EE_BASE_IMAGE'
    assert 'ansible-core>=2.17' in text and 'ansible-runner' in text
    assert 'ansible-galaxy collection install' in text and '-r requirements.yml' in text
    assert '--user-pip=requirements.txt' in text and '--user-bindep=bindep.txt' in text
    assert 'COPY _build/requirements.txt requirements.txt' in text
    assert 'COPY _build/bindep.txt bindep.txt' in text
    assert '/output/scripts/install-from-bindep' in text
    assert 'ansible-doc -l fleetgpu.passthrough' in text


def test_context_python_requirements(ee_context: Path) -> None:
    names = _names((ee_context / '_build' / 'requirements.txt').read_text())
    assert {'libvirt-python', 'lxml'} <= names


@pytest.mark.parametrize('profiles,present,absent', BINDEP_CASES,
                         ids=['+'.join(c[0]) for c in BINDEP_CASES])
def test_context_bindep_profiles(ee_context: Path, profiles: list, present: list, absent: list) -> None:
    depends = Depends((ee_context / '_build' / 'bindep.txt').read_text())
    selected = {rule[0] for rule in depends.active_rules(profiles)}
    assert set(present) <= selected, 'missing for %s: %s' % (profiles, sorted(set(present) - selected))
    assert not (set(absent) & selected), 'wrongly selected for %s: %s' % (profiles, sorted(set(absent) & selected))


def test_dpkg_package_names_exist() -> None:
    """Every package bindep selects on dpkg platforms is a real package of this distribution."""
    apt_cache = shutil.which('apt-cache')
    if not apt_cache:
        pytest.skip('not a dpkg system')
    depends = Depends((REPO / 'bindep.txt').read_text())
    for name in sorted({rule[0] for rule in depends.active_rules(['platform:dpkg', 'compile'])}):
        proc = subprocess.run([apt_cache, 'show', '--no-all-versions', name], capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and ('Package: %s' % name) in proc.stdout, 'bindep.txt names %s, unknown to apt' % name


def test_galaxy_stage_installs_the_collection(ee_context: Path, tmp_path: Path) -> None:
    """Replay the galaxy stage (WORKDIR /build) and the builder stage's introspection."""
    build = ee_context / '_build'
    reqs = yaml.safe_load((build / 'requirements.yml').read_text())
    (entry,) = reqs['collections']
    assert entry['type'] == 'dir' and entry['name'].startswith('/build/')
    # the context's _build directory is what the image sees as /build
    entry['name'] = str(build / entry['name'][len('/build/'):])
    local_reqs = tmp_path / 'requirements.yml'
    local_reqs.write_text(yaml.safe_dump(reqs))
    target = tmp_path / 'usr_share_ansible' / 'collections'
    proc = subprocess.run([tool('ansible-galaxy'), 'collection', 'install', '-r', str(local_reqs),
                           '--collections-path', str(target)],
                          capture_output=True, text=True, cwd=str(build), timeout=300,
                          env=playbook_env(target), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = target / 'ansible_collections' / 'fleetgpu' / 'passthrough'
    manifest = json.loads((installed / 'MANIFEST.json').read_text())
    assert manifest['collection_info']['namespace'] == 'fleetgpu'
    assert manifest['collection_info']['name'] == 'passthrough'
    for module in sorted((REPO / 'plugins' / 'modules').glob('*.py')):
        assert (installed / 'plugins' / 'modules' / module.name).is_file(), module.name
    for role in sorted(p.name for p in (REPO / 'roles').iterdir() if p.is_dir()) if (REPO / 'roles').is_dir() else []:
        assert (installed / 'roles' / role / 'meta' / 'main.yml').is_file(), role

    out = subprocess.run([tool('python'), str(build / 'scripts' / 'introspect.py'), 'introspect', str(target.parent / 'collections'),
                          '--user-pip', str(build / 'requirements.txt'), '--user-bindep', str(build / 'bindep.txt')],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    python_names = _names('\n'.join(data['python']))
    assert {'libvirt-python', 'lxml'} <= python_names
    system = '\n'.join(data['system'])
    for pkg in ('libvirt-dev', 'libvirt-devel', 'pci.ids', 'hwdata'):
        assert pkg in system
    # the collection's own files are found too (attributed to it, not only to the user files)
    assert 'fleetgpu.passthrough' in out.stdout


def test_context_copies_all_the_collection_ships(ee_context: Path, installed_collection: Path) -> None:
    """Each top-level entry of the built collection tarball reaches the image's copy."""
    (tarball,) = sorted((REPO / '.cache' / 'dist').glob('fleetgpu-passthrough-*.tar.gz'))
    with tarfile.open(tarball) as tar:
        top = {m.name.split('/', 1)[0] for m in tar.getmembers()}
    # metadata ansible-galaxy writes, the EE definition itself and tool configuration files
    top = {name for name in top if not name.startswith('.')}
    top -= {'MANIFEST.json', 'FILES.json', 'execution-environment.yml'}
    # the repository's test-host material stays out of what users install
    assert not top & {'inventories', 'tests', 'molecule', 'scripts', 'bench'}, sorted(top)
    copied = {p.name for p in (ee_context / '_build' / 'collection').iterdir()}
    missing = sorted(top - copied)
    assert not missing, 'add these to additional_build_files in execution-environment.yml: %s' % missing
