"""The gpu_placement filter (role libvirt_gpu): requests + facts + assignments -> devices."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.fleetgpu.passthrough.plugins.filter.gpu_placement import FilterModule, gpu_placement


def gpu(addr: str, vd: str = '10de:2204', state: str = 'available', numa: int | None = None, boot: bool = False,
        name: str = 'GA102 [GeForce RTX 3090]', reasons: list[str] | None = None) -> dict:
    vendor, device = vd.split(':')
    return {'address': addr, 'vendor_id': vendor, 'device_id': device, 'vendor_device': vd,
            'vendor_name': 'NVIDIA Corporation' if vendor == '10de' else 'Advanced Micro Devices, Inc. [AMD/ATI]',
            'device_name': name, 'subsystem_name': None, 'state': state, 'numa_node': numa, 'boot_vga': boot,
            'state_reasons': reasons or []}


FACTS = {'gpus': [
    gpu('0000:00:02.0', '8086:3e98', state='boot-vga', boot=True, name='UHD Graphics 630'),
    gpu('0000:01:00.0', numa=0),
    gpu('0000:41:00.0', numa=1, state='vfio-ready'),
    gpu('0000:42:00.0', numa=1),
    gpu('0000:43:00.0', '1002:73bf', numa=1, name='Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]'),
    gpu('0000:44:00.0', numa=1, state='in-use', reasons=['/dev/nvidia0 is open by Xorg (pid 812)']),
    gpu('0000:45:00.0', numa=0, state='unusable', reasons=['group 30 holds 0000:46:00.0 (Ethernet controller)']),
]}


def devices(result: list[dict]) -> dict[str, list[str]]:
    return {r['name']: r['devices'] for r in result}


@pytest.mark.parametrize('domains,assignments,expected', [
    # Any GPU: a vfio-ready one before one still on its host driver, never the boot GPU, never in-use / unusable.
    ([{'name': 'a', 'gpus': {'count': 1}}], {}, {'a': ['0000:41:00.0']}),
    # NUMA preference: node 1 first.
    ([{'name': 'a', 'gpus': {'count': 2}, 'numa_node': 1}], {}, {'a': ['0000:41:00.0', '0000:42:00.0']}),
    # Falls back to other nodes when the preferred one has too few.
    ([{'name': 'a', 'gpus': {'count': 2}, 'numa_node': 0}], {}, {'a': ['0000:01:00.0', '0000:41:00.0']}),
    # vendor:device match.
    ([{'name': 'a', 'gpus': {'match': {'vendor_id': '1002', 'device_id': '73BF'}, 'count': 1}}], {},
     {'a': ['0000:43:00.0']}),
    # Name regex, case-insensitive, over vendor / device names.
    ([{'name': 'a', 'gpus': {'match': {'name': 'radeon'}, 'count': 1}}], {}, {'a': ['0000:43:00.0']}),
    # Addresses (short form too).
    ([{'name': 'a', 'gpus': {'addresses': ['42:00.0']}}], {}, {'a': ['0000:42:00.0']}),
    # Two domains never get the same GPU.
    ([{'name': 'a', 'gpus': {'count': 1}}, {'name': 'b', 'gpus': {'count': 1}}], {},
     {'a': ['0000:41:00.0'], 'b': ['0000:01:00.0']}),
    # A GPU another domain holds is skipped.
    ([{'name': 'a', 'gpus': {'count': 1}}], {'0000:01:00.0': ['other']}, {'a': ['0000:41:00.0']}),
    # Idempotence: the domain keeps what it holds, even when the GPU is now in use by it.
    ([{'name': 'a', 'gpus': {'count': 1}}], {'0000:44:00.0': ['a']}, {'a': ['0000:44:00.0']}),
    ([{'name': 'a', 'gpus': {'count': 2}, 'numa_node': 1}], {'0000:01:00.0': ['a'], '0000:01:00.1': ['a']},
     {'a': ['0000:01:00.0', '0000:41:00.0']}),
    # Count 0 is a valid "nothing".
    ([{'name': 'a', 'gpus': {'count': 0}}], {}, {'a': []}),
])
def test_present(domains: list, assignments: dict, expected: dict) -> None:
    assert devices(gpu_placement(FACTS, domains, assignments)) == expected


def test_kept_and_added_are_reported_and_start_flag_passes_through() -> None:
    res = gpu_placement(FACTS, [{'name': 'a', 'gpus': {'count': 2}, 'start': True}], {'0000:42:00.0': ['a']})
    assert res == [{'name': 'a', 'devices': ['0000:41:00.0', '0000:42:00.0'], 'kept': ['0000:42:00.0'],
                    'added': ['0000:41:00.0'], 'start': True}]


@pytest.mark.parametrize('domains,assignments,expected', [
    ([{'name': 'a', 'gpus': {'count': 1}}], {'0000:41:00.0': ['a'], '0000:42:00.0': ['a']},
     {'a': ['0000:41:00.0', '0000:42:00.0']}),
    ([{'name': 'a', 'gpus': {'match': {'vendor_id': '1002'}, 'count': 1}}], {'0000:41:00.0': ['a'], '0000:43:00.0': ['a']},
     {'a': ['0000:43:00.0']}),
    ([{'name': 'a', 'gpus': {'count': 1}}], {}, {'a': []}),
])
def test_absent_gives_back_what_the_domain_holds(domains: list, assignments: dict, expected: dict) -> None:
    assert devices(gpu_placement(FACTS, domains, assignments, 'absent')) == expected


@pytest.mark.parametrize('domains,assignments,words', [
    ([{'name': 'big', 'gpus': {'count': 5}}], {},
     ["domain 'big' asks for 5 GPU(s) but only 4 can be given", 'nothing was changed',
      '3 x 10de:2204 (NVIDIA Corporation GA102 [GeForce RTX 3090])', '1 x 1002:73bf']),
    ([{'name': 'a', 'gpus': {'match': {'vendor_id': '1002', 'device_id': '73bf'}, 'count': 2}}], {},
     ["asks for 2 GPU(s) matching 1002:73bf but only 1 can be given"]),
    ([{'name': 'a', 'gpus': {'addresses': ['0000:00:02.0']}}], {}, ["asks for 0000:00:02.0, which is the boot GPU"]),
    ([{'name': 'a', 'gpus': {'addresses': ['0000:44:00.0']}}], {},
     ['which is in state in-use (/dev/nvidia0 is open by Xorg (pid 812))']),
    ([{'name': 'a', 'gpus': {'addresses': ['0000:41:00.0']}}], {'0000:41:00.0': ['b']},
     ["asks for 0000:41:00.0, which domain 'b' already holds"]),
    ([{'name': 'a', 'gpus': {'addresses': ['0000:99:00.0']}}], {}, ['0000:99:00.0, which is not a GPU on this host']),
    # Both problems reported together, the first request's GPU not silently given away.
    ([{'name': 'a', 'gpus': {'count': 4}}, {'name': 'b', 'gpus': {'count': 1}}], {},
     ["domain 'b' asks for 1 GPU(s) but only 0 can be given", 'no GPU is free on this host']),
    ([{'name': 'a', 'gpus': {}}], {}, ["domain 'a': gpus needs count"]),
    ([{'name': 'a', 'gpus': {'count': 1, 'addresses': ['01:00.0'], 'match': {'name': 'x'}}}], {}, ['not both']),
    ([{'name': 'a', 'gpus': {'addresses': ['01:00.9']}}], {}, ["'01:00.9' is not a PCI address"]),
    ([{'name': 'a', 'gpus': {'match': {'vendor_id': 'nvidia'}, 'count': 1}}], {}, ["vendor_id 'nvidia' is not four hex"]),
    # Not a regular expression: matched literally only (here: nothing).
    ([{'name': 'a', 'gpus': {'match': {'name': '('}, 'count': 1}}], {}, ["asks for 1 GPU(s) matching name '(' but only 0"]),
    ([{'name': 'a', 'gpus': {'count': 1}}, {'name': 'a', 'gpus': {'count': 1}}], {}, ['listed more than once: a']),
    ([{'gpus': {'count': 1}}], {}, ['libvirt_gpu_domains[0] needs a name']),
])
def test_errors_say_what_and_what_is_free(domains: list, assignments: dict, words: list[str]) -> None:
    with pytest.raises(AnsibleFilterError) as info:
        gpu_placement(FACTS, domains, assignments)
    for word in words:
        assert word in str(info.value)


def test_missing_facts_say_how_to_get_them() -> None:
    with pytest.raises(AnsibleFilterError, match='run fleetgpu.passthrough.gpu_facts first'):
        gpu_placement({}, [{'name': 'a', 'gpus': {'count': 1}}])


def test_filter_is_registered() -> None:
    assert FilterModule().filters()['gpu_placement'] is gpu_placement


@pytest.mark.parametrize('request_numa,pinned,expected', [
    (None, {}, ['0000:41:00.0']),
    (None, {'a': [1]}, ['0000:41:00.0']),
    (None, {'a': [0, 1]}, ['0000:41:00.0']),
    (0, {'a': [1]}, ['0000:01:00.0']),  # the request's own numa_node wins
])
def test_domain_pinning_is_the_numa_preference_when_the_request_names_none(request_numa, pinned, expected) -> None:
    entry = {'name': 'a', 'gpus': {'count': 1}}
    if request_numa is not None:
        entry['numa_node'] = request_numa
    assert devices(gpu_placement(FACTS, [entry], {}, 'present', pinned)) == {'a': expected}


# --- what a new user hit (issue 12) ---------------------------------------------------------------

def test_count_one_prefers_a_vfio_ready_gpu_over_one_on_its_host_driver() -> None:
    facts = {'gpus': [gpu('0000:01:00.0', state='available'), gpu('0000:02:00.0', state='vfio-ready')]}
    assert devices(gpu_placement(facts, [{'name': 'a', 'gpus': {'count': 1}}])) == {'a': ['0000:02:00.0']}


@pytest.mark.parametrize('name,expected', [
    ('GP104GL [Tesla P4]', ['0000:03:00.0']),           # brackets are literal, not a character class
    ('nvidia corporation gp104gl [tesla p4]', ['0000:03:00.0']),
    ('Tesla P\\d', ['0000:03:00.0']),                    # still a regular expression when it is one
])
def test_exact_names_with_brackets_match(name: str, expected: list[str]) -> None:
    facts = {'gpus': [gpu('0000:01:00.0'), gpu('0000:03:00.0', vd='10de:1bb3', name='GP104GL [Tesla P4]')]}
    res = gpu_placement(facts, [{'name': 'a', 'gpus': {'match': {'name': name}, 'count': 1}}])
    assert devices(res) == {'a': expected}


def test_a_boot_gpu_given_away_with_allow_boot_vga_can_be_placed() -> None:
    boot = gpu('0000:00:02.0', '8086:3e98', state='boot-vga', boot=True, name='UHD Graphics 630',
               reasons=['0000:00:02.0 is the boot VGA device'])
    busy = gpu('0000:00:03.0', '8086:3e98', state='boot-vga', boot=True, name='UHD Graphics 630',
               reasons=['0000:00:03.0 is the boot VGA device', '/dev/dri/card0 is open by process 1 (Xorg)'])
    facts = {'gpus': [boot]}
    req = [{'name': 'a', 'gpus': {'addresses': ['00:02.0']}}]
    with pytest.raises(AnsibleFilterError, match='which is the boot GPU'):
        gpu_placement(facts, req)
    assert devices(gpu_placement(facts, req, allow_boot_vga=True)) == {'a': ['0000:00:02.0']}
    assert devices(gpu_placement(facts, [{'name': 'a', 'gpus': {'count': 1}}], {}, 'present', {}, True)) == \
        {'a': ['0000:00:02.0']}
    with pytest.raises(AnsibleFilterError, match='open by process 1'):
        gpu_placement({'gpus': [busy]}, [{'name': 'a', 'gpus': {'addresses': ['00:03.0']}}], allow_boot_vga=True)


@pytest.mark.parametrize('domains,assignments,numa,words', [
    ([{'name': 'a', 'gpus': {'count': 1}, 'numa_node': 'one'}], {}, {},
     ["domain 'a' (libvirt_gpu_domains[0].numa_node): 'one' is not a NUMA node number"]),
    ([{'name': 'a', 'gpus': [{'count': 1}]}], {}, {}, ["domain 'a' (libvirt_gpu_domains[0].gpus): gpus must be a mapping", 'got a list']),
    ([{'name': 'a', 'gpus': {'match': ['10de'], 'count': 1}}], {}, {}, ['libvirt_gpu_domains[0].gpus.match', 'got a list']),
    ([{'name': 'a', 'gpus': {'addresses': '01:00.0'}}], {}, {}, ['libvirt_gpu_domains[0].gpus.addresses', 'got a str']),
    ([{'name': 'a', 'gpus': {'count': [1]}}], {}, {}, ['libvirt_gpu_domains[0].gpus.count', 'is not a number']),
    (['a'], {}, {}, ['libvirt_gpu_domains[0] must be a mapping with name and gpus, got a str']),
    ({'name': 'a'}, {}, {}, ['libvirt_gpu_domains must be a list of domains, got a dict']),
    ([{'name': 'a', 'gpus': {'count': 1}}], ['0000:01:00.0'], {}, ['assignments must be a mapping', 'got a list']),
    ([{'name': 'a', 'gpus': {'count': 1}}], {'0000:01:00.0': 'b'}, {}, ['assignments[0000:01:00.0] must be a list']),
    ([{'name': 'a', 'gpus': {'count': 1}}], {}, [1], ['numa must be a mapping', 'got a list']),
    ([{'name': 'a', 'gpus': {'count': 1}}], {}, {'a': 'one'}, ["numa[a] must be a list of NUMA node numbers, got 'one'"]),
])
def test_malformed_inputs_name_the_path(domains, assignments, numa, words: list[str]) -> None:
    with pytest.raises(AnsibleFilterError) as info:
        gpu_placement(FACTS, domains, assignments, 'present', numa)
    for word in words:
        assert word in str(info.value)


def test_domain_xml_passes_through() -> None:
    res = gpu_placement(FACTS, [{'name': 'a', 'gpus': {'count': 1}, 'domain_xml': '<domain/>'}])
    assert res[0]['domain_xml'] == '<domain/>'


def test_a_quarantined_gpu_is_never_handed_out_and_asking_for_it_names_the_reason() -> None:
    sick = dict(gpu('0000:02:00.0', state='vfio-ready'),
                quarantined={'address': '0000:02:00.0', 'reason': 'its config space reads vendor id ffff'})
    facts = {'gpus': [gpu('0000:01:00.0', state='available'), sick]}
    # the vfio-ready GPU would come first, but it is quarantined
    assert devices(gpu_placement(facts, [{'name': 'a', 'gpus': {'count': 1}}])) == {'a': ['0000:01:00.0']}
    with pytest.raises(AnsibleFilterError) as info:
        gpu_placement(facts, [{'name': 'a', 'gpus': {'addresses': ['0000:02:00.0']}}])
    assert '0000:02:00.0, which is quarantined (its config space reads vendor id ffff)' in str(info.value)


def test_binding_dynamic_passes_through_and_static_is_the_default() -> None:
    res = gpu_placement(FACTS, [{'name': 'a', 'gpus': {'count': 1}, 'binding': 'dynamic'},
                                {'name': 'b', 'gpus': {'count': 1}, 'binding': 'static'},
                                {'name': 'c', 'gpus': {'count': 1}}])
    assert [r.get('binding') for r in res] == ['dynamic', None, None]


def test_an_unknown_binding_names_the_domain_and_the_path() -> None:
    with pytest.raises(AnsibleFilterError, match=r"domain 'a' \(libvirt_gpu_domains\[0\]\.binding\): 'live' is not one of "
                                                 r"static, dynamic"):
        gpu_placement(FACTS, [{'name': 'a', 'gpus': {'count': 1}, 'binding': 'live'}])
