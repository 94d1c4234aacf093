#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: libvirt_domain_drain
short_description: Shut down the libvirt domains that hold PCI host devices before a reboot, and start them again
version_added: 0.1.0
description:
  - A domain given a device through VFIO cannot be live-migrated. Before its host reboots, such a domain
    has to be shut down; this module does that, and starts the same domains again afterwards.
  - O(state=drained) asks every running domain that holds a PCI host device (or the domains named in
    O(domains)) to shut down (an ACPI power-button event, C(virDomainShutdown)), and waits up to O(timeout)
    seconds for all of them to stop.
  - A domain still running after O(timeout) is a failure naming it, and the result lists the domains that
    did stop (RV(stopped)). With O(force=true) it is powered off instead (C(virDomainDestroy)), with a warning
    naming it (RV(forced)).
  - O(policy=refuse) stops nothing; it fails, before any change, when such a domain runs, naming it.
  - O(state=started) starts the domains named in O(domains) again; a domain that already runs is left as it is.
  - A guest without an operating system, or one that ignores ACPI, never shuts down on request; only
    O(force=true) stops it.
  - Which domain holds which device is the same reading as M(fleetgpu.passthrough.libvirt_gpu_info) (the live
    definition of every running domain).
author:
  - fleetgpu.passthrough contributors (@fleetgpu)
options:
  state:
    description:
      - V(drained) stops the running domains (nothing to stop is no change).
      - V(started) starts the domains of O(domains) that do not run.
    type: str
    choices: [drained, started]
    default: drained
  domains:
    description:
      - Names of the domains to stop or start.
      - With O(state=drained) and no O(domains), every running domain whose live definition holds a PCI
        host device (C(<hostdev type='pci'>)) is stopped. With O(domains), those of them that run are stopped,
        whether they hold a device or not.
      - Required with O(state=started) (the RV(stopped) list of the drained run).
      - A name libvirt does not know is a failure naming the domains that exist.
    type: list
    elements: str
  policy:
    description:
      - What O(state=drained) does with a running domain.
      - V(shutdown) shuts it down (see O(timeout) and O(force)).
      - V(refuse) changes nothing and fails when there is one to stop, naming it.
    type: str
    choices: [shutdown, refuse]
    default: shutdown
  timeout:
    description:
      - Seconds to wait, in all, for the domains asked to shut down to stop.
      - Must be greater than 0 and at most 3600.
    type: float
    default: 300.0
  force:
    description:
      - Power off (destroy) the domains still running after O(timeout), with a warning naming them.
      - Their guests have no chance to flush their disks.
    type: bool
    default: false
  uri:
    description: libvirt connection URI.
    type: str
    default: qemu:///system
attributes:
  check_mode:
    description: Whether the module can run with C(--check) and predict its changes without making them.
    support: full
    details: Check mode returns the domains it would stop or start and stops or starts none.
  diff_mode:
    description: Whether the module shows what it changes (or would change in check mode) with C(--diff).
    support: none
requirements:
  - libvirt-python and lxml on the managed host.
notes:
  - Role P(fleetgpu.passthrough.vfio_host#role) runs this module before its one reboot when
    C(vfio_host_running_vms) is V(shutdown) (V(refuse) by default), and starts the stopped domains again once
    the host passed its verification.
  - A transient domain (one without a persistent definition) is gone once stopped; the module warns that it
    cannot be started again.
seealso:
  - module: fleetgpu.passthrough.libvirt_gpu_info
  - module: fleetgpu.passthrough.libvirt_hostdev
'''

EXAMPLES = r'''
- name: Shut down the domains that hold PCI host devices (up to 5 minutes), power off those that do not stop
  fleetgpu.passthrough.libvirt_domain_drain:
    state: drained
    timeout: 300
    force: true
  register: drained

- name: Refuse to go on while a domain with a passed-through device runs
  fleetgpu.passthrough.libvirt_domain_drain:
    state: drained
    policy: refuse

- name: Start again the domains the drain stopped
  fleetgpu.passthrough.libvirt_domain_drain:
    state: started
    domains: "{{ drained.stopped }}"
'''

RETURN = r'''
state:
  description: The O(state) asked.
  returned: always
  type: str
  sample: drained
policy:
  description: The O(policy) applied.
  returned: always
  type: str
  sample: shutdown
uri:
  description: The URI used.
  returned: always
  type: str
  sample: qemu:///system
stopped:
  description:
    - Names of the domains stopped (in check mode, that would be stopped), sorted, including RV(forced).
    - On a failure after the timeout, the domains that did stop before it.
  returned: always
  type: list
  elements: str
  sample: [train01]
forced:
  description: Names of the domains powered off after O(timeout) (O(force=true)).
  returned: always
  type: list
  elements: str
  sample: []
started:
  description: Names of the domains started (in check mode, that would be started).
  returned: always
  type: list
  elements: str
  sample: []
running:
  description:
    - With O(state=started), the domains of O(domains) that run afterwards (started now or already running).
    - On a O(policy=refuse) or time-out failure, the domains still running.
  returned: always
  type: list
  elements: str
  sample: []
hostdevs:
  description: For O(state=drained), each running domain to stop -> the host PCI addresses of its live definition.
  returned: always
  type: dict
  sample: {"train01": ["0000:41:00.0", "0000:41:00.1"]}
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import (
    HAS_LXML,
    LXML_IMPORT_ERROR,
)
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_domain_drain import (
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    POLICIES,
    STATES,
    run,
)


def argument_spec() -> dict:
    return dict(
        state=dict(type='str', choices=list(STATES), default='drained'),
        domains=dict(type='list', elements='str'),
        policy=dict(type='str', choices=list(POLICIES), default='shutdown'),
        timeout=dict(type='float', default=300.0),
        force=dict(type='bool', default=False),
        uri=dict(type='str', default='qemu:///system'),
    )


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib('libvirt-python'), exception=str(LIBVIRT_IMPORT_ERROR))
    if not HAS_LXML:
        module.fail_json(msg=missing_required_lib('lxml'), exception=str(LXML_IMPORT_ERROR))
    try:
        result, warnings = run(module.params, module.check_mode)
    except FleetGpuError as exc:
        out: dict = {'stopped': [], 'forced': [], 'started': [], 'running': [], 'hostdevs': {}}
        out.update(exc.result())
        module.fail_json(**out)
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
