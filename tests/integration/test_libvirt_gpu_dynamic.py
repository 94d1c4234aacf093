"""Role libvirt_gpu with ``binding: dynamic`` through ansible-playbook against a real (private)
libvirtd, the host read from a simulated kernel tree (shared_group: a GPU with its audio function
alone in its IOMMU group, another GPU sharing its group with a NIC, an Intel boot GPU)."""
from __future__ import annotations

import pytest

from conftest import playbook_json
from tests.integration import libvirtd as private
from tests.sim import simkernel

pytestmark = pytest.mark.skipif(private.available() is not None, reason=str(private.available()))

DOMAIN = 'gpu-vdi'
GPU, AUDIO = '0000:01:00.0', '0000:01:00.1'
SHARED_GPU, NIC, BOOT_GPU = '0000:03:00.0', '0000:03:01.0', '0000:00:02.0'

PLAY = ('- hosts: all\n  gather_facts: false\n  tasks:\n'
        '    - name: Run the role\n'
        '      ansible.builtin.include_role:\n        name: fleetgpu.passthrough.libvirt_gpu\n')


@pytest.fixture(scope='module')
def env(tmp_path_factory: pytest.TempPathFactory):
    d = private.PrivateLibvirtd()
    d.start()
    root = simkernel.materialize('shared_group', str(tmp_path_factory.mktemp('shared_group')))
    yield d, root
    d.cleanup()


@pytest.fixture()
def daemon(env):
    d, _root = env
    d.define(DOMAIN)
    yield d
    d.clear_domains()


def role_vars(env, daemon, addresses: list[str], **extra) -> dict:
    _d, root = env
    out = {'libvirt_gpu_uri': daemon.uri, 'libvirt_gpu_sysfs_root': root, 'fleetgpu_sysfs_root': root,
           'libvirt_gpu_domains': [{'name': DOMAIN, 'gpus': {'addresses': addresses}, 'binding': 'dynamic'}]}
    out.update(extra)
    return out


def hostdevs(daemon) -> dict[str, bool]:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._hostdev import DomainDefinition
    return {str(h.source): h.managed for h in DomainDefinition(daemon.domain_xml(DOMAIN)).hostdevs()}


def attach_results(proc) -> list[dict]:
    tasks = [t for t in playbook_json(proc)['tasks'] if 'Attach or remove the GPUs' in t['task']]
    assert len(tasks) == 1, [t['task'] for t in playbook_json(proc)['tasks']]
    return tasks[0]['result'].get('results', [])


def drivers(root: str) -> dict[str, str]:
    import os
    out = {}
    for addr in (GPU, AUDIO, SHARED_GPU, NIC, BOOT_GPU):
        link = os.path.join(root, 'sys', 'bus', 'pci', 'devices', addr, 'driver')
        out[addr] = os.path.basename(os.readlink(link)) if os.path.islink(link) else ''
    return out


def test_dynamic_gpu_gets_every_function_of_its_group_managed_check_real_repeat(run_playbook, env, daemon) -> None:
    _d, root = env
    before = drivers(root)
    vars_ = role_vars(env, daemon, [GPU])
    check = run_playbook(PLAY, extra_vars=vars_, args=('--check', '--diff'))
    assert check.returncode == 0, check.stdout + check.stderr
    assert hostdevs(daemon) == {}  # check mode wrote nothing
    [predicted] = attach_results(check)
    assert predicted['changed'] is True
    # the GPU and its HDMI audio function: the whole IOMMU group, both managed by libvirt
    assert {h['address']: h['managed'] for h in predicted['hostdevs']} == {GPU: True, AUDIO: True}

    real = run_playbook(PLAY, extra_vars=vars_)
    assert real.returncode == 0, real.stdout + real.stderr
    [done] = attach_results(real)
    assert done['changed'] is True and done['hostdevs'] == predicted['hostdevs']
    assert hostdevs(daemon) == {GPU: True, AUDIO: True}
    # nothing left its host driver: libvirt moves the group when the domain starts
    assert drivers(root) == before

    again = run_playbook(PLAY, extra_vars=vars_)
    assert again.returncode == 0, again.stdout + again.stderr
    assert attach_results(again) == []  # settled: libvirt_hostdev is not even run
    assert playbook_json(again)['stats']['localhost']['changed'] == 0
    again_check = run_playbook(PLAY, extra_vars=vars_, args=('--check',))
    assert again_check.returncode == 0 and playbook_json(again_check)['stats']['localhost']['changed'] == 0

    gone = run_playbook(PLAY, extra_vars=role_vars(env, daemon, [GPU], libvirt_gpu_state='absent'))
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert hostdevs(daemon) == {}


def test_a_static_domain_keeps_unmanaged_hostdevs(run_playbook, env, daemon) -> None:
    vars_ = role_vars(env, daemon, [GPU])
    vars_['libvirt_gpu_domains'][0]['binding'] = 'static'
    proc = run_playbook(PLAY, extra_vars=vars_)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert hostdevs(daemon) == {GPU: False, AUDIO: False}
    checked = [t for t in playbook_json(proc)['tasks'] if 'dynamic GPU' in t['task'] and t['action'].endswith('vfio_bind')]
    assert checked and checked[0]['result'].get('results', []) == []  # no dynamic domain: nothing checked


# A facts entry as gpu_facts would give for the shared GPU if its group held only GPU functions.
STALE_FACTS = {'host': {'cpu_vendor': 'intel', 'iommu_enabled': True}, 'gpus': [
    {'address': SHARED_GPU, 'vendor_id': '10de', 'device_id': '1287', 'vendor_device': '10de:1287',
     'vendor_name': 'NVIDIA Corporation', 'device_name': 'GK208B', 'class': '0x030000', 'state': 'available',
     'boot_vga': False, 'numa_node': 0, 'state_reasons': [],
     'companions': [{'address': '0000:03:00.1', 'vendor_id': '10de', 'device_id': '0e0f', 'kind': 'audio'}]}]}


@pytest.mark.parametrize('facts', [None, STALE_FACTS], ids=['placement', 'group-check'])
def test_dynamic_gpu_whose_group_holds_a_host_device_is_refused_before_any_change(
        run_playbook, env, daemon, facts) -> None:
    """The NIC behind the same PCIe-to-PCI bridge would have to leave the host with the GPU.

    With the host's facts the placement already refuses the GPU (its group is not viable); with
    facts that claim otherwise the group check (vfio_bind's, in check mode) reads the kernel and refuses."""
    _d, root = env
    before = drivers(root)
    extra = {'libvirt_gpu_facts': facts} if facts else {}
    for args in (('--check',), ()):
        proc = run_playbook(PLAY, extra_vars=role_vars(env, daemon, [SHARED_GPU], **extra), args=args)
        assert proc.returncode != 0, proc.stdout
        failed = [t for t in playbook_json(proc)['tasks'] if t['status'] == 'failed']
        assert len(failed) == 1, failed
        msg = failed[0]['result']['msg']
        assert "domain '%s'" % DOMAIN in msg and 'nothing was changed' in msg, msg
        assert SHARED_GPU in msg and NIC in msg, msg
        if facts:
            assert "(binding dynamic, %s)" % SHARED_GPU in msg, msg
        assert hostdevs(daemon) == {} and drivers(root) == before


def test_an_unknown_binding_is_refused_naming_the_domain(run_playbook, env, daemon) -> None:
    vars_ = role_vars(env, daemon, [GPU])
    vars_['libvirt_gpu_domains'][0]['binding'] = 'sometimes'
    proc = run_playbook(PLAY, extra_vars=vars_)
    assert proc.returncode != 0
    assert 'value of binding must be one of: static, dynamic, got: sometimes found in libvirt_gpu_domains' in proc.stdout
    assert hostdevs(daemon) == {}
