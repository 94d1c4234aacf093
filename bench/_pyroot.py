"""The collection from this checkout, importable by the benchmarks: ``import _pyroot`` first.

It makes ``.cache/pyroot/ansible_collections/fleetgpu/passthrough`` a symlink to the checkout
(once), then puts that root, the checkout (for ``tests.sim``) and ``tests/sim`` on ``sys.path``.
"""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYROOT = os.path.join(REPO, '.cache', 'pyroot')
_link = os.path.join(PYROOT, 'ansible_collections', 'fleetgpu', 'passthrough')
if not os.path.exists(_link):
    os.makedirs(os.path.dirname(_link), exist_ok=True)
    os.symlink(REPO, _link)
    for init in (os.path.join(PYROOT, 'ansible_collections', '__init__.py'),
                 os.path.join(PYROOT, 'ansible_collections', 'fleetgpu', '__init__.py')):
        with open(init, 'a', encoding='utf-8'):
            pass
sys.path[:0] = [PYROOT, REPO, os.path.join(REPO, 'tests', 'sim')]
