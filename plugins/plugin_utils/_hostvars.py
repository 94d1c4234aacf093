# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: what an earlier play registered for a host, read from hostvars."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleUndefinedVariable


def hostvar(hostvars: Mapping[str, Any], host: str, name: str) -> object:
    """The variable ``name`` of ``host``, or None when the host or the variable is missing or undefined,
    or holds something other than plain data (a registered result is a dict)."""
    try:
        value = hostvars[host][name]
    except (KeyError, TypeError, AnsibleUndefinedVariable):
        return None
    return value if isinstance(value, (dict, list, str, bool, int, float)) else None
