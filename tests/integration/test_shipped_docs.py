"""The installed collection's documentation refers only to what the collection ships.

The tests, the benchmarks, the Molecule scenarios, the scripts, the test inventories and the
repository-only pages (docs/contributing.md, docs/ARCHITECTURE.md, docs/testing.md, docs/testbed.md) are not in the
tarball: a shipped page that points at them sends the user to nothing. Only README.md speaks of
the source repository, in sections whose heading says so.
"""
from __future__ import annotations

import re
from pathlib import Path

REPO_ONLY = re.compile(r'(?<![\w./-])(?:tests|bench|molecule|inventories|scripts|\.ci)/'
                       r'|\bmake (?:demo|test|e2e|collection|bootstrap)\b|\.venv/'
                       r'|\b(?:contributing|testing|testbed|ARCHITECTURE)\.md\b')
LINK = re.compile(r'\]\(([^)#\s]+)(?:#[^)]*)?\)')


def shipped_pages(root: Path) -> list[Path]:
    """The pages, and the files ansible-doc renders (module and plugin docs, role argument specs)."""
    pages = [p for p in root.rglob('*') if p.suffix in ('.md', '.rst') and p.is_file()]
    pages += list((root / 'plugins').glob('*/*.py')) + list((root / 'roles').glob('*/meta/*.yml'))
    pages += list((root / 'playbooks').rglob('*.yml'))
    return sorted(pages)


def _text(page: Path) -> str:
    text = page.read_text(encoding='utf-8')
    if page.name == 'README.md':
        # the sections about a checkout of the source repository (their heading says so)
        text = re.sub(r'\n## [^\n]*source repository[^\n]*\n.*?(?=\n## |\Z)', '\n', text, flags=re.S)
    return text


def test_shipped_docs_name_only_what_ships(installed_collection: Path) -> None:
    root = installed_collection / 'ansible_collections' / 'fleetgpu' / 'passthrough'
    pages = shipped_pages(root)
    assert any(p.name == 'fleet.md' for p in pages) and any(p.suffix == '.rst' for p in pages), pages
    found = []
    for page in pages:
        for n, line in enumerate(_text(page).splitlines(), 1):
            for m in REPO_ONLY.finditer(line):
                found.append('%s:%d: %s' % (page.relative_to(root), n, m.group(0)))
            for m in LINK.finditer(line):
                target = m.group(1)
                if '://' in target or target.startswith('mailto:'):
                    continue
                if not (page.parent / target).exists():
                    found.append('%s:%d: link to %s, which is not shipped' % (page.relative_to(root), n, target))
    assert not found, '\n'.join(found)


def test_the_repository_only_pages_are_not_shipped(installed_collection: Path) -> None:
    docs = installed_collection / 'ansible_collections' / 'fleetgpu' / 'passthrough' / 'docs'
    assert (docs / 'fleet.md').is_file()
    for name in ('contributing.md', 'ARCHITECTURE.md', 'testing.md', 'testbed.md'):
        assert not (docs / name).exists(), name
