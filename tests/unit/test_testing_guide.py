"""docs/testing_your_roles.md: the Molecule scenario it tells users to copy is the one the
collection's own end-to-end tests run, and every YAML block in it is valid and names only
roles and role variables that exist."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / 'docs' / 'testing_your_roles.md'
BLOCK = re.compile(r'^`([\w.]+)`(?:(?!```).)*?:\n\n```yaml\n(.*?)```', re.S | re.M)
ANY_BLOCK = re.compile(r'```yaml\n(.*?)```', re.S)


def _blocks() -> dict:
    return dict(BLOCK.findall(GUIDE.read_text()))


def _options(role: str) -> set:
    spec = yaml.safe_load((REPO / 'roles' / role / 'meta' / 'argument_specs.yml').read_text())
    return set(spec['argument_specs']['main']['options'])


def test_the_copied_create_and_destroy_are_the_tested_ones() -> None:
    blocks = _blocks()
    assert set(blocks) >= {'molecule.yml', 'create.yml', 'destroy.yml', 'converge.yml', 'verify.yml'}, set(blocks)
    for name in ('create.yml', 'destroy.yml'):
        assert blocks[name] == (REPO / 'molecule' / 'shared' / name).read_text(), name


def test_every_block_parses_and_names_real_roles_and_variables() -> None:
    blocks = ANY_BLOCK.findall(GUIDE.read_text())
    assert len(blocks) >= 6
    problems = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            role = node.get('name') if isinstance(node.get('name'), str) else None
            for key in ('role',):
                if isinstance(node.get(key), str):
                    role = node[key]
            if role and role.startswith('fleetgpu.passthrough.'):
                short = role.split('.')[-1]
                if not (REPO / 'roles' / short / 'tasks').is_dir():
                    problems.append('no role %s' % role)
                elif isinstance(node.get('vars'), dict):
                    problems.extend('%s: no option %s' % (role, v) for v in set(node['vars']) - _options(short))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for body in blocks:
        doc = yaml.safe_load(body)
        walk(doc)
        if isinstance(doc, list):
            for play in doc:
                walk(play.get('roles', []))
                for task in play.get('tasks', []):
                    inc = task.get('ansible.builtin.include_role')
                    if inc:
                        walk({'name': inc['name'], 'vars': task.get('vars', {})})
    assert not problems, problems


def test_the_platforms_topologies_are_the_roles_choices() -> None:
    spec = yaml.safe_load((REPO / 'roles' / 'testbed' / 'meta' / 'argument_specs.yml').read_text())
    choices = set(spec['argument_specs']['main']['options']['testbed_hosts']['options']['topology']['choices'])
    platforms = yaml.safe_load(_blocks()['molecule.yml'])['platforms']
    assert {p['topology'] for p in platforms} <= choices
    table = re.findall(r'^ *\| `(\w+)` \|', GUIDE.read_text(), re.M)
    assert set(table) == choices, table
