# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Options shared by every module that reads the kernel.
    DOCUMENTATION = r'''
options:
  sysfs_root:
    description:
      - Where the kernel's sysfs tree is mounted.
      - The proc and dev trees are taken from the same parent directory, so C(/host/sys) means
        C(/host/proc) and C(/host/dev). This lets the module read a host's kernel from a container
        that mounts it elsewhere, and lets tests point it at a simulated tree.
    type: path
    default: /sys
  timeout:
    description:
      - Seconds to wait for one sysfs access that may block on a device lock (for example
        C(driver_override) of a device whose driver is stuck in its probe).
      - A device whose access does not return in time is reported as stuck instead of hanging the play.
      - Must be greater than 0 and at most 3600; C(inf), C(nan), C(1e300), C(0) and negative values are refused
        with that range (one validation shared by every module).
    type: float
    default: 5.0
'''

    # Attributes of a module that only reads and never changes anything.
    INFO_MODULE = r'''
attributes:
  check_mode:
    description: Whether the module can run with C(--check) and predict its changes without making them.
    support: full
    details: This module never changes anything.
  diff_mode:
    description: Whether the module shows what it changes (or would change in check mode) with C(--diff).
    support: N/A
    details: This module never changes anything.
'''

    FACTS_MODULE = r'''
attributes:
  check_mode:
    description: Whether the module can run with C(--check) and predict its changes without making them.
    support: full
    details: This module never changes anything.
  diff_mode:
    description: Whether the module shows what it changes (or would change in check mode) with C(--diff).
    support: N/A
    details: This module never changes anything.
  facts:
    description: Whether the module returns C(ansible_facts) that the play adds to the host's facts.
    support: full
'''

    # Attributes of a module that changes the host.
    ACTION_MODULE = r'''
attributes:
  check_mode:
    description: Whether the module can run with C(--check) and predict its changes without making them.
    support: full
    details: Check mode returns the plan of what would change and writes nothing.
  diff_mode:
    description: Whether the module shows what it changes (or would change in check mode) with C(--diff).
    support: full
'''
