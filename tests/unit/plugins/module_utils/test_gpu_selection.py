"""Selection and early-binding decisions of the vfio_host configuration (module_utils/_vfio_host.py)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import Sysfs
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._gpu_selection import SelectionError, decide, select
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vfio_files import modprobe_conf
from tests.sim import simkernel


def _gpu(address: str, vendor: str, device: str, cls: str, driver: str | None, boot_vga: bool = False,
         name: str | None = None, companions: list | None = None) -> dict:
    return {
        'address': address, 'vendor_id': vendor, 'device_id': device, 'vendor_device': '%s:%s' % (vendor, device),
        'subsystem_vendor_id': '1af4', 'subsystem_device_id': '1100', 'class': cls,
        'class_name': 'VGA compatible controller', 'vendor_name': None, 'device_name': name, 'subsystem_name': None,
        'driver': driver, 'boot_vga': boot_vga, 'companions': companions or [], 'state': 'available',
    }


# The QEMU test host (tests/sim/topologies/identical_pair.yml) as gpu_facts reports it.
FACTS = {
    'host': {'cpu_vendor': 'intel', 'kernel_release': '6.1.0-27-amd64', 'vfio_pci_builtin': False},
    'gpus': [
        _gpu('0000:00:01.0', '1234', '1111', '0x030000', 'bochs-drm', boot_vga=True, name='Bochs display'),
        _gpu('0000:01:00.0', '1234', '1111', '0x038000', 'bochs-drm', name='Bochs display', companions=[
            {'address': '0000:01:00.1', 'vendor_id': '8086', 'device_id': '293e', 'class': '0x040300',
             'class_name': 'Audio device', 'driver': 'snd_hda_intel', 'kind': 'audio'}]),
        _gpu('0000:02:00.0', '1002', '5159', '0x030000', None, name='Radeon RV100 QY [Radeon 7000/VE]'),
    ],
}


@pytest.fixture(scope='module')
def sysfs(tmp_path_factory: pytest.TempPathFactory) -> Sysfs:
    root = simkernel.materialize('identical_pair', str(tmp_path_factory.mktemp('sim')))
    return Sysfs(root)


@pytest.mark.parametrize('selectors, allow, expected', [
    ([{'address': '01:00.0'}], False, ['0000:01:00.0']),
    ([{'vendor_id': '1234', 'device_id': '1111'}], False, ['0000:01:00.0']),
    ([{'vendor_id': '1234', 'device_id': '1111', 'count': 'all'}], True, ['0000:00:01.0', '0000:01:00.0']),
    ([{'name': 'radeon'}], False, ['0000:02:00.0']),
    ([{'name_regex': '.', 'count': 2}], False, ['0000:01:00.0', '0000:02:00.0']),
    ([{'address': '0000:02:00.0'}, {'name': 'rv100'}], False, ['0000:02:00.0']),
    ([{'vendor_id': '0x1234', 'device_id': '1111', 'subsystem_vendor_id': '1AF4'}], False, ['0000:01:00.0']),
])
def test_select(selectors: list, allow: bool, expected: list) -> None:
    assert [g['address'] for g in select(FACTS['gpus'], selectors, allow)] == expected


@pytest.mark.parametrize('selectors, fragment', [
    ([{'address': '00:01.0'}], 'matches only the boot GPU (0000:00:01.0 Bochs display [1234:1111] boot VGA'),
    ([{'address': '00:01.0'}], 'vfio_host_allow_boot_vga'),
    ([{'vendor_id': '10de', 'device_id': '2204'}], 'matches no GPU; this host has: 0000:00:01.0'),
    ([{'vendor_id': '1234', 'device_id': '1111', 'count': 2}], 'asks for 2 GPU(s) but only 1 match (the boot GPU'),
    ([{'address': '01:00.9'}], 'vfio_host_devices[0]: invalid PCI address'),
    ([{'vendor_id': '1234'}], 'needs device_id'),
    ([{'name_regex': '('}], 'not a valid regular expression'),
    ([{'address': '01:00.0', 'name': 'x'}], 'exactly one of'),
    (['01:00.0'], 'must be a mapping'),
    ([{'name': 'x', 'count': 0}], 'count must be a whole positive number'),
    ([], 'vfio_host_devices is empty'),
])
def test_select_errors(selectors: list, fragment: str) -> None:
    with pytest.raises(SelectionError) as info:
        select(FACTS['gpus'], selectors)
    assert fragment in str(info.value)


def test_identical_pair_binds_by_address(sysfs: Sysfs) -> None:
    decision = decide(FACTS, [{'address': '01:00.0'}], sysfs)
    # 1234:1111 is also the boot console: ids= would take it, so per address
    assert decision.addresses == ['0000:01:00.0']
    # the HDMI-audio-like companion is the only 8086:293e on the host: ids= is safe
    assert decision.ids == ['8086:293e']
    assert [f['address'] for f in decision.bind] == ['0000:01:00.0', '0000:01:00.1']
    assert decision.cmdline_add == ['intel_iommu=on', 'iommu=pt']
    assert 'bochs' in decision.softdeps or 'bochs_drm' in decision.softdeps
    assert 'snd_hda_intel' in decision.softdeps
    conf = modprobe_conf(decision, builtin=False)
    assert 'options vfio-pci ids=8086:293e\n' in conf
    assert 'softdep snd_hda_intel pre: vfio-pci\n' in conf


def test_all_of_a_kind_uses_ids(sysfs: Sysfs) -> None:
    decision = decide(FACTS, [{'address': '02:00.0'}], sysfs)
    assert decision.ids == ['1002:5159'] and decision.addresses == []
    assert {'amdgpu', 'radeon'} <= set(decision.softdeps)


def test_builtin_vfio_pci_puts_ids_on_cmdline(sysfs: Sysfs) -> None:
    facts = copy.deepcopy(FACTS)
    facts['host']['vfio_pci_builtin'] = True
    decision = decide(facts, [{'address': '02:00.0'}], sysfs)
    assert 'vfio-pci.ids=1002:5159' in decision.cmdline_add
    assert 'options vfio-pci' not in modprobe_conf(decision, builtin=True)


@pytest.mark.parametrize('vendor, pt, expected', [
    ('intel', True, ['intel_iommu=on', 'iommu=pt']),
    ('amd', True, ['iommu=pt']),  # amd_iommu=on is not a valid value; the AMD IOMMU is on by default
    ('amd', False, []),
    ('other', False, []),
])
def test_iommu_flags_by_cpu_vendor(sysfs: Sysfs, vendor: str, pt: bool, expected: list) -> None:
    facts = copy.deepcopy(FACTS)
    facts['host']['cpu_vendor'] = vendor
    decision = decide(facts, [{'address': '02:00.0'}], sysfs, iommu_pt=pt)
    assert decision.cmdline_add == expected
    assert not any(a.startswith('amd_iommu') for a in decision.cmdline_add)


def test_blacklist_refused_while_needed(sysfs: Sysfs) -> None:
    # bochs-drm still drives the boot console at 00:01.0
    with pytest.raises(SelectionError, match='refusing to blacklist bochs-drm while 0000:00:01.0 still uses it'):
        decide(FACTS, [{'address': '01:00.0'}], sysfs, blacklist=['bochs-drm'])


def test_blacklist_allowed_when_unused(sysfs: Sysfs) -> None:
    decision = decide(FACTS, [{'address': '02:00.0'}], sysfs, blacklist=['radeon'])
    assert 'blacklist radeon\n' in modprobe_conf(decision, builtin=False)


def test_softdeps_from_aliases_and_sticky(tmp_path: Path) -> None:
    """A device already on vfio-pci no longer shows its host driver: aliases and the previous file keep the softdeps."""
    root = Path(simkernel.materialize('identical_pair', str(tmp_path / 'sim')))
    sysfs = Sysfs(str(root))
    alias_dir = Path(sysfs.host('lib', 'modules', '6.1.0-27-amd64'))
    alias_dir.mkdir(parents=True, exist_ok=True)
    (alias_dir / 'modules.alias').write_text(
        '# Aliases extracted from modules themselves.\n'
        'alias pci:v00001234d00001111sv*sd*bc03sc*i* bochs\n'
        'alias pci:v00008086d0000293Esv*sd*bc*sc*i* snd_hda_intel\n'
        'alias pci:v*d*sv*sd*bc03sc00i00* vgaarb_test\n'
        'alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\n')
    facts = copy.deepcopy(FACTS)
    facts['gpus'][1]['driver'] = 'vfio-pci'
    facts['gpus'][1]['companions'][0]['driver'] = 'vfio-pci'
    decision = decide(facts, [{'address': '01:00.0'}], sysfs)
    assert 'bochs' in decision.softdeps and 'snd_hda_intel' in decision.softdeps
    assert not any(m.startswith('vfio') for m in decision.softdeps)
    # without aliases, the softdeps written before are kept
    (alias_dir / 'modules.alias').unlink()
    again = decide(facts, [{'address': '01:00.0'}], sysfs, previous_softdeps=['bochs', 'snd_hda_intel'])
    assert again.softdeps == sorted(set(again.softdeps) | {'bochs', 'snd_hda_intel'})


def test_existing_softdeps_parser() -> None:
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils._vfio_files import existing_softdeps
    text = '# managed\noptions vfio-pci ids=8086:293e\nsoftdep bochs pre: vfio-pci\nsoftdep x pre: other\n'
    assert existing_softdeps(text) == ['bochs']
    assert existing_softdeps(None) == []


def test_alias_prefilter_matches_what_fnmatch_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only patterns whose literal prefix the modalias starts with reach fnmatch; the result is fnmatch's."""
    import fnmatch
    from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _gpu_selection
    root = Path(simkernel.materialize('identical_pair', str(tmp_path / 'sim')))
    sysfs = Sysfs(str(root))
    modalias = sysfs.read(sysfs.sys('bus', 'pci', 'devices', '0000:01:00.0', 'modalias'))
    assert modalias.startswith('pci:v00001234d00001111')
    patterns = ['pci:v00001234d00001111sv*sd*bc03sc*i*', 'pci:v00001234d0000111[01]sv*sd*bc*sc*i*',
                'pci:v00001234d000011?1sv*sd*bc*sc*i*', 'pci:v*d*sv*sd*bc03sc*i*', 'pci:v*d*sv*sd*bc02sc*i*',
                'pci:v00001002d00005159sv*sd*bc*sc*i*', 'pci:v000010DEd*sv*sd*bc03sc*i*']
    patterns += ['pci:v%08Xd*sv*sd*bc*sc*i*' % vendor for vendor in range(0x2000, 0x2400)]
    alias_dir = Path(sysfs.host('lib', 'modules', '6.1.0-27-amd64'))
    alias_dir.mkdir(parents=True, exist_ok=True)
    (alias_dir / 'modules.alias').write_text(
        '# Aliases extracted from modules themselves.\n'
        + ''.join('alias %s mod%d\n' % (p, i) for i, p in enumerate(patterns))
        + 'alias usb:v1234p* usbmod\n')
    expected = ['mod%d' % i for i, p in enumerate(patterns) if fnmatch.fnmatchcase(modalias, p)]
    assert expected == ['mod0', 'mod1', 'mod2', 'mod3']
    seen: list[str] = []
    real = fnmatch.fnmatchcase

    def counting(name: str, pattern: str) -> bool:
        seen.append(pattern)
        return real(name, pattern)

    monkeypatch.setattr(_gpu_selection.fnmatch, 'fnmatchcase', counting)
    assert _gpu_selection.alias_modules(sysfs, '6.1.0-27-amd64', '0000:01:00.0', {}) == expected
    # the 1024 aliases of other vendors, and the other vendors' devices, never reach fnmatch
    assert sorted(seen) == sorted(patterns[:5])


@pytest.mark.parametrize('selectors, keep, expected', [
    ([{'name_regex': '.', 'count': 'all'}], ['01:00.0'], ['0000:02:00.0']),
    ([{'vendor_id': '1002', 'device_id': '5159'}], ['0000:01:00.0'], ['0000:02:00.0']),
    ([], ['0000:01:00.0'], []),  # only dynamic GPUs: nothing selected, no error
])
def test_dynamic_gpus_are_never_selected(selectors: list, keep: list, expected: list) -> None:
    assert [g['address'] for g in select(FACTS['gpus'], selectors, keep=keep)] == expected


def test_a_host_with_only_dynamic_gpus_gets_the_iommu_arguments_and_no_binding(sysfs: Sysfs) -> None:
    decision = decide(FACTS, [], sysfs, keep=['0000:01:00.0'])
    assert decision.bind == [] and decision.ids == [] and decision.addresses == []
    assert decision.cmdline_add == ['intel_iommu=on', 'iommu=pt']


@pytest.mark.parametrize('selectors, keep, fragment', [
    ([{'address': '01:00.0'}], ['0000:01:00.0'],
     'vfio_host_devices[0] names 01:00.0, which vfio_host_dynamic_devices keeps on its host driver'),
    ([{'vendor_id': '1234', 'device_id': '1111'}], ['0000:01:00.0'], 'matches only the boot GPU'),
    ([{'address': '02:00.0'}], ['01:00'], "vfio_host_dynamic_devices[0]: '01:00' is not a PCI address"),
])
def test_dynamic_gpu_errors_name_the_input(selectors: list, keep: list, fragment: str) -> None:
    with pytest.raises(SelectionError) as info:
        select(FACTS['gpus'], selectors, keep=keep)
    assert fragment in str(info.value)
