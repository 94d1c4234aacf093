"""plugin_utils/_hostvars.py: what an earlier play registered for a host."""
from __future__ import annotations

from ansible.errors import AnsibleUndefinedVariable

from ansible_collections.fleetgpu.passthrough.plugins.plugin_utils._hostvars import hostvar


class Undefined(dict):
    def __getitem__(self, key: str) -> object:
        raise AnsibleUndefinedVariable('%s is undefined' % key)


def test_a_registered_result_is_read() -> None:
    assert hostvar({'kvm01': {'r': {'changed': False}}}, 'kvm01', 'r') == {'changed': False}


def test_a_missing_host_variable_or_undefined_value_reads_as_none() -> None:
    assert hostvar({}, 'kvm01', 'r') is None
    assert hostvar({'kvm01': {}}, 'kvm01', 'r') is None
    assert hostvar({'kvm01': Undefined()}, 'kvm01', 'r') is None
    assert hostvar({'kvm01': None}, 'kvm01', 'r') is None  # type: ignore[dict-item]


def test_something_other_than_plain_data_reads_as_none() -> None:
    assert hostvar({'kvm01': {'r': object()}}, 'kvm01', 'r') is None
