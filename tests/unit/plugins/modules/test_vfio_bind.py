"""vfio_bind against a simulated kernel that behaves (tests/sim/fusekernel.py).

Each test materializes a topology, serves it through FUSE so that writes to
driver_override / unbind / drivers_probe take effect, and runs the module's
main() with real arguments.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from ansible.module_utils import _internal as ansible_internal
from ansible.module_utils.testing import patch_module_args

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / 'sim'))
import fusekernel  # noqa: E402  pylint: disable=wrong-import-position
import simkernel  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.fleetgpu.passthrough.plugins.modules import vfio_bind  # noqa: E402

VFIO_LOADED = ['vfio', 'vfio_iommu_type1', 'vfio_pci', 'vfio_pci_core']


def topology(name: str, vfio: bool = True, **changes: Any) -> dict:
    topo = simkernel.load_topology(name)
    if vfio:
        kernel = topo.setdefault('kernel', {})
        loaded = kernel.get('loaded')
        if loaded is None:
            drivers = set()
            for node in simkernel.iter_nodes(topo.get('pci') or []):
                for key in ('driver', 'default_driver'):
                    if node.get(key) and node[key] not in simkernel.CORE_DRIVERS:
                        drivers.add(node[key].replace('-', '_'))
            loaded = sorted(drivers)
        kernel['loaded'] = sorted(set(loaded) | set(VFIO_LOADED))
    for address, values in changes.items():
        for node in simkernel.iter_nodes(topo['pci']):
            if simkernel.norm_address(node['address']) == simkernel.norm_address(address):
                node.update(values)
    return topo


class Kernel:
    """A mounted simulated kernel and the helpers tests need."""

    def __init__(self, sysfs_root: str, tmp: Path) -> None:
        self.root = sysfs_root
        self.backing = fusekernel.backing_of(sysfs_root)
        self.journal = str(tmp / 'state' / 'vfio_bind.json')

    def driver(self, addr: str) -> str | None:
        link = os.path.join(self.root, 'bus', 'pci', 'devices', addr, 'driver')
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def override(self, addr: str) -> str:
        with open(os.path.join(self.root, 'bus', 'pci', 'devices', addr, 'driver_override'), encoding='utf-8') as fh:
            return fh.read().strip()

    def vfio_node(self, group: int) -> bool:
        return os.path.exists(os.path.join(os.path.dirname(self.root), 'dev', 'vfio', str(group)))

    def group(self, addr: str) -> int:
        return int(os.path.basename(os.readlink(os.path.join(self.root, 'bus', 'pci', 'devices', addr, 'iommu_group'))))

    def faults(self, *faults: dict) -> None:
        fusekernel.set_faults(self.backing, list(faults))

    def ops(self) -> list[dict]:
        return fusekernel.ops(self.backing)

    def snapshot(self) -> dict[str, str]:
        return fusekernel.snapshot(self.backing)

    def run(self, check: bool = False, diff: bool = True, **args: Any) -> dict:
        args.setdefault('sysfs_root', self.root)
        args.setdefault('journal_path', self.journal)
        args.setdefault('timeout', 2.0)
        return run_module(args, check=check, diff=diff)


def run_module(args: dict, check: bool = False, diff: bool = False) -> dict:
    args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    out = io.StringIO()
    # Another test in the same process may have imported controller code, which makes
    # module warnings go to the controller's display instead of the result: run the
    # module as it runs on a managed host.
    was_controller = ansible_internal.is_controller
    ansible_internal.is_controller = False
    try:
        with patch_module_args(args), contextlib.redirect_stdout(out):
            with pytest.raises(SystemExit):
                vfio_bind.main()
    finally:
        ansible_internal.is_controller = was_controller
    return json.loads(out.getvalue())


@contextlib.contextmanager
def kernel_for(topo: Any, tmp: Path) -> Iterator[Kernel]:
    with fusekernel.simulated(topo, tmp / 'k') as root:
        yield Kernel(root, tmp)


@pytest.fixture()
def workstation(tmp_path: Path) -> Iterator[Kernel]:
    with kernel_for(topology('workstation'), tmp_path) as k:
        yield k


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Turn a hang of the code under test into a test failure."""
    def _raise(_sig: int, _frame: Any) -> None:
        raise TimeoutError('the module did not return within %ds' % seconds)
    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


GPU, AUDIO = '0000:01:00.0', '0000:01:00.1'


# ----------------------------------------------------------------------------- happy path
def test_bind_gpu_and_audio_group_then_restore(workstation: Kernel) -> None:
    k = workstation
    group = k.group(GPU)
    res = k.run(devices=[GPU, AUDIO])
    assert not res.get('failed'), res
    assert res['changed'] is True
    assert {d['address']: (d['driver_before'], d['driver_after']) for d in res['devices']} == {
        GPU: ('nvidia', 'vfio-pci'), AUDIO: ('snd_hda_intel', 'vfio-pci')}
    assert k.driver(GPU) == k.driver(AUDIO) == 'vfio-pci'
    assert k.override(GPU) == 'vfio-pci'
    assert k.vfio_node(group)
    assert k.driver('0000:00:02.0') == 'i915'
    assert res['diff']['before'].count('\n') == 2 and 'nvidia' in res['diff']['before']
    # the journal: root-only, original drivers
    mode = stat.S_IMODE(os.stat(k.journal).st_mode)
    assert mode == 0o600
    journal = json.load(open(k.journal, encoding='utf-8'))
    assert journal['devices'][GPU]['driver_before'] == 'nvidia'
    assert journal['devices'][AUDIO]['driver_before'] == 'snd_hda_intel'
    # the kernel saw: override, unbind, drivers_probe per device; never new_id
    seen = [(o['op'], o['device']) for o in k.ops()]
    assert ('new_id', None) not in seen and not any(o['op'] == 'new_id' for o in k.ops())
    assert seen[:3] == [('driver_override', AUDIO), ('unbind', AUDIO), ('drivers_probe', AUDIO)]

    again = k.run(devices=[GPU, AUDIO])
    assert again['changed'] is False and 'diff' not in again

    back = k.run(devices=[GPU, AUDIO], state='absent')
    assert back['changed'] is True, back
    assert k.driver(GPU) == 'nvidia' and k.driver(AUDIO) == 'snd_hda_intel'
    assert k.override(GPU) == '(null)' and k.override(AUDIO) == '(null)'
    assert not k.vfio_node(group)
    assert not os.path.exists(k.journal)
    assert k.run(devices=[GPU, AUDIO], state='absent')['changed'] is False


def test_bind_and_restore_by_ids(workstation: Kernel) -> None:
    k = workstation
    res = k.run(match={'vendor_id': '10de', 'device_id': '2204'}, include_group=True)
    assert res['changed'] and k.driver(GPU) == k.driver(AUDIO) == 'vfio-pci', res
    res = k.run(match={'vendor_id': '10de', 'device_id': '2204', 'subsystem_vendor_id': '1458'}, state='absent')
    assert res['changed'] and not res.get('failed'), res
    assert k.driver(GPU) == 'nvidia' and k.driver(AUDIO) == 'snd_hda_intel'


def test_check_mode_plans_and_leaves_the_tree_untouched(workstation: Kernel) -> None:
    k = workstation
    before = k.snapshot()
    res = k.run(check=True, devices=[GPU, AUDIO])
    assert res['changed'] is True
    assert {d['address']: d['driver_after'] for d in res['devices']} == {GPU: 'vfio-pci', AUDIO: 'vfio-pci'}
    assert 'vfio-pci' in res['diff']['after']
    assert k.snapshot() == before
    assert k.ops() == []
    assert not os.path.exists(k.journal)


def test_identical_second_gpu_stays_on_its_host_driver(tmp_path: Path) -> None:
    with kernel_for(topology('identical_pair'), tmp_path) as k:
        res = k.run(devices=['0000:01:00.0', '0000:01:00.1'])
        assert res['changed'] is True, res
        assert k.driver('0000:01:00.0') == 'vfio-pci'
        assert k.driver('0000:00:01.0') == 'bochs-drm'
        assert k.override('0000:00:01.0') == '(null)'
        assert not any(o['op'] == 'new_id' for o in k.ops())
        # matching by ids would take the boot console too: refused
        res = k.run(match={'vendor_id': '1234', 'device_id': '1111'}, include_group=True)
        assert res['failed'] and '0000:00:01.0' in res['msg'] and 'allow_boot_vga' in res['msg']
        assert k.driver('0000:00:01.0') == 'bochs-drm'


# ----------------------------------------------------------------------------- refusals
def test_boot_vga_refused_then_allowed_with_a_warning(workstation: Kernel) -> None:
    k = workstation
    res = k.run(devices=['0000:00:02.0'])
    assert res['failed'] and 'boot VGA' in res['msg'] and 'allow_boot_vga' in res['msg']
    assert k.driver('0000:00:02.0') == 'i915' and k.ops() == []
    res = k.run(devices=['0000:00:02.0'], allow_boot_vga=True)
    assert res['changed'] is True and not res.get('failed'), res
    assert 'boot VGA' in json.dumps(res['warnings'])
    assert k.driver('0000:00:02.0') == 'vfio-pci'


def test_shared_group_refused_then_taken_with_include_group(tmp_path: Path) -> None:
    with kernel_for(topology('shared_group'), tmp_path) as k:
        res = k.run(devices=['0000:03:00.0'])
        assert res['failed']
        assert '0000:03:01.0 (Ethernet controller, driver e1000)' in res['msg'] and 'include_group' in res['msg']
        assert k.ops() == []
        res = k.run(devices=['0000:03:00.0'], include_group=True)
        assert res['changed'] is True, res
        assert sorted(d['address'] for d in res['devices']) == ['0000:03:00.0', '0000:03:00.1', '0000:03:01.0']
        for addr in ('0000:03:00.0', '0000:03:00.1', '0000:03:01.0'):
            assert k.driver(addr) == 'vfio-pci'
        assert k.driver('0000:02:00.0') is None and k.override('0000:02:00.0') == '(null)'  # the bridge: untouched
        # the restore brings back what the journal says moved with the group
        res = k.run(devices=['0000:03:00.0'], state='absent')
        assert res['changed'] is True and not res.get('failed'), res
        assert [k.driver(a) for a in ('0000:03:00.0', '0000:03:00.1', '0000:03:01.0')] == [
            'nouveau', 'snd_hda_intel', 'e1000']


def test_device_in_use_refused_then_allowed(tmp_path: Path) -> None:
    with kernel_for(topology('in_use'), tmp_path) as k:
        res = k.run(devices=['0000:01:00.0', '0000:01:00.1'])
        assert res['failed'] and 'in use' in res['msg'] and '/dev/dri/card1' in res['msg']
        assert 'allow_in_use' in res['msg']
        assert k.driver('0000:01:00.0') == 'amdgpu' and k.ops() == []
        res = k.run(devices=['0000:01:00.0', '0000:01:00.1'], allow_in_use=True)
        assert res['changed'] is True and 'in use' in json.dumps(res['warnings']), res
        assert k.driver('0000:01:00.0') == 'vfio-pci'


@pytest.mark.parametrize('name,devices,needle', [
    ('iommu_off', ['0000:01:00.0'], 'no IOMMU group'),
])
def test_refusals_without_iommu(tmp_path: Path, name: str, devices: list, needle: str) -> None:
    with kernel_for(topology(name), tmp_path) as k:
        res = k.run(devices=devices)
        assert res['failed'] and needle in res['msg'] and devices[0] in res['msg']
        assert k.ops() == []


# ----------------------------------------------------------------------------- faults
def test_mid_group_failure_rolls_back_and_leaves_nothing_changed(workstation: Kernel) -> None:
    k = workstation
    k.faults({'op': 'unbind', 'device': GPU, 'driver': 'nvidia', 'error': 'EBUSY'})
    before = k.snapshot()
    res = k.run(devices=[GPU, AUDIO])
    assert res['failed']
    assert GPU in res['msg'] and 'Device or resource busy' in res['msg']
    assert res['rolled_back'] == [GPU, AUDIO] or res['rolled_back'] == [AUDIO] or AUDIO in res['rolled_back']
    assert k.driver(AUDIO) == 'snd_hda_intel' and k.driver(GPU) == 'nvidia'
    assert k.snapshot() == before
    assert not os.path.exists(k.journal)
    # the result says where the devices really are
    assert {d['address']: (d['driver_after'], d['changed']) for d in res['devices']} == {
        GPU: ('nvidia', False), AUDIO: ('snd_hda_intel', False)}


def test_wrong_driver_on_probe_is_rolled_back(workstation: Kernel) -> None:
    k = workstation
    k.faults({'op': 'drivers_probe', 'device': GPU, 'wrong_driver': 'snd_hda_intel', 'times': 1})
    before = k.snapshot()
    res = k.run(devices=[GPU, AUDIO])
    assert res['failed'] and 'snd_hda_intel, not vfio-pci' in res['msg'], res
    assert set(res['rolled_back']) == {GPU, AUDIO}
    assert k.snapshot() == before


def test_device_vanishing_mid_group_fails_and_rolls_back_the_rest(workstation: Kernel) -> None:
    k = workstation
    k.faults({'op': 'unbind', 'device': GPU, 'vanish': True})
    res = k.run(devices=[GPU, AUDIO])
    assert res['failed'] and GPU in res['msg']
    assert AUDIO in res['rolled_back']
    assert k.driver(AUDIO) == 'snd_hda_intel' and k.override(AUDIO) == '(null)'


def test_hanging_write_becomes_a_clear_failure(workstation: Kernel) -> None:
    k = workstation
    k.faults({'op': 'unbind', 'device': GPU, 'hang': True})
    with alarm(60):
        res = k.run(devices=[GPU, AUDIO], timeout=1.0)
    assert res['failed']
    assert res['stuck'] == [GPU]
    assert 'did not return within 1s' in res['msg'] and GPU in res['msg'] and 'driver nvidia' in res['msg']
    assert AUDIO in res['rolled_back'] and k.driver(AUDIO) == 'snd_hda_intel'


def test_stuck_device_is_reported_while_planning(tmp_path: Path) -> None:
    topo = topology('workstation', **{'01:00.0': {'stuck': True}})
    with kernel_for(topo, tmp_path) as k, alarm(60):
        res = k.run(devices=[GPU, AUDIO], timeout=1.0)
        assert res['failed'] and 'does not answer' in res['msg'] and GPU in res['msg'] and 'nvidia' in res['msg']
        assert res['stuck'] == [GPU] and k.ops() == []


# ----------------------------------------------------------------------------- restore
def test_restore_goes_to_the_journaled_driver_not_the_default(tmp_path: Path) -> None:
    topo = topology('workstation', **{'01:00.0': {'driver': 'nvidia', 'default_driver': 'nouveau'}})
    with kernel_for(topo, tmp_path) as k:
        assert k.run(devices=[GPU, AUDIO])['changed']
        res = k.run(devices=[GPU, AUDIO], state='absent')
        assert not res.get('failed'), res
        assert k.driver(GPU) == 'nvidia'
        assert {d['address']: d['driver_after'] for d in res['devices']}[GPU] == 'nvidia'


def test_restore_without_journal_uses_the_kernel_default(tmp_path: Path) -> None:
    topo = topology('workstation', **{'01:00.0': {'driver': 'vfio-pci', 'default_driver': 'nvidia'},
                                      '01:00.1': {'driver': 'vfio-pci', 'default_driver': 'snd_hda_intel'}})
    with kernel_for(topo, tmp_path) as k:
        res = k.run(check=True, devices=[GPU, AUDIO], state='absent')
        assert res['changed'] and '(kernel default)' in res['diff']['after']
        res = k.run(devices=[GPU, AUDIO], state='absent')
        assert res['changed'] and not res.get('failed'), res
        assert k.driver(GPU) == 'nvidia' and k.driver(AUDIO) == 'snd_hda_intel'
        assert {d['address']: d['driver_after'] for d in res['devices']} == {GPU: 'nvidia', AUDIO: 'snd_hda_intel'}
        assert k.run(devices=[GPU, AUDIO], state='absent')['changed'] is False


def test_restore_without_journal_fails_when_vfio_claims_the_ids(tmp_path: Path) -> None:
    """vfio-pci loaded with ids=10de:2204 takes the GPU back on every probe: say so, do not loop."""
    topo = topology('workstation', **{'01:00.0': {'driver': 'vfio-pci', 'default_driver': 'nvidia'},
                                      '01:00.1': {'driver': 'vfio-pci', 'default_driver': 'snd_hda_intel'}})
    with kernel_for(topo, tmp_path) as k:
        with open(os.path.join(k.root, 'bus/pci/drivers/vfio-pci/new_id'), 'w', encoding='utf-8') as fh:
            fh.write('10de 2204')
        res = k.run(devices=[GPU, AUDIO], state='absent')
        assert res['failed'] and GPU in res['msg'] and 'ids=' in res['msg'] and 'release_ids' in res['msg'], res
        assert k.driver(GPU) == 'vfio-pci'


def test_restore_with_release_ids_takes_the_id_out_of_vfio_pci(tmp_path: Path) -> None:
    """The role's undo: the id vfio-pci was loaded with is removed, the host drivers come back."""
    topo = topology('workstation', **{'01:00.0': {'driver': 'vfio-pci', 'default_driver': 'nvidia'},
                                      '01:00.1': {'driver': 'vfio-pci', 'default_driver': 'snd_hda_intel'}})
    with kernel_for(topo, tmp_path) as k:
        with open(os.path.join(k.root, 'bus/pci/drivers/vfio-pci/new_id'), 'w', encoding='utf-8') as fh:
            fh.write('10de 2204')
        res = k.run(devices=[GPU, AUDIO], state='absent', release_ids=True)
        assert not res.get('failed') and res['changed'], res
        assert res['released_ids'] == ['10de:2204'], res
        assert k.driver(GPU) == 'nvidia' and k.driver(AUDIO) == 'snd_hda_intel'
        assert k.run(devices=[GPU, AUDIO], state='absent', release_ids=True)['changed'] is False
        # the id is really gone from the table: a second remove_id is refused by the kernel
        with pytest.raises(OSError):
            with open(os.path.join(k.root, 'bus/pci/drivers/vfio-pci/remove_id'), 'w', encoding='utf-8') as fh:
                fh.write('10de 2204')


def test_restore_to_no_driver_with_release_ids(tmp_path: Path) -> None:
    """A device that had no driver (its host driver blacklisted) ends with none, not back on vfio-pci."""
    topo = topology('workstation', **{'01:00.0': {'driver': 'vfio-pci', 'default_driver': None},
                                      '01:00.1': {'driver': 'vfio-pci', 'default_driver': 'snd_hda_intel'}})
    with kernel_for(topo, tmp_path) as k:
        with open(os.path.join(k.root, 'bus/pci/drivers/vfio-pci/new_id'), 'w', encoding='utf-8') as fh:
            fh.write('10de 2204')
        res = k.run(devices=[GPU, AUDIO], state='absent', release_ids=True)
        assert not res.get('failed'), res
        assert k.driver(GPU) is None and k.driver(AUDIO) == 'snd_hda_intel'


def test_rerun_after_a_crash_converges(workstation: Kernel) -> None:
    """A run died after journaling and unbinding the GPU: the next runs finish and restore."""
    k = workstation
    os.makedirs(os.path.dirname(k.journal))
    with open(k.journal, 'w', encoding='utf-8') as fh:
        json.dump({'version': 1, 'devices': {GPU: {'driver_before': 'nvidia', 'override_before': None, 'group': 1}}}, fh)
    with open(os.path.join(k.root, 'bus/pci/devices', GPU, 'driver_override'), 'w', encoding='utf-8') as fh:
        fh.write('vfio-pci')
    with open(os.path.join(k.root, 'bus/pci/drivers/nvidia/unbind'), 'w', encoding='utf-8') as fh:
        fh.write(GPU)
    assert k.driver(GPU) is None
    res = k.run(devices=[GPU, AUDIO])
    assert res['changed'] and k.driver(GPU) == 'vfio-pci', res
    assert json.load(open(k.journal, encoding='utf-8'))['devices'][GPU]['driver_before'] == 'nvidia'
    assert k.run(devices=[GPU, AUDIO])['changed'] is False
    k.run(devices=[GPU, AUDIO], state='absent')
    assert k.driver(GPU) == 'nvidia' and k.driver(AUDIO) == 'snd_hda_intel'


def test_rerun_after_a_crash_between_override_and_unbind(workstation: Kernel) -> None:
    """A run died right after writing driver_override: the override is not taken for the original."""
    k = workstation
    with open(os.path.join(k.root, 'bus/pci/devices', GPU, 'driver_override'), 'w', encoding='utf-8') as fh:
        fh.write('vfio-pci')
    assert k.run(devices=[GPU, AUDIO])['changed']
    journal = json.load(open(k.journal, encoding='utf-8'))
    assert journal['devices'][GPU]['override_before'] is None
    k.run(devices=[GPU, AUDIO], state='absent')
    assert k.driver(GPU) == 'nvidia' and k.override(GPU) == '(null)'


def test_restore_of_an_interrupted_bind_clears_the_override(workstation: Kernel) -> None:
    k = workstation
    os.makedirs(os.path.dirname(k.journal))
    with open(k.journal, 'w', encoding='utf-8') as fh:
        json.dump({'version': 1, 'devices': {GPU: {'driver_before': 'nvidia', 'override_before': None}}}, fh)
    with open(os.path.join(k.root, 'bus/pci/devices', GPU, 'driver_override'), 'w', encoding='utf-8') as fh:
        fh.write('vfio-pci')
    res = k.run(devices=[GPU, AUDIO], state='absent')
    assert res['changed'] and not res.get('failed'), res
    assert k.driver(GPU) == 'nvidia' and k.override(GPU) == '(null)'
    assert not os.path.exists(k.journal)
    assert k.run(devices=[GPU, AUDIO], state='absent')['changed'] is False


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize('args,needle', [
    ({'devices': ['01:00']}, "'01:00'"),
    ({'devices': ['zz:00.0']}, "'zz:00.0'"),
    ({'devices': ['0000:01:20.0']}, '0000:01:20.0'),
    ({'devices': ['0000:09:00.0']}, 'unknown device 0000:09:00.0'),
    ({'devices': ['0000:00:01.0']}, '0000:00:01.0 is a PCI bridge'),
    ({'devices': [GPU, AUDIO], 'driver': 'vfio-pci; rm -rf /'}, "'vfio-pci; rm -rf /'"),
    ({'devices': [GPU, AUDIO], 'driver': '$(reboot)'}, "'$(reboot)'"),
    ({'devices': [GPU, AUDIO], 'driver': 'VFIO-PCI'}, "'VFIO-PCI'"),
    ({'devices': [GPU, AUDIO], 'driver': '../vfio'}, "'../vfio'"),
    ({'match': {'vendor_id': '10dex', 'device_id': '2204'}}, "'10dex'"),
    ({'match': {'vendor_id': 'abcd', 'device_id': 'abcd'}}, 'no PCI device matches'),
])
def test_bad_input_fails_naming_it(tmp_path: Path, args: dict, needle: str) -> None:
    root = simkernel.materialize(topology('workstation'), str(tmp_path / 'static'))
    before = fusekernel.snapshot(str(tmp_path / 'static'))
    res = run_module(dict(args, sysfs_root=root, journal_path=str(tmp_path / 'j.json')))
    assert res['failed'] and needle in res['msg'], res
    assert 'Traceback' not in res['msg']
    assert fusekernel.snapshot(str(tmp_path / 'static')) == before


def test_devices_and_match_are_exclusive(tmp_path: Path) -> None:
    res = run_module({'devices': [GPU], 'match': {'vendor_id': '10de', 'device_id': '2204'}})
    assert res['failed'] and 'mutually exclusive' in res['msg']


def test_vendor_variant_driver_name_is_accepted(tmp_path: Path) -> None:
    root = simkernel.materialize(topology('workstation'), str(tmp_path / 'static'))
    res = run_module({'devices': [GPU, AUDIO], 'driver': 'nvgrace_gpu_vfio_pci', 'sysfs_root': root,
                      'journal_path': str(tmp_path / 'j.json')}, check=True)
    assert res['changed'] and not res.get('failed'), res
    assert {d['driver_after'] for d in res['devices']} == {'nvgrace_gpu_vfio_pci'}


# ----------------------------------------------------------------------------- reset health after a give-back
def quarantine_record(k: Kernel) -> dict:
    path = os.path.join(os.path.dirname(k.root), 'var', 'lib', 'fleetgpu-passthrough', 'quarantine.json')
    return json.load(open(path, encoding='utf-8'))['devices'] if os.path.exists(path) else {}


def test_a_healthy_give_back_quarantines_nothing(workstation: Kernel) -> None:
    k = workstation
    assert not k.run(devices=[GPU, AUDIO]).get('failed')
    back = k.run(devices=[GPU, AUDIO], state='absent')
    assert back['changed'] is True and back['quarantined'] == []
    assert 'quarantined' not in json.dumps(back.get('warnings', []))
    assert quarantine_record(k) == {}


def test_a_give_back_whose_driver_does_not_come_back_fails_and_quarantines_the_device(workstation: Kernel) -> None:
    k = workstation
    assert not k.run(devices=[GPU, AUDIO]).get('failed')
    k.faults({'op': 'drivers_probe', 'device': GPU, 'probe_fails': True, 'times': 1})
    res = k.run(devices=[GPU, AUDIO], state='absent')
    assert res['failed'], res
    assert 'could not put the device back on nvidia (after drivers_probe it is on no driver)' in res['msg']
    assert 'It is quarantined: %s: no driver is bound after it was given back' % GPU in res['msg']
    assert [e['address'] for e in res['quarantined']] == [GPU] and res['quarantined'][0]['source'] == 'vfio_bind'
    assert 'driver_now' not in res
    assert list(quarantine_record(k)) == [GPU]
    # the group went back to vfio-pci as a whole (rolled back), the journal still knows the originals
    assert k.driver(GPU) == k.driver(AUDIO) == 'vfio-pci'
    assert json.load(open(k.journal, encoding='utf-8'))['devices'][GPU]['driver_before'] == 'nvidia'


def test_a_given_back_device_that_no_longer_answers_is_quarantined_and_reported(workstation: Kernel) -> None:
    k = workstation
    assert not k.run(devices=[GPU, AUDIO]).get('failed')
    config = os.path.join(k.backing, 'sys', 'bus', 'pci', 'devices', GPU, 'config')
    with open(os.path.realpath(config), 'r+b') as handle:
        handle.write(b'\xff\xff\xff\xff')
    res = k.run(devices=[GPU, AUDIO], state='absent')
    assert not res.get('failed') and res['changed'] is True, res
    assert k.driver(GPU) == 'nvidia' and k.driver(AUDIO) == 'snd_hda_intel'  # the give-back itself worked
    assert [e['address'] for e in res['quarantined']] == [GPU]
    assert 'vendor id ffff' in res['quarantined'][0]['reason']
    assert '%s was given back but failed its health check and is quarantined' % GPU in json.dumps(res['warnings'])
    assert list(quarantine_record(k)) == [GPU]
