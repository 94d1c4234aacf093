"""libvirt_domain_drain as a task runs it: argument handling, failures as results (no traceback), warnings.

libvirt's test:///default driver gives every connection a fresh host with one running domain, ``test``,
that holds no device.
"""
from __future__ import annotations

import pytest

from tests.unit.plugins.modules.test_trust_inputs import run_module

pytest.importorskip('libvirt')
from ansible_collections.fleetgpu.passthrough.plugins.modules import libvirt_domain_drain  # noqa: E402

URI = 'test:///default'


@pytest.mark.parametrize('args, needle', [
    ({'policy': 'ask'}, 'value of policy must be one of: shutdown, refuse, got: ask'),
    ({'timeout': -1}, 'timeout must be a number of seconds greater than 0 and at most 3600, got -1.0'),
    ({'timeout': 'soon'}, "argument 'timeout' is of type"),
    ({'state': 'started'}, 'state=started needs domains'),
    ({'domains': ['nosuch']}, "domain 'nosuch' is not defined at test:///default (domains there: test)"),
    ({'uri': 'test:///nonexistent.xml'}, 'cannot connect to libvirt at test:///nonexistent.xml'),
])
def test_bad_input_fails_naming_it_without_traceback(args: dict, needle: str) -> None:
    res = run_module(libvirt_domain_drain, dict({'uri': URI}, **args))
    assert res['failed'] is True and needle in res['msg'], res
    assert 'Traceback' not in res['msg'] and 'exception' not in res


def test_nothing_holding_a_device_is_no_change_and_a_named_domain_is_stopped_check_mode_first() -> None:
    res = run_module(libvirt_domain_drain, {'uri': URI})
    assert res['changed'] is False and res['stopped'] == [] and res['hostdevs'] == {}
    predicted = run_module(libvirt_domain_drain, {'uri': URI, 'domains': ['test']}, check=True)
    assert predicted['changed'] is True and predicted['stopped'] == ['test'] and predicted['forced'] == []
    done = run_module(libvirt_domain_drain, {'uri': URI, 'domains': ['test']})
    assert done['changed'] is True and done['stopped'] == ['test'] and done['hostdevs'] == {'test': []}
    # a fresh connection to test:/// has 'test' running again: started is no change
    started = run_module(libvirt_domain_drain, {'uri': URI, 'state': 'started', 'domains': ['test']})
    assert started['changed'] is False and started['started'] == [] and started['running'] == ['test']


def test_refuse_fails_with_the_running_domains_in_the_result() -> None:
    res = run_module(libvirt_domain_drain, {'uri': URI, 'domains': ['test'], 'policy': 'refuse'})
    assert res['failed'] is True and res['msg'].startswith('policy=refuse: domain test runs at test:///default')
    assert res['running'] == ['test'] and res['stopped'] == []
