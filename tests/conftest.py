"""Shared pytest set-up.

* Makes ``ansible_collections.fleetgpu.passthrough`` importable from the working tree
  (a symlink under .cache/pyroot), so unit tests exercise the live code.
* ``installed_collection``: builds and installs the collection the way users do
  (``ansible-galaxy collection build`` + ``install``) once per session, for tests that run
  ``ansible-playbook``.
* ``run_playbook``: runs ansible-playbook against the installed collection and returns
  the completed process (stdout holds the JSON callback output when asked).
* ``testbed_hosts``: the QEMU test hosts of the runtime phase (tests/testbed), booted once per
  session and all at once: each test module there names the hosts it needs in
  ``TESTBED_HOSTS``, and only the hosts the collected modules name are started.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / '.cache'
PYROOT = CACHE / 'pyroot'
COLLECTIONS = Path(os.environ.get('FLEETGPU_COLLECTIONS_PATH') or (CACHE / 'collections'))
VENV_BIN = REPO / '.venv' / 'bin'
# scripts/core-matrix.sh runs the smoke tests with another ansible-core: its ansible-* commands
# come from FLEETGPU_ANSIBLE_BIN, and the collection is the one it installed with that version
# (FLEETGPU_COLLECTIONS_PATH, FLEETGPU_COLLECTION_INSTALLED=1).
ANSIBLE_BIN = Path(os.environ['FLEETGPU_ANSIBLE_BIN']) if os.environ.get('FLEETGPU_ANSIBLE_BIN') else None

_link = PYROOT / 'ansible_collections' / 'fleetgpu' / 'passthrough'
if not _link.exists():
    _link.parent.mkdir(parents=True, exist_ok=True)
    try:
        _link.symlink_to(REPO)
    except FileExistsError:
        pass
for _init in (PYROOT / 'ansible_collections' / '__init__.py', PYROOT / 'ansible_collections' / 'fleetgpu' / '__init__.py'):
    _init.touch(exist_ok=True)
if str(PYROOT) not in sys.path:
    sys.path.insert(0, str(PYROOT))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def tool(name: str) -> str:
    """Path of a command from the project's virtual environment, else from PATH."""
    if ANSIBLE_BIN is not None and name.startswith('ansible') and (ANSIBLE_BIN / name).exists():
        return str(ANSIBLE_BIN / name)
    cand = VENV_BIN / name
    return str(cand) if cand.exists() else name


@pytest.fixture(scope='session')
def installed_collection() -> Path:
    """Build and install the collection once per test session; returns the collections path."""
    if not os.environ.get('FLEETGPU_COLLECTION_INSTALLED'):
        # Parallel workers (pytest -n, one test run id): the first installs, under a lock, and the
        # others use that install; a second install under a running test would swap the files.
        run_id = os.environ.get('PYTEST_XDIST_TESTRUNUID', '')
        CACHE.mkdir(exist_ok=True)
        stamp = CACHE / 'collection-installed-for'
        with open(CACHE / 'collection-install.lock', 'w', encoding='utf-8') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not run_id or not stamp.exists() or stamp.read_text(encoding='utf-8') != run_id:
                subprocess.run(['bash', str(REPO / 'scripts' / 'install-collection.sh')], check=True,
                               stdout=subprocess.DEVNULL)
                stamp.write_text(run_id, encoding='utf-8')
        os.environ['FLEETGPU_COLLECTION_INSTALLED'] = '1'
    return COLLECTIONS


def playbook_env(collections: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        'ANSIBLE_COLLECTIONS_PATH': str(collections),
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_FORCE_COLOR': '0',
        'ANSIBLE_RETRY_FILES_ENABLED': '0',
        'ANSIBLE_LOCALHOST_WARNING': '0',
        'ANSIBLE_INVENTORY_UNPARSED_WARNING': '0',
        'ANSIBLE_PYTHON_INTERPRETER': sys.executable,
        'PATH': '%s:%s' % (VENV_BIN, env.get('PATH', '')),
    })
    if extra:
        env.update(extra)
    return env


@pytest.fixture()
def run_playbook(installed_collection: Path, tmp_path: Path):
    """run_playbook(playbook_text_or_path, extra_vars=None, args=(), json_output=True)."""

    def _run(playbook: str | Path, extra_vars: dict | None = None, args: tuple = (),
             json_output: bool = True, inventory: str | None = None, env: dict | None = None,
             timeout: int = 600) -> subprocess.CompletedProcess:
        path = Path(playbook)
        if not (isinstance(playbook, Path) or (len(str(playbook)) < 4096 and path.suffix in ('.yml', '.yaml') and path.exists())):
            path = tmp_path / 'playbook.yml'
            path.write_text(str(playbook))
        cmd = [tool('ansible-playbook'), str(path), '-i', inventory or 'localhost,', '-c', 'local']
        if extra_vars:
            ev = tmp_path / 'extra_vars.json'
            ev.write_text(json.dumps(extra_vars))
            cmd += ['-e', '@%s' % ev]
        cmd += list(args)
        extra_env: dict[str, str] = {}
        if json_output:
            extra_env['ANSIBLE_CALLBACK_PLUGINS'] = str(REPO / 'tests' / 'callback_plugins')
            extra_env['ANSIBLE_STDOUT_CALLBACK'] = 'fleetgpu_json'
        if env:
            extra_env.update(env)
        return subprocess.run(cmd, capture_output=True, text=True, env=playbook_env(installed_collection, extra_env),
                              timeout=timeout, cwd=str(tmp_path), check=False)

    return _run


# The runtime phase's test hosts: name -> topology (see roles/testbed/files/launch.py TOPOLOGIES).
TESTBED_TOPOLOGIES = {'intel': 'intel', 'radeon': 'radeon', 'noiommu': 'noiommu'}


@pytest.fixture(scope='session')
def testbed_hosts(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The test hosts the collected tests/testbed modules need, started in parallel, always stopped.

    Sharing them saves a boot per module (minutes under TCG); a module that is done with a host
    may stop it early (``host.stop()``) to give the cores back.
    """
    sys.path.insert(0, str(REPO / 'roles' / 'testbed' / 'files'))
    import launch  # pylint: disable=import-outside-toplevel

    wanted: list[str] = []
    for item in request.session.items:
        for name in getattr(item.module, 'TESTBED_HOSTS', ()):
            if name not in wanted:
                wanted.append(name)
    hosts = {name: launch.TestHost('rt-%s' % name, topology=TESTBED_TOPOLOGIES[name]) for name in wanted}
    try:
        # Booting several at once under TCG on a busy machine: allow ten minutes for SSH.
        launch.start_many(list(hosts.values()), ssh_wait=max(launch.SSH_WAIT, 600))
        yield hosts
    finally:
        for h in hosts.values():
            h.stop()


def playbook_json(proc: subprocess.CompletedProcess) -> dict:
    """The fleetgpu_json callback's document from a run's stdout."""
    start = proc.stdout.find('{"tasks"')
    if start < 0:
        raise AssertionError('no JSON result in ansible-playbook output:\n%s\n%s' % (proc.stdout, proc.stderr))
    return json.JSONDecoder().raw_decode(proc.stdout[start:])[0]
