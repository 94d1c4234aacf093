"""libvirt_gpu_info's reader on a host whose Python lacks the libvirt binding: virsh, and its faults.

The same reader against a real libvirtd (both ways, compared) is in
tests/integration/test_fleet_playbooks.py; these are the answers a daemon does not give on demand.
"""
from __future__ import annotations

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import libvirt_gpu_info as _libvirt_info

URI = 'qemu:///system'
MDEV = "<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='%s'/></source></hostdev>"


@pytest.fixture()
def no_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_libvirt_info, 'HAS_LIBVIRT', False)


def _runner(answers: dict):
    calls = []

    def run(argv: list) -> tuple:
        assert argv[:5] == ['/usr/bin/virsh', '--readonly', '--quiet', '-c', URI], argv
        calls.append(argv[5:])
        return answers.get(' '.join(argv[5:]), (1, '', 'error: failed to get domain %r' % argv[-1]))
    return run, calls


def test_no_binding_and_no_virsh_is_reported_not_failed(no_binding: None) -> None:
    out = _libvirt_info.read(URI, run=None, virsh=None)
    assert out['available'] is False and out['domains'] == [] and out['via'] is None
    assert out['python_modules_missing'][0] == 'libvirt'
    assert 'virsh (the libvirt client) is not there' in str(out['error'])


def test_daemon_not_answering_through_virsh(no_binding: None) -> None:
    run, _calls = _runner({'list --all --name': (1, '', 'error: failed to connect to the hypervisor\n')})
    out = _libvirt_info.read(URI, run=run, virsh='/usr/bin/virsh')
    assert out['available'] is False and out['via'] == 'virsh'
    assert out['error'] == 'no libvirt at qemu:///system (virsh): error: failed to connect to the hypervisor'


def test_a_domain_that_vanishes_while_listed_is_left_out_and_a_transient_one_is_read_live(no_binding: None) -> None:
    xml = ("<domain type='kvm'><name>kept</name><devices><hostdev mode='subsystem' type='pci'><source>"
           "<address domain='0x0000' bus='0x81' slot='0x00' function='0x0'/></source></hostdev></devices></domain>")
    run, calls = _runner({
        'list --all --name': (0, 'kept\ngone\nlive\n\n', ''),
        'dominfo kept': (0, 'Id:             -\nName:           kept\nState:          shut off\nPersistent:     yes\n', ''),
        # a stopped domain's definition also names a mediated device (upper case in the XML, as libvirt keeps it)
        'dumpxml --inactive kept': (0, xml.replace('</devices>', MDEV % 'B3A1C7E2-0000-4000-8000-00000000000A' + '</devices>'), ''),
        'dominfo gone': (1, '', "error: failed to get domain 'gone'"),
        'dominfo live': (0, 'Id:             7\nName:           live\nState:          running\nPersistent:     no\n', ''),
        'dumpxml live': (0, xml.replace('kept', 'live').replace("bus='0x81'", "bus='0x82'"), ''),
    })
    out = _libvirt_info.read(URI, run=run, virsh='/usr/bin/virsh')
    assert out['available'] is True and out['error'] is None
    assert out['domains'] == [
        {'name': 'kept', 'state': 'shut off', 'active': False, 'persistent': True, 'hostdevs': ['0000:81:00.0'],
         'mdevs': ['b3a1c7e2-0000-4000-8000-00000000000a'],
         'config_hostdevs': [{'address': '0000:81:00.0', 'guest_address': None, 'managed': False,
                              'multifunction': False, 'rom': None}],
         'numa_nodes': []},
        # a transient running domain: only its live definition exists (no persistent hostdevs)
        {'name': 'live', 'state': 'running', 'active': True, 'persistent': False, 'hostdevs': ['0000:82:00.0'], 'mdevs': [],
         'config_hostdevs': [], 'numa_nodes': []}]
    # which domain holds which device, in the same read
    assert out['assignments'] == {'0000:81:00.0': ['kept'], '0000:82:00.0': ['live']}
    assert out['mdev_assignments'] == {'b3a1c7e2-0000-4000-8000-00000000000a': ['kept']}
    assert ['dumpxml', 'kept'] not in calls   # a domain that is not running has no live definition to read
    assert ['dumpxml', '--inactive', 'live'] not in calls


@pytest.mark.parametrize('answer, why', [
    ((1, '', 'error: internal error: client socket is closed'), "dumpxml --inactive of 'held' failed: error: internal"),
    ((0, '<domain><devices>', ''), "the definition of 'held': domain XML cannot be parsed"),
])
def test_a_domain_whose_definition_cannot_be_read_makes_the_host_unavailable(no_binding: None, answer: tuple,
                                                                             why: str) -> None:
    """It could hold any GPU: the fleet must place nothing there rather than read it as free."""
    run, _calls = _runner({
        'list --all --name': (0, 'held\n', ''),
        'dominfo held': (0, 'Id:             -\nName:           held\nState:          shut off\nPersistent:     yes\n', ''),
        'dumpxml --inactive held': answer,
    })
    out = _libvirt_info.read(URI, run=run, virsh='/usr/bin/virsh')
    assert out['available'] is False and out['domains'] == []
    assert str(out['error']).startswith('cannot read the domains at qemu:///system (virsh): ' + why), out['error']
