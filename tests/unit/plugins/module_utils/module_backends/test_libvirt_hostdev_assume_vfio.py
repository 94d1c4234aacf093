"""libvirt_hostdev's driver warning and assume_vfio (check mode that tells the truth, issue 11)."""
from __future__ import annotations

from pathlib import Path

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.libvirt_hostdev import driver_warnings
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._pci import PciAddress
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from tests.sim import simkernel

GPU = PciAddress.parse('0000:01:00.0')
AUDIO = PciAddress.parse('0000:01:00.1')


def test_assumed_addresses_get_no_warning_the_others_keep_it(tmp_path: Path) -> None:
    sysfs = Sysfs(simkernel.materialize('identical_pair', str(tmp_path)))
    both = driver_warnings(sysfs, [GPU, AUDIO], managed=False)
    assert [w.split(' ', 1)[0] for w in both] == ['0000:01:00.0', '0000:01:00.1']
    assert 'bound to bochs-drm, not vfio-pci' in both[0]
    only_audio = driver_warnings(sysfs, [GPU, AUDIO], managed=False, assume_vfio={GPU})
    assert len(only_audio) == 1 and only_audio[0].startswith('0000:01:00.1 is bound to snd_hda_intel')
    assert driver_warnings(sysfs, [GPU, AUDIO], managed=False, assume_vfio={GPU, AUDIO}) == []
    assert driver_warnings(sysfs, [GPU], managed=True) == []
