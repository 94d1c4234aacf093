"""Every role documents its variables for AWX surveys and ``ansible-doc -t role``, and
rejects a wrongly typed or missing variable at argument validation, before any other task.

Parametrized over ``roles/*`` so a new role is covered as soon as it lands.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml

from conftest import REPO, playbook_env, playbook_json, tool

EXPECTED_ROLES = ('vfio_host', 'libvirt_gpu')
ROLES = sorted(p.name for p in (REPO / 'roles').iterdir() if (p / 'tasks').is_dir()) if (REPO / 'roles').is_dir() else []

# A value each type's validation refuses, with words the error names.
BAD_VALUES: Dict[str, Tuple[Any, str]] = {
    'bool': ('perhaps', 'bool'),
    'int': ('many', 'int'),
    'float': ('lots', 'float'),
    'list': ({'not': 'a list'}, 'list'),
    'dict': ('not a dict', 'dict'),
}


def _spec(role: str) -> dict:
    path = REPO / 'roles' / role / 'meta' / 'argument_specs.yml'
    assert path.is_file(), 'role %s has no meta/argument_specs.yml' % role
    return yaml.safe_load(path.read_text())['argument_specs']


def _walk(options: dict, prefix: str = '') -> Iterator[Tuple[str, dict]]:
    for name, opt in (options or {}).items():
        yield prefix + name, opt
        if opt.get('options'):
            yield from _walk(opt['options'], prefix + name + '.')


def _defaults(role: str) -> dict:
    path = REPO / 'roles' / role / 'defaults' / 'main.yml'
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _ansible_doc(installed: Path, role: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool('ansible-doc'), '-t', 'role', 'fleetgpu.passthrough.%s' % role, *args],
                          capture_output=True, text=True, env=playbook_env(installed), timeout=120, check=False)


def test_expected_roles_exist() -> None:
    missing = [r for r in EXPECTED_ROLES if r not in ROLES]
    assert not missing, 'roles missing from roles/: %s' % missing


@pytest.mark.parametrize('role', ROLES)
def test_spec_is_complete(role: str) -> None:
    """Each option, nested ones included, has a type and a description; each public default is documented."""
    specs = _spec(role)
    assert 'main' in specs, 'role %s: argument_specs has no main entry point' % role
    problems: List[str] = []
    for entry, spec in specs.items():
        if not spec.get('short_description'):
            problems.append('%s: entry point has no short_description' % entry)
        for name, opt in _walk(spec.get('options') or {}):
            if not opt.get('type'):
                problems.append('%s: %s has no type' % (entry, name))
            if not opt.get('description'):
                problems.append('%s: %s has no description' % (entry, name))
            if opt.get('type') in ('list',) and not opt.get('elements'):
                problems.append('%s: %s is a list without elements' % (entry, name))
            if opt.get('required') and 'default' in opt:
                problems.append('%s: %s is required and has a default' % (entry, name))
    main_options = specs['main'].get('options') or {}
    for var, value in _defaults(role).items():
        if not var.startswith(role + '_'):
            problems.append('defaults: %s is not prefixed with %s_' % (var, role))
        if var not in main_options:
            problems.append('defaults: %s is not in argument_specs main options' % var)
            continue
        if 'default' in main_options[var] and main_options[var]['default'] != value:
            problems.append('%s: default %r in argument_specs differs from %r in defaults/main.yml'
                            % (var, main_options[var]['default'], value))
    for name in main_options:
        if not name.startswith(role + '_'):
            problems.append('main: option %s is not prefixed with %s_' % (name, role))
    assert not problems, 'role %s:\n  %s' % (role, '\n  '.join(problems))


@pytest.mark.parametrize('role', ROLES)
def test_ansible_doc_renders(role: str, installed_collection: Path) -> None:
    proc = _ansible_doc(installed_collection, role)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    doc = json.loads(_ansible_doc(installed_collection, role, '--json').stdout)
    entries = doc['fleetgpu.passthrough.%s' % role]['entry_points']
    assert 'main' in entries
    for entry, spec in _spec(role).items():
        rendered = entries[entry].get('options') or {}
        for name, opt in (spec.get('options') or {}).items():
            assert name in text, 'ansible-doc text of %s lacks %s' % (role, name)
            assert rendered[name].get('type') == opt['type'], name
            assert rendered[name].get('description'), name


def _bad_value_cases() -> List[Any]:
    cases = []
    for role in ROLES:
        try:
            options = _spec(role)['main'].get('options') or {}
        except (AssertionError, KeyError, TypeError):
            continue
        typed = [(n, o) for n, o in options.items() if o.get('type') in BAD_VALUES]
        for name, opt in typed[:3]:
            cases.append(pytest.param(role, name, opt['type'], id='%s-%s' % (role, name)))
    return cases or [pytest.param(None, None, None, marks=pytest.mark.skip(reason='no role with typed options yet'))]


def _play(role: str) -> str:
    return ('- name: Argument validation of %s\n'
            '  hosts: localhost\n'
            '  gather_facts: false\n'
            '  roles:\n'
            '    - role: fleetgpu.passthrough.%s\n' % (role, role))


def _first_failure(proc: subprocess.CompletedProcess) -> dict:
    doc = playbook_json(proc)
    failed = [t for t in doc['tasks'] if t['status'] == 'failed']
    assert failed, 'no task failed:\n%s' % proc.stdout
    ran_before = list(doc['tasks'][:doc['tasks'].index(failed[0])])
    assert not ran_before, 'tasks ran before argument validation: %s' % [t['task'] for t in ran_before]
    return failed[0]


@pytest.mark.parametrize('role,option,otype', _bad_value_cases())
def test_wrong_type_fails_validation(role: str, option: str, otype: str, run_playbook) -> None:
    value, word = BAD_VALUES[otype]
    options = _spec(role)['main']['options']
    given = {n: _example(o) for n, o in options.items() if o.get('required') and n != option}
    given[option] = value
    proc = run_playbook(_play(role), extra_vars=given, args=('--check',))
    assert proc.returncode != 0
    failure = _first_failure(proc)
    assert failure['action'] in ('validate_argument_spec', 'ansible.builtin.validate_argument_spec'), failure
    msg = failure['result'].get('msg', '')
    assert 'Validation of arguments failed' in msg, msg
    assert "argument '%s'" % option in msg and word in msg, 'message does not name %s and %s: %s' % (option, word, msg)


def _required_cases() -> List[Any]:
    cases = []
    for role in ROLES:
        try:
            options = _spec(role)['main'].get('options') or {}
        except (AssertionError, KeyError, TypeError):
            continue
        for name, opt in options.items():
            if opt.get('required'):
                cases.append(pytest.param(role, name, id='%s-%s' % (role, name)))
    return cases or [pytest.param(None, None, marks=pytest.mark.skip(reason='no role has required options'))]


@pytest.mark.parametrize('role,option', _required_cases())
def test_missing_required_fails_validation(role: str, option: str, run_playbook) -> None:
    options = _spec(role)['main']['options']
    given = {n: _example(o) for n, o in options.items() if o.get('required') and n != option}
    proc = run_playbook(_play(role), extra_vars=given or None, args=('--check',))
    assert proc.returncode != 0
    failure = _first_failure(proc)
    msg = failure['result'].get('msg', '')
    assert 'missing required arguments' in msg and option in msg, msg


def _example(opt: dict) -> Optional[Any]:
    return {'bool': False, 'int': 0, 'float': 0.0, 'list': [], 'dict': {}}.get(opt.get('type', 'str'), 'x')
