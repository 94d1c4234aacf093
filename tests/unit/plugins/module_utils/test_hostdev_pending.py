"""Which domains of a libvirt_gpu plan still need libvirt_hostdev, judged from one libvirt_gpu_info read.

A domain is left out only when libvirt_hostdev would certainly change nothing; every other case
is kept (libvirt_hostdev decides), so check mode stays exact. Each case below is one reason to keep.
"""
from __future__ import annotations

import copy

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.filter.hostdev_pending import hostdev_pending
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev_pending import pending

FACTS = {'gpus': [
    {'address': '0000:41:00.0', 'companions': [{'address': '0000:41:00.1'}]},
    {'address': '0000:81:00.0', 'companions': []},
]}


def hostdev(addr: str, guest: str | None, managed: bool = False, multifunction: bool = False) -> dict:
    return {'address': addr, 'guest_address': guest, 'managed': managed, 'multifunction': multifunction, 'rom': None}


SETTLED = [hostdev('0000:41:00.0', '0000:07:00.0', multifunction=True), hostdev('0000:41:00.1', '0000:07:00.1')]


def info(config: list | None = None, active: bool = False, persistent: bool = True, name: str = 'vm1') -> dict:
    return {'available': True, 'domains': [
        {'name': name, 'active': active, 'persistent': persistent, 'hostdevs': [],
         'config_hostdevs': copy.deepcopy(SETTLED if config is None else config), 'numa_nodes': []}]}


PLAN = [{'name': 'vm1', 'devices': ['0000:41:00.0'], 'start': False}]


def test_a_domain_that_already_holds_its_gpu_and_companion_is_left_alone() -> None:
    assert pending(PLAN, info(), FACTS) == []
    assert hostdev_pending(PLAN, info(), FACTS) == []   # the filter is the same judgement


@pytest.mark.parametrize('why, plan, read, kwargs', [
    ('domain not defined yet (domain_xml)', PLAN, info(name='other'), {}),
    ('transient domain', PLAN, info(persistent=False), {}),
    ('companion missing', PLAN, info(config=SETTLED[:1]), {}),
    ('GPU missing', PLAN, info(config=SETTLED[1:]), {}),
    ('managed differs', PLAN, info(), {'managed': True}),
    ('no guest address yet', PLAN,
     info(config=[hostdev('0000:41:00.0', None), hostdev('0000:41:00.1', '0000:07:00.1')]), {}),
    ('function 0 not marked multifunction', PLAN,
     info(config=[hostdev('0000:41:00.0', '0000:07:00.0'), hostdev('0000:41:00.1', '0000:07:00.1')]), {}),
    ('wiring to compare', [dict(PLAN[0], wiring={'pin_cpus': True})], info(), {}),
    ('live change', PLAN, info(), {'where': 'both'}),
    ('to start', [dict(PLAN[0], start=True)], info(active=False), {}),
    ('slot unknown to gpu_facts', [{'name': 'vm1', 'devices': ['0000:c1:00.0'], 'start': False}], info(), {}),
    ('GPUs to give back', PLAN, info(), {'state': 'absent'}),
])
def test_every_domain_libvirt_hostdev_may_change_is_kept(why: str, plan: list, read: dict, kwargs: dict) -> None:
    assert pending(plan, read, FACTS, **kwargs) == plan, why


def test_started_domain_companions_off_and_nothing_to_give_back_are_left_alone() -> None:
    assert pending([dict(PLAN[0], start=True)], info(active=True), FACTS) == []
    alone = [hostdev('0000:81:00.0', '0000:08:00.0')]
    assert pending([{'name': 'vm1', 'devices': ['0000:81:00.0']}], info(config=alone), FACTS) == []
    # companions=false: the GPU alone is asked, the companion is not looked for
    assert pending(PLAN, info(config=SETTLED), FACTS, companions=False) == []
    assert pending([{'name': 'vm1', 'devices': []}], info(config=[]), FACTS, state='absent') == []


def test_the_kept_entries_stay_in_plan_order_and_untouched() -> None:
    read = info()
    read['domains'].append({'name': 'vm0', 'active': False, 'persistent': True, 'hostdevs': [],
                            'config_hostdevs': [], 'numa_nodes': []})
    plan = [{'name': 'vm0', 'devices': ['0000:81:00.0'], 'start': False}, PLAN[0],
            {'name': 'vm2', 'devices': ['0000:81:00.0'], 'start': False}]
    assert pending(plan, read, FACTS) == [plan[0], plan[2]]
    assert pending(plan, {}, {}) == plan   # nothing read: every entry goes to libvirt_hostdev


def test_a_dynamic_domain_is_settled_only_with_every_function_managed() -> None:
    dynamic = [dict(PLAN[0], binding='dynamic')]
    # unmanaged hostdevs (a static attach): libvirt_hostdev must make them managed
    assert pending(dynamic, info(), FACTS) == dynamic
    managed = [dict(h, managed=True) for h in SETTLED]
    assert pending(dynamic, info(config=managed), FACTS) == []
    # the companion is part of the group: companions=false does not drop it for a dynamic domain
    assert pending(dynamic, info(config=managed[:1]), FACTS, companions=False) == dynamic
