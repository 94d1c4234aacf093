"""Token-set semantics of kernel command lines (module_utils/_cmdline.py)."""
from __future__ import annotations

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._cmdline import CmdlineChange, CmdlineError, reboot_reasons, split


@pytest.mark.parametrize('text, tokens', [
    ('', []),
    ('  quiet   splash ', ['quiet', 'splash']),
    ('root=/dev/sda1 dyndbg="file foo.c +p" quiet', ['root=/dev/sda1', 'dyndbg="file foo.c +p"', 'quiet']),
    ('BOOT_IMAGE=/vmlinuz-6.1.0-27-amd64 root=UUID=1 ro\n', ['BOOT_IMAGE=/vmlinuz-6.1.0-27-amd64', 'root=UUID=1', 'ro']),
])
def test_split(text: str, tokens: list[str]) -> None:
    assert split(text) == tokens


@pytest.mark.parametrize('before, add, remove, after', [
    # plain add, appended at the end
    (['quiet'], ['intel_iommu=on', 'iommu=pt'], [], ['quiet', 'intel_iommu=on', 'iommu=pt']),
    # never duplicated
    (['quiet', 'iommu=pt'], ['iommu=pt'], [], ['quiet', 'iommu=pt']),
    # a contradiction is replaced in place
    (['quiet', 'intel_iommu=off', 'splash'], ['intel_iommu=on'], [], ['quiet', 'intel_iommu=on', 'splash']),
    # duplicate values of one key collapse to the new one
    (['a=1', 'b', 'a=2'], ['a=3'], [], ['a=3', 'b']),
    # remove by key drops every value
    (['quiet', 'vfio-pci.ids=10de:1b80', 'vfio-pci.ids=10de:10f0'], [], ['vfio-pci.ids'], ['quiet']),
    # remove by exact token keeps other values
    (['console=tty0', 'console=ttyS0'], [], ['console=ttyS0'], ['console=tty0']),
    # bare flag
    (['quiet'], ['nomodeset'], ['quiet'], ['nomodeset']),
    # removing what is not there is nothing
    (['quiet'], [], ['intel_iommu=on'], ['quiet']),
    # duplicate plain tokens in the original collapse
    (['quiet', 'quiet'], [], [], ['quiet']),
])
def test_apply(before: list[str], add: list[str], remove: list[str], after: list[str]) -> None:
    change = CmdlineChange(add, remove)
    assert change.apply(before) == after
    assert change.apply(after) == after  # idempotent


@pytest.mark.parametrize('add, remove, fragment', [
    (['intel_iommu=on', 'intel_iommu=off'], [], "'intel_iommu=off'"),
    (['iommu=pt'], ['iommu'], "'iommu=pt' is both added and removed"),
    (['iommu=pt'], ['iommu=pt'], 'both added and removed'),
    (['two words'], [], "'two words' holds more than one"),
    ([''], [], 'is not a kernel argument'),
    (['bad$key=1'], [], "key 'bad$key'"),
    ([], [None], 'remove entry None'),
])
def test_invalid(add: list, remove: list, fragment: str) -> None:
    with pytest.raises(CmdlineError) as info:
        CmdlineChange(add, remove)
    assert fragment in str(info.value)


def test_running_state() -> None:
    change = CmdlineChange(['intel_iommu=on', 'iommu=pt'], ['vfio-pci.ids'])
    running = split('BOOT_IMAGE=/vmlinuz root=/dev/vda1 intel_iommu=off vfio-pci.ids=1234:1111 iommu=pt')
    assert change.missing(running) == ['intel_iommu=on']
    assert change.lingering(running) == ['intel_iommu=off', 'vfio-pci.ids=1234:1111']
    assert not change.satisfied_by(running)
    assert change.satisfied_by(split('root=/dev/vda1 intel_iommu=on iommu=pt'))


def test_reboot_reasons_say_what_the_running_kernel_lacks_and_still_has() -> None:
    change = CmdlineChange(['intel_iommu=on', 'iommu=pt'], ['nomodeset'])
    running = split('quiet nomodeset iommu=pt')
    assert reboot_reasons(change.missing(running), change.lingering(running)) == [
        'the running kernel lacks intel_iommu=on', 'the running kernel still has nomodeset']
    assert reboot_reasons([], []) == []
