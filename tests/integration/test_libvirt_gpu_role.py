"""Role libvirt_gpu through ansible-playbook against a real (private) libvirtd, with simulated
gpu_facts input and the companions read from a simulated kernel tree."""
from __future__ import annotations

import json

import pytest

from conftest import playbook_json
from tests.integration import libvirtd as private
from tests.sim import simkernel

pytestmark = pytest.mark.skipif(private.available() is not None, reason=str(private.available()))

DOMAINS = ('gpu-train', 'gpu-infer', 'gpu-desk')


def gpu(addr: str, numa: int, state: str = 'vfio-ready', boot: bool = False, vd: str = '10de:20b2') -> dict:
    vendor, device = vd.split(':')
    return {'address': addr, 'vendor_id': vendor, 'device_id': device, 'vendor_device': vd,
            'vendor_name': 'NVIDIA Corporation' if vendor == '10de' else 'ASPEED Technology, Inc.',
            'device_name': 'GA100 [A100 SXM4 80GB]' if vendor == '10de' else 'ASPEED Graphics Family',
            'class': '0x030200', 'state': state, 'boot_vga': boot, 'numa_node': numa, 'state_reasons': []}


# What gpu_facts reports for the hgx8 tree (its NVIDIA GPUs), NUMA nodes made distinct.
FACTS = {'host': {'cpu_vendor': 'intel', 'iommu_enabled': True}, 'gpus': [
    gpu('0000:03:00.0', 0, state='boot-vga', boot=True, vd='1a03:2000'),
    gpu('0000:13:00.0', 0), gpu('0000:14:00.0', 0), gpu('0000:33:00.0', 0), gpu('0000:34:00.0', 0, state='in-use'),
    gpu('0000:83:00.0', 1), gpu('0000:84:00.0', 1),
]}


@pytest.fixture(scope='module')
def env(tmp_path_factory: pytest.TempPathFactory):
    d = private.PrivateLibvirtd()
    d.start()
    root = simkernel.materialize('hgx8', str(tmp_path_factory.mktemp('hgx8')))
    yield d, root
    d.cleanup()


@pytest.fixture()
def daemon(env):
    d, _root = env
    for name in DOMAINS:
        d.define(name)
    yield d
    d.clear_domains()


def play(**role_vars) -> str:
    return ('- hosts: all\n  gather_facts: false\n  tasks:\n'
            '    - name: Run the role\n'
            '      ansible.builtin.include_role:\n        name: fleetgpu.passthrough.libvirt_gpu\n'
            '    - name: Show the placement\n'
            '      ansible.builtin.debug:\n        var: libvirt_gpu_placement\n')


def sources(daemon, name: str) -> list[str]:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import DomainDefinition
    return [str(a) for a in DomainDefinition(daemon.domain_xml(name)).sources()]


def role_vars(env, daemon, domains: list, **extra) -> dict:
    _d, root = env
    out = {'libvirt_gpu_uri': daemon.uri, 'libvirt_gpu_facts': FACTS, 'libvirt_gpu_sysfs_root': root,
           'libvirt_gpu_domains': domains}
    out.update(extra)
    return out


def attach_results(proc) -> list[dict]:
    """The per-domain results of the role's attach task (a loop)."""
    doc = playbook_json(proc)
    tasks = [t for t in doc['tasks'] if 'Attach or remove the GPUs' in t['task']]
    assert len(tasks) == 1, [t['task'] for t in doc['tasks']]
    return [{'result': r} for r in tasks[0]['result'].get('results', [])]


def placement(proc) -> list[dict]:
    doc = playbook_json(proc)
    return [t for t in doc['tasks'] if t['task'] == 'Show the placement'][-1]['result']['libvirt_gpu_placement']


REQUESTS = [
    {'name': 'gpu-train', 'gpus': {'count': 2}, 'numa_node': 1},
    {'name': 'gpu-infer', 'gpus': {'match': {'vendor_id': '10de', 'device_id': '20b2'}, 'count': 1}},
    {'name': 'gpu-desk', 'gpus': {'addresses': ['0000:14:00.0']}},
]


def test_role_places_attaches_and_is_idempotent(run_playbook, env, daemon) -> None:
    vars_ = role_vars(env, daemon, REQUESTS)
    check = run_playbook(play(), extra_vars=vars_, args=('--check',))
    assert check.returncode == 0, check.stdout + check.stderr
    assert all(sources(daemon, n) == [] for n in DOMAINS)  # check mode defined nothing
    assert [r['result']['changed'] for r in attach_results(check)] == [True, True, True]

    first = run_playbook(play(), extra_vars=vars_)
    assert first.returncode == 0, first.stdout + first.stderr
    # NUMA node 1 first for gpu-train; gpu-infer gets the first free 10de:20b2; gpu-desk its address.
    assert sources(daemon, 'gpu-train') == ['0000:83:00.0', '0000:84:00.0']
    assert sources(daemon, 'gpu-infer') == ['0000:13:00.0']
    assert sources(daemon, 'gpu-desk') == ['0000:14:00.0']
    assert [(p['name'], p['devices'], p['changed']) for p in placement(first)] == [
        ('gpu-train', ['0000:83:00.0', '0000:84:00.0'], True),
        ('gpu-infer', ['0000:13:00.0'], True),
        ('gpu-desk', ['0000:14:00.0'], True)]

    # Second run: the domains keep their GPUs, nothing changes.
    second = run_playbook(play(), extra_vars=vars_)
    assert second.returncode == 0, second.stdout + second.stderr
    # libvirt_gpu_info showed every domain as asked: libvirt_hostdev is not run for any of them
    assert attach_results(second) == []
    assert [p['changed'] for p in placement(second)] == [False, False, False]
    assert [p['kept'] for p in placement(second)] == [['0000:83:00.0', '0000:84:00.0'], ['0000:13:00.0'], ['0000:14:00.0']]
    assert playbook_json(second)['stats']['localhost']['changed'] == 0

    # Absent gives them back.
    gone = run_playbook(play(), extra_vars=dict(vars_, libvirt_gpu_state='absent'))
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert all(sources(daemon, n) == [] for n in DOMAINS)


def test_role_fails_before_any_change_when_the_host_cannot_satisfy(run_playbook, env, daemon) -> None:
    requests = [
        {'name': 'gpu-train', 'gpus': {'count': 2}},
        {'name': 'gpu-infer', 'gpus': {'count': 4}},
    ]
    proc = run_playbook(play(), extra_vars=role_vars(env, daemon, requests))
    assert proc.returncode != 0
    failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
    msg = failed[0]['result']['msg']
    assert "domain 'gpu-infer' asks for 4 GPU(s) but only 3 can be given" in msg, msg
    assert ('free on this host once the domains listed before it are served: '
            '3 x 10de:20b2 (NVIDIA Corporation GA100 [A100 SXM4 80GB])') in msg, msg
    assert 'nothing was changed' in msg
    assert all(sources(daemon, n) == [] for n in DOMAINS)


def test_role_alone_refuses_a_host_without_libvirt_python_before_any_change(
        run_playbook, env, daemon, tmp_path) -> None:
    """Used without role vfio_host before it, the role checks the binding and lxml itself."""
    shadow = tmp_path / 'shadow'
    shadow.mkdir()
    (shadow / 'libvirt.py').write_text('raise ImportError("simulated: libvirt-python is not installed")\n')
    proc = run_playbook(play(), extra_vars=role_vars(env, daemon, [{'name': 'gpu-train', 'gpus': {'count': 1}}]),
                        env={'PYTHONPATH': str(shadow)})
    assert proc.returncode != 0
    failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
    msg = failed[0]['result']['msg']
    assert failed[0]['task'].endswith('Refuse, before any change, a host whose Python lacks them'), failed[0]['task']
    assert 'cannot import libvirt, which libvirt_gpu needs; nothing was changed' in msg, msg
    assert 'python3-libvirt and python3-lxml on Debian' in msg and 'vfio_host_install_libvirt_python' in msg, msg
    assert all(sources(daemon, n) == [] for n in DOMAINS)


def test_role_refuses_a_missing_domain_and_missing_facts(run_playbook, env, daemon) -> None:
    proc = run_playbook(play(), extra_vars=role_vars(env, daemon, [{'name': 'not-defined', 'gpus': {'count': 1}}]))
    assert proc.returncode != 0
    failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
    assert "domain 'not-defined' is not defined at %s" % daemon.uri in json.dumps(failed[0]['result'])

    proc = run_playbook(play(), extra_vars=role_vars(env, daemon, REQUESTS, libvirt_gpu_facts={}))
    assert proc.returncode != 0
    failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
    assert 'run fleetgpu.passthrough.gpu_facts' in failed[0]['result']['msg']


def test_role_gathers_the_facts_itself_when_the_play_has_not(run_playbook, env, daemon) -> None:
    """restore.yml runs the role with state absent in a play that never ran gpu_facts."""
    attach = run_playbook(play(), extra_vars=role_vars(env, daemon, [REQUESTS[2]]))
    assert attach.returncode == 0, attach.stdout + attach.stderr
    assert sources(daemon, 'gpu-desk') == ['0000:14:00.0']
    no_facts = role_vars(env, daemon, [REQUESTS[2]], libvirt_gpu_state='absent')
    del no_facts['libvirt_gpu_facts']
    proc = run_playbook(play(), extra_vars=no_facts)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    gathered = [t for t in playbook_json(proc)['tasks'] if 'Gather the GPU facts' in t['task']]
    assert gathered and gathered[0]['status'] == 'ok'
    assert sources(daemon, 'gpu-desk') == []


def test_role_prefers_the_numa_node_the_domain_is_pinned_to(run_playbook, env, daemon) -> None:
    pinned = private.domain_xml('gpu-infer').replace(
        '<devices>', '<numatune><memory mode="strict" nodeset="1"/></numatune><devices>')
    conn = daemon.connect()
    try:
        conn.lookupByName('gpu-infer').undefine()
    finally:
        conn.close()
    daemon.define('gpu-infer', pinned)
    proc = run_playbook(play(), extra_vars=role_vars(env, daemon, [{'name': 'gpu-infer', 'gpus': {'count': 1}}]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sources(daemon, 'gpu-infer') == ['0000:83:00.0']


def test_role_wires_a_domain_for_its_gpus_check_real_repeat(run_playbook, env, daemon) -> None:
    """libvirt_gpu_domains[].wiring reaches libvirt_hostdev: the domain's vCPU, emulator and memory
    go to the node of the GPUs placed for it (node 1 of hgx8: CPUs 8-15), its MMIO window holds
    their BARs; check mode predicts it and defines nothing; a second run changes nothing."""
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import DomainDefinition
    requests = [{'name': 'gpu-train', 'gpus': {'count': 2}, 'numa_node': 1, 'wiring': {'numa_mode': 'preferred'}}]
    vars_ = role_vars(env, daemon, requests)
    check = run_playbook(play(), extra_vars=vars_, args=('--check',))
    assert check.returncode == 0, check.stdout + check.stderr
    assert '<numatune' not in daemon.domain_xml('gpu-train')
    predicted = attach_results(check)[0]['result']['wiring']
    first = run_playbook(play(), extra_vars=vars_)
    assert first.returncode == 0, first.stdout + first.stderr
    wired = attach_results(first)[0]['result']['wiring']
    assert predicted == wired
    assert (wired['node'], wired['vcpu_pins'], wired['emulator_cpus']) == (1, {'0': 15}, '8-14')
    assert (wired['numatune'], wired['mmio64_mib']) == ({'mode': 'preferred', 'nodeset': '1'}, 512 * 1024)
    root = DomainDefinition(daemon.domain_xml('gpu-train')).root
    assert dict(root.find('numatune/memory').attrib) == {'mode': 'preferred', 'nodeset': '1'}
    assert root.find('cputune/vcpupin').get('cpuset') == '15'
    second = run_playbook(play(), extra_vars=vars_)
    assert second.returncode == 0, second.stdout + second.stderr
    assert playbook_json(second)['stats']['localhost']['changed'] == 0


def test_role_names_an_unknown_wiring_key_before_any_change(run_playbook, env, daemon) -> None:
    requests = [{'name': 'gpu-train', 'gpus': {'count': 1}, 'wiring': {'hugepage': '1G'}}]
    proc = run_playbook(play(), extra_vars=role_vars(env, daemon, requests))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert 'hugepage' in out and 'Traceback' not in out
    assert sources(daemon, 'gpu-train') == []


def test_role_passes_its_unplug_timeout_to_the_live_detach(run_playbook, env, daemon) -> None:
    """libvirt_gpu_unplug_timeout reaches libvirt_hostdev (the live detach's wait): a negative value is
    refused by the module, naming the option, before anything is detached."""
    vars_ = role_vars(env, daemon, REQUESTS[2:])
    assert run_playbook(play(), extra_vars=vars_).returncode == 0
    assert sources(daemon, 'gpu-desk') == ['0000:14:00.0']
    bad = run_playbook(play(), extra_vars=dict(vars_, libvirt_gpu_state='absent', libvirt_gpu_where='both',
                                               libvirt_gpu_unplug_timeout=-1))
    assert bad.returncode != 0
    failed = [t for t in playbook_json(bad)['tasks'] if t['status'] == 'failed']
    assert failed and 'unplug_timeout must be 0 or more seconds, got -1' in json.dumps(failed[0]['result']), failed
    assert sources(daemon, 'gpu-desk') == ['0000:14:00.0']
    gone = run_playbook(play(), extra_vars=dict(vars_, libvirt_gpu_state='absent', libvirt_gpu_where='both',
                                                libvirt_gpu_unplug_timeout=5))
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert sources(daemon, 'gpu-desk') == []
