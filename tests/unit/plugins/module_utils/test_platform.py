"""Where KVM passthrough cannot apply (module_utils/_platform.py, filter kvm_refusal): one message per host."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.filter.kvm_refusal import FilterModule
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._platform import refusal

LINUX_KVM = {'system': 'Linux', 'os_family': 'Debian', 'virtualization_role': 'host', 'virtualization_type': 'kvm',
             'virtualization_tech_host': ['kvm'], 'gpu_passthrough': {'host': {'virtualization': 'vmx'}}}


def facts(**kw: object) -> dict:
    out = dict(LINUX_KVM)
    out.update(kw)
    return out


@pytest.mark.parametrize('given', [
    facts(),
    # our QEMU test hosts: KVM guests (nested VFIO through a vIOMMU), under TCG without /dev/kvm
    facts(virtualization_role='guest', virtualization_type='kvm'),
    facts(virtualization_role='guest', virtualization_type='kvm', virtualization_tech_host=[]),
    # a container on a KVM host (the unit-test machine) shares the host's kernel
    facts(virtualization_role='guest', virtualization_type='docker', virtualization_tech_host=['kvm']),
    facts(virtualization_role='guest', virtualization_type='docker', virtualization_tech_host=[]),
    # /dev/kvm unknown (the virtual facts were not gathered)
    facts(virtualization_role=None, virtualization_tech_host=[]),
    # facts not gathered are not guessed (a role run gathers only the distribution subset)
    {'os_family': 'Debian', 'gpu_passthrough': {'host': {'virtualization': 'svm'}}},
    {},
    None,
])
def test_allowed(given: object) -> None:
    assert refusal(given) == ''


@pytest.mark.parametrize('given, fragments', [
    (facts(system='Darwin', os_family='Darwin'), ['macOS has neither KVM nor VFIO', 'Metal via Venus / virtio-gpu',
                                                  'ansible_system Darwin']),
    (facts(system='Win32NT', os_family='Windows'), ['Windows has neither KVM nor VFIO', 'GPU partitioning (GPU-P)',
                                                    'Discrete Device Assignment (DDA']),
    ({'os_family': 'Windows'}, ['Windows has neither KVM nor VFIO']),
    (facts(system='FreeBSD'), ['VFIO) exists on Linux only; this host runs FreeBSD']),
    (facts(virtualization_role='guest', virtualization_type='virtualbox'),
     ['itself a virtualbox guest', 'VirtualBox offers its guests no supported GPU passthrough']),
    (facts(virtualization_role='guest', virtualization_type='parallels'), ['Parallels Desktop passes no PCI device']),
    (facts(virtualization_role='guest', virtualization_type='VirtualPC'), ['Hyper-V guest', 'GPU-P', 'DDA']),
    (facts(virtualization_role='guest', virtualization_type='VMware'), ['nested passthrough is not supported under VMware']),
    (facts(gpu_passthrough={'host': {'virtualization': None}}), ['no vmx or svm flag']),
    (facts(virtualization_tech_host=[]), ['there is no /dev/kvm', 'kvm_intel or kvm_amd']),
])
def test_refused_with_what_is_supported_and_what_to_use(given: dict, fragments: list[str]) -> None:
    message = refusal(given)
    assert message.startswith('KVM GPU passthrough cannot apply on this host: ')
    assert 'supported: a Linux host with KVM' in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_vmware_host_is_a_host_not_a_guest() -> None:
    # ansible reports an ESXi-style host role as "host": only a guest is refused for its hypervisor
    assert refusal(facts(virtualization_role='host', virtualization_type='VMware')) == ''


def test_the_filter_is_the_function() -> None:
    f = FilterModule().filters()['kvm_refusal']
    assert f(facts(system='Darwin')) == refusal(facts(system='Darwin')) != ''


def test_gpu_facts_refuses_macos_itself(tmp_path: Path) -> None:
    """On macOS the module stops at once with the same message (a sitecustomize makes this Python "Darwin")."""
    repo = Path(__file__).resolve().parents[4]
    (tmp_path / 'sitecustomize.py').write_text('import platform\nplatform.system = lambda: "Darwin"\n')
    argfile = tmp_path / 'args.json'
    argfile.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': {}}))
    env = dict(os.environ, PYTHONPATH='%s:%s' % (tmp_path, repo / '.cache' / 'pyroot'))
    proc = subprocess.run([sys.executable, str(repo / 'plugins' / 'modules' / 'gpu_facts.py'), str(argfile)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert 'Traceback' not in proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert proc.returncode != 0 and out['failed'] is True
    assert out['msg'] == refusal({'system': 'Darwin'})
    assert 'Metal via Venus' in out['msg']
