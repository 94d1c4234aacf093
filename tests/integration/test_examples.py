"""Every module's EXAMPLES, as ``ansible-doc`` shows them to users, run by ansible-playbook.

The example text is taken from ``ansible-doc --json`` of the installed collection and put into
the play verbatim (so YAML reads it as a user's playbook would: an unquoted address would be a
number here too). What an example cannot know, the test gives through the play, never by
editing the example's arguments:

* ``module_defaults`` point each module at a simulated host: ``sysfs_root`` (a simulated kernel
  tree, or the FUSE kernel that behaves for vfio_bind), ``root`` (a directory root with the
  bootloader and initramfs tools as logging stand-ins), ``uri`` (a private libvirtd),
  ``journal_path``;
* a few absolute paths of the examples that name the user's machine (``/host/sys``,
  ``/srv/vsphere-export``, a ROM image) are mapped to test paths, each checked to be in the text;
* variables the examples expect from earlier plays (``fleetgpu_models``) are play vars, and the
  results ``fleet_plan`` reads (``fleetgpu_gpu_facts``, ``fleetgpu_libvirt_info``) are registered
  by tasks before the examples, as play 1 of site.yml does.

Each test asserts that every example task ran (not skipped, unless the example says when) and
succeeded, and what it did.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from conftest import playbook_env, playbook_json, tool
from tests.integration import libvirtd as private
from tests.integration.test_gpu_partition import fake_mdevctl
from tests.integration.test_vfio_host_role import Host
from tests.sim import fusekernel, simkernel

MODULES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / 'plugins' / 'modules').glob('*.py')
                 if not p.name.startswith('_'))
TESTED = ('fleet_plan', 'gpu_facts', 'gpu_mig', 'gpu_partition', 'gpu_quarantine', 'guest_check', 'iommu_check',
          'kernel_cmdline', 'libvirt_domain_drain', 'libvirt_gpu_info', 'libvirt_hostdev', 'vfio_bind', 'vfio_host_config',
          'vmware_gpu_import')
FQ = 'fleetgpu.passthrough.'


def examples_of(installed_collection: Path, module: str) -> str:
    out = subprocess.run([tool('ansible-doc'), '--json', FQ + module], capture_output=True, text=True,
                         env=playbook_env(installed_collection), check=True, timeout=120).stdout
    text = json.loads(out)[FQ + module]['examples']
    assert text and text.strip(), 'no EXAMPLES for %s' % module
    return text


def play_of(text: str, subst: dict[str, str], hosts: str = 'localhost', defaults: dict | None = None,
            play_vars: dict | None = None, before: str = '') -> tuple[str, list[str]]:
    """The play around the example text, and the names of the example tasks."""
    for old, new in subst.items():
        assert old in text, 'the examples no longer mention %s' % old
        text = text.replace(old, new)
    names = [t['name'] for t in yaml.safe_load(text)]
    body = '\n'.join(('    ' + line) if line.strip() else '' for line in text.splitlines())
    play = ('- name: The examples\n  hosts: %s\n  gather_facts: false\n  module_defaults: %s\n  vars: %s\n'
            '  tasks:\n%s%s\n' % (hosts, json.dumps(defaults or {}), json.dumps(play_vars or {}), before, body))
    return play, names


def ran(doc: dict, names: list[str], skipped: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """Every example task ran and none failed (those in `skipped` were skipped by their when)."""
    by_name: dict[str, list[dict]] = {}
    for t in doc['tasks']:
        by_name.setdefault(t['task'], []).append(t)
    for name in names:
        assert name in by_name, 'example %r did not run: %s' % (name, list(by_name))
        for t in by_name[name]:
            want = ('skipped',) if name in skipped else ('ok',)
            assert t['status'] in want, (name, t['status'], t['result'].get('msg'))
    return by_name


def changed(tasks: dict[str, list[dict]], name: str) -> bool:
    return bool(tasks[name][0]['result'].get('changed'))


def test_every_module_has_its_examples_run() -> None:
    assert sorted(TESTED) == MODULES


@pytest.fixture(scope='module')
def sims(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {n: simkernel.materialize(n, str(tmp_path_factory.mktemp(n))) for n in ('amd_host', 'hgx8', 'inference', 'workstation')}


@pytest.fixture()
def daemon() -> Iterator[private.PrivateLibvirtd]:
    why = private.available()
    if why is not None:
        pytest.fail(why)
    d = private.PrivateLibvirtd()
    d.start()
    try:
        yield d
    finally:
        d.cleanup()


def _vars() -> dict:
    # the modules that need libvirt-python and lxml find them in the test's interpreter
    return {'ansible_python_interpreter': sys.executable}


def test_gpu_facts_examples(installed_collection: Path, run_playbook, sims: dict) -> None:
    text = examples_of(installed_collection, 'gpu_facts')
    play, names = play_of(text, {'/host/sys': sims['amd_host']}, play_vars=_vars(),
                          defaults={FQ + 'gpu_facts': {'sysfs_root': sims['amd_host']}})
    proc = run_playbook(play)
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names)
    shown = tasks['Show the GPUs that can be passed through right now'][0]['result']['msg']
    assert shown == ['0000:41:00.0', '0000:81:00.0'], shown   # vfio-ready, and available on nvidia
    two = tasks['Two given functions'][0]['result']['ansible_facts']['gpu_passthrough']['gpus']
    assert [g['address'] for g in two] == ['0000:41:00.0', '0000:81:00.0']


def test_gpu_partition_examples(installed_collection: Path, run_playbook, tmp_path: Path) -> None:
    if not os.path.exists('/dev/fuse'):
        pytest.fail('the behaving simulated kernel needs /dev/fuse')
    text = examples_of(installed_collection, 'gpu_partition')
    root = tmp_path / 'root'
    with fusekernel.simulated('partition', tmp_path / 'k') as sysfs:
        env = fake_mdevctl(root, sysfs, tmp_path / 'bin')
        play, names = play_of(text, {}, play_vars=_vars(), defaults={
            FQ + 'gpu_partition': {'sysfs_root': sysfs, 'root': str(root), 'timeout': 5}})
        proc = run_playbook(play, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:]
        tasks = ran(playbook_json(proc), names)
        vfs = tasks['Enable 4 SR-IOV VFs on a GPU, applied again at every boot when its driver binds'][0]['result']
        assert vfs['changed'] and len(vfs['vfs']) == 4
        uuids = tasks['Show the UUIDs to attach'][0]['result']['msg']
        assert len(uuids) == 2 and len(set(uuids)) == 2
        assert (root / 'mdevctl.log').read_text().splitlines()[:2] == [
            'define --uuid %s --parent 0000:04:00.0 --type nvidia-224 --auto' % uuids[0], 'start --uuid %s' % uuids[0]]
        assert changed(tasks, 'A mediated device until the next reboot only (no mdevctl needed)')
        assert os.listdir(os.path.join(sysfs, 'bus/mdev/devices')) == ['0f3e6b8a-3c1e-4d52-9a53-7a6c1d2e4f10']
        assert changed(tasks, 'Remove the mediated devices the collection created on the GPU')
        assert changed(tasks, 'Disable the VFs the collection enabled and drop the udev rule')
        assert [n for n in os.listdir(os.path.join(sysfs, 'bus/pci/devices/0000:03:00.0')) if n.startswith('virtfn')] == []
        assert not (root / 'etc/udev/rules.d/70-fleetgpu-passthrough-sriov-0000:03:00.0.rules').exists()


def test_gpu_quarantine_examples(installed_collection: Path, run_playbook, tmp_path: Path) -> None:
    root = simkernel.materialize('workstation', str(tmp_path / 'ws'))
    with open(os.path.join(root, 'bus/pci/devices/0000:01:00.0/config'), 'r+b') as handle:
        handle.write(b'\xff' * 4)   # the RTX 3090 no longer answers
    record = tmp_path / 'ws' / 'var/lib/fleetgpu-passthrough/quarantine.json'
    text = examples_of(installed_collection, 'gpu_quarantine')
    play, names = play_of(text, {}, play_vars=_vars(), defaults={FQ + 'gpu_quarantine': {'sysfs_root': root}})
    proc = run_playbook(play)
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names)
    first = tasks['Check every GPU of the host and quarantine those that do not answer'][0]['result']
    assert first['changed'] and first['added'] == ['0000:01:00.0'], first
    shown = tasks['Show the quarantined devices and why'][0]['result']['msg']
    assert list(shown) == ['0000:01:00.0'] and 'vendor id ffff' in shown['0000:01:00.0']['reason'], shown
    # already quarantined: a second check changes nothing; the audio function is healthy
    assert not changed(tasks, 'Check one GPU and its audio function after a VM gave them back')
    assert changed(tasks, 'Release a GPU from the quarantine once it was repaired (or the host rebooted)')
    assert not record.exists()


def test_iommu_check_examples(installed_collection: Path, run_playbook, sims: dict) -> None:
    text = examples_of(installed_collection, 'iommu_check')
    play, names = play_of(text, {}, play_vars=_vars(), defaults={FQ + 'iommu_check': {'sysfs_root': sims['amd_host']}})
    proc = run_playbook(play)
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names)
    stop = tasks['Stop when the IOMMU is off or the GPU\'s group cannot be passed'][0]['result']
    assert stop['ready'] is True, stop
    assert isinstance(tasks['Report'][0]['result']['msg'], list)


def test_kernel_cmdline_examples(installed_collection: Path, run_playbook, tmp_path: Path) -> None:
    # the running command line already has intel_iommu=on iommu=pt: the example's reboot is skipped
    host = Host(tmp_path / 'h', 'inference')
    (host.root / 'var/lib').mkdir(parents=True)   # as on every real root
    before = host.snapshot()
    text = examples_of(installed_collection, 'kernel_cmdline')
    play, names = play_of(text, {}, play_vars=_vars(),
                          defaults={FQ + 'kernel_cmdline': {'root': str(host.root), 'sysfs_root': host.sysfs}})
    proc = run_playbook(play, env=host.env())
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names, skipped=('Reboot when the running kernel does not have them yet',
                                                     'Reboot into the trial entry (a panic there reboots into the old entry by itself)'))
    assert changed(tasks, 'Turn the Intel IOMMU on in passthrough mode')
    # the first example already made intel_iommu=on permanent: there is nothing to try, nothing to commit
    assert tasks['Try the IOMMU arguments for one boot first (the permanent configuration stays as it is)'][0]['result']['trial']['state'] == 'none'
    assert not changed(tasks, 'Make them permanent once the host came up with them (fails when it fell back)')
    assert not changed(tasks, 'Drop a vfio-pci ids argument, whatever its value')
    # the undo gave back exactly what the first example added: the root is as it was
    assert changed(tasks, 'Give back the IOMMU arguments this collection added (the administrator\'s own stay)')
    assert host.snapshot() == before


def test_vfio_host_config_examples(installed_collection: Path, run_playbook, tmp_path: Path) -> None:
    host = Host(tmp_path / 'h', 'inference')
    text = examples_of(installed_collection, 'vfio_host_config')
    defaults = {FQ + 'gpu_facts': {'sysfs_root': host.sysfs},
                FQ + 'vfio_host_config': {'root': str(host.root), 'sysfs_root': host.sysfs},
                FQ + 'kernel_cmdline': {'root': str(host.root), 'sysfs_root': host.sysfs}}
    play, names = play_of(text, {}, play_vars=_vars(), defaults=defaults)
    proc = run_playbook(play, env=host.env())
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names)
    cfg = tasks['Persist vfio-pci for the two Tesla P4 cards (the console stays on the BMC\'s graphics)'][0]['result']
    assert sorted(d['address'] for d in cfg['selected']) == ['0000:3b:00.0', '0000:d8:00.0'], cfg['selected']
    assert 'options vfio-pci ids=10de:1bb3' in (host.root / 'etc/modprobe.d/fleetgpu-passthrough.conf').read_text()
    dropin = (host.root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg').read_text()
    assert all(arg in dropin for arg in cfg['cmdline_add']), (cfg['cmdline_add'], dropin)


def test_vfio_bind_examples(installed_collection: Path, run_playbook, tmp_path: Path) -> None:
    if not os.path.exists('/dev/fuse'):
        pytest.fail('the behaving simulated kernel needs /dev/fuse')
    topo = simkernel.load_topology('workstation')
    topo['kernel']['loaded'] = list(topo['kernel'].get('loaded') or []) + ['vfio', 'vfio_iommu_type1', 'vfio_pci',
                                                                           'vfio_pci_core']
    text = examples_of(installed_collection, 'vfio_bind')
    with fusekernel.simulated(topo, tmp_path / 'k') as root:
        def driver(addr: str) -> str:
            return os.path.basename(os.readlink(os.path.join(root, 'bus/pci/devices', addr, 'driver')))

        before = {a: driver(a) for a in ('0000:01:00.0', '0000:01:00.1')}
        play, names = play_of(text, {}, play_vars=_vars(), defaults={
            FQ + 'vfio_bind': {'sysfs_root': root, 'journal_path': str(tmp_path / 'vfio_bind.json'), 'timeout': 5}})
        proc = run_playbook(play)
        assert proc.returncode == 0, proc.stdout[-3000:]
        tasks = ran(playbook_json(proc), names)
        first = tasks['Give the GPU and its HDMI audio function to vfio-pci'][0]
        assert first['result']['changed']
        assert {d['address']: d['driver_after'] for d in first['result']['devices']} == \
            {'0000:01:00.0': 'vfio-pci', '0000:01:00.1': 'vfio-pci'}, first['result']['devices']
        # the group and the RTX 3090 are already on vfio-pci: nothing more to do
        assert not changed(tasks, 'Take the whole IOMMU group of a GPU, whatever else it holds')
        assert not changed(tasks, 'Bind every RTX 3090 (refused if one of them is the boot console)')
        assert changed(tasks, 'Give the devices back to their original drivers')
        assert {a: driver(a) for a in before} == before == {'0000:01:00.0': 'nvidia', '0000:01:00.1': 'snd_hda_intel'}


def test_libvirt_gpu_info_examples(installed_collection: Path, run_playbook, daemon: private.PrivateLibvirtd) -> None:
    daemon.define('vm1')
    text = examples_of(installed_collection, 'libvirt_gpu_info')
    play, names = play_of(text, {}, play_vars=_vars(), defaults={FQ + 'libvirt_gpu_info': {'uri': daemon.uri}})
    proc = run_playbook(play)
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names)
    info = tasks['Which domain holds which GPU'][0]['result']
    assert info['available'] is True and [d['name'] for d in info['domains']] == ['vm1']
    assert tasks['Show the running domains and their devices'][0]['result']['msg'] == {}   # vm1 is shut off


def test_libvirt_domain_drain_examples(installed_collection: Path, run_playbook, daemon: private.PrivateLibvirtd) -> None:
    """On a daemon whose one domain is shut off there is nothing to stop or refuse, and nothing to start again.

    The stop itself (graceful, time-out, force) runs on libvirt's test driver in the unit tests and on a real
    kernel in tests/testbed/test_drain.py.
    """
    daemon.define('vm1')
    text = examples_of(installed_collection, 'libvirt_domain_drain')
    play, names = play_of(text, {}, play_vars=_vars(), defaults={FQ + 'libvirt_domain_drain': {'uri': daemon.uri}})
    proc = run_playbook(play)
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names)
    drained = tasks['Shut down the domains that hold PCI host devices (up to 5 minutes), power off those that do not stop'][0]
    assert drained['result']['stopped'] == [] and drained['result']['changed'] is False
    assert not changed(tasks, 'Refuse to go on while a domain with a passed-through device runs')
    restarted = tasks['Start again the domains the drain stopped'][0]['result']
    assert restarted['started'] == [] and restarted['changed'] is False


def test_libvirt_hostdev_examples(installed_collection: Path, run_playbook, sims: dict, tmp_path: Path,
                                  daemon: private.PrivateLibvirtd) -> None:
    daemon.define('train01')
    daemon.define('desktop')
    daemon.define('vdi01')
    rom = tmp_path / 'gpu.rom'
    rom.write_bytes(b'\x55\xaa' + bytes(510))
    text = examples_of(installed_collection, 'libvirt_hostdev')
    play, names = play_of(text, {'/var/lib/libvirt/vbios/gpu.rom': str(rom)}, play_vars=_vars(),
                          defaults={FQ + 'libvirt_hostdev': {'uri': daemon.uri, 'sysfs_root': sims['amd_host']}})
    proc = run_playbook(play)
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names)
    assert changed(tasks, 'Give the GPU at 41:00.0 (and its HDMI audio 41:00.1) to the domain train01')
    assert not changed(tasks, 'Hot-plug into the running domain and keep it in the definition')
    wired = tasks["Wire train01 for its GPU - vCPUs and memory on the GPU's NUMA node, a 64-bit MMIO window for its BARs"]
    assert wired[0]['result']['changed'] and wired[0]['result']['wiring']['numatune'] == {'mode': 'strict', 'nodeset': '0'}
    assert changed(tasks, 'Take the GPU away again')
    # train01 is not running: only its definition is looked at, and the GPU is gone from it already
    assert not changed(tasks, 'Unplug it from the running domain too (where it is running), allowing the guest two minutes '
                              'to release it')
    assert '<hostdev' not in daemon.domain_xml('train01')
    # the vGPU went in (a UUID this host does not have: a warning, the definition takes it) and out again
    vgpu = tasks['A vGPU (mediated device, here a headless one) for the domain vdi01; an SR-IOV VF would be listed by its '
                 'address'][0]['result']
    assert vgpu['changed'] and [(m['uuid'], m['display']) for m in vgpu['mdevs']] == [('9d5b7c2e-58a1-4f0e-9c1d-2b1f6f0e7a31', False)]
    assert changed(tasks, 'Take the vGPU away from vdi01 (the short form of an mdev entry)')
    assert "type='mdev'" not in daemon.domain_xml('vdi01')
    assert "<memory mode='strict' nodeset='0'/>" in daemon.domain_xml('train01')   # the wiring stays with the VM
    desktop = daemon.domain_xml('desktop')
    assert "bus='0x81'" in desktop and str(rom) in desktop and "bus='0x06'" in desktop, desktop


def test_fleet_plan_examples(installed_collection: Path, run_playbook, sims: dict, tmp_path: Path) -> None:
    daemons = {h: private.PrivateLibvirtd() for h in ('hgx', 'infer')}
    try:
        for d in daemons.values():
            d.start()
        daemons['hgx'].define('train01')   # the user's existing VM (the example gives it no domain_xml)
        inventory = tmp_path / 'inventory.json'
        hosts = {name: {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                        'sim_sysfs': sims[topo], 'sim_uri': daemons[name].uri}
                 for name, topo in (('hgx', 'hgx8'), ('infer', 'inference'))}
        inventory.write_text(json.dumps({'gpu_hosts': {'hosts': hosts}}))
        (tmp_path / 'templates').mkdir()
        (tmp_path / 'templates' / 'infer01.xml.j2').write_text(private.domain_xml('infer01'))
        # what play 1 of site.yml registers before fleet_plan runs
        before = ('    - name: Read the GPUs\n      fleetgpu.passthrough.gpu_facts:\n'
                  '        sysfs_root: "{{ sim_sysfs }}"\n      register: fleetgpu_gpu_facts\n'
                  '    - name: Read libvirt\n      fleetgpu.passthrough.libvirt_gpu_info:\n'
                  '        uri: "{{ sim_uri }}"\n      register: fleetgpu_libvirt_info\n')
        text = examples_of(installed_collection, 'fleet_plan')
        play, names = play_of(text, {}, hosts='gpu_hosts', before=before)
        proc = run_playbook(play, inventory=str(inventory))
        assert proc.returncode == 0, proc.stdout[-3000:]
        tasks = ran(playbook_json(proc), names)
        placement = tasks[names[0]][0]['result']['placement']
        by_vm = {p['vm']: p for p in placement}
        assert by_vm['train01']['host'] == 'hgx' and len(by_vm['train01']['devices']) == 2
        assert by_vm['infer01']['host'] == 'infer' and by_vm['infer01']['devices'][0] in ('0000:3b:00.0', '0000:d8:00.0')
        report = json.loads((tmp_path / 'reports' / 'fleet-report.json').read_text())
        assert report['placement'] == placement
    finally:
        for d in daemons.values():
            d.cleanup()


def test_guest_check_examples(installed_collection: Path, run_playbook, sims: dict, tmp_path: Path,
                              daemon: private.PrivateLibvirtd) -> None:
    # KVM host kvm1 (the workstation tree) gave its GPU and HDMI audio to domain vm1; the guest vm1
    # is an inventory host whose tree shows that GPU on nvidia with its audio function
    daemon.define('vm1', private.domain_xml('vm1').replace('</devices>', ''.join(
        '<hostdev mode="subsystem" type="pci" managed="no"><source><address domain="0x0000" bus="0x01" '
        'slot="0x00" function="0x%d"/></source></hostdev>' % fn for fn in (0, 1)) + '</devices>'))
    inventory = tmp_path / 'inventory.json'
    local = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}
    inventory.write_text(json.dumps({'gpu_hosts': {'hosts': {'kvm1': local}}, 'guests': {'hosts': {'vm1': local}}}))
    before = ('- name: What play 1 of verify_guests.yml registers on the KVM hosts\n  hosts: gpu_hosts\n'
              '  gather_facts: false\n  tasks:\n'
              '    - name: Read the GPUs\n      fleetgpu.passthrough.gpu_facts:\n        sysfs_root: %s\n'
              '      register: fleetgpu_gpu_facts\n'
              '    - name: Read libvirt\n      fleetgpu.passthrough.libvirt_gpu_info:\n        uri: "%s"\n'
              '      register: fleetgpu_libvirt_info\n' % (sims['workstation'], daemon.uri))
    text = examples_of(installed_collection, 'guest_check')
    play, names = play_of(text, {}, hosts='guests', defaults={FQ + 'gpu_facts': {'sysfs_root': sims['workstation']}})
    proc = run_playbook(before + play, inventory=str(inventory))
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names)
    assert tasks['Say what was seen'][0]['result']['msg'] == (
        'vm1 on kvm1: OK - 1 GPU(s) given, all seen in the guest: 10de:2204 (with 10de:1aef) at 0000:01:00.0 on nvidia')


def test_vmware_gpu_import_examples(installed_collection: Path, run_playbook, tmp_path: Path) -> None:
    export = tmp_path / 'vsphere-export'
    export.mkdir()
    fixtures = Path(__file__).resolve().parents[1] / 'unit' / 'fixtures' / 'vmware' / 'good'
    (export / 'one-gpu.vmx').write_bytes((fixtures / 'one-gpu.vmx').read_bytes())
    text = examples_of(installed_collection, 'vmware_gpu_import')
    models = {'a100': {'vendor_id': '10de', 'device_id': '20b2'}}
    play, names = play_of(text, {'/srv/vsphere-export': str(export)}, play_vars={'fleetgpu_models': models})
    proc = run_playbook(play)
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names)
    imported = tasks['Derive the VM requests of the exported VMs'][0]['result']
    assert imported['vms'] and all(v['gpus'] for v in imported['vms']), imported
    assert not changed(tasks, 'Place them as a dry run')


def test_gpu_mig_examples(installed_collection: Path, run_playbook, tmp_path: Path) -> None:
    # no NVIDIA GPU here: the recorded command interface (tests/fake_nvidia_smi.py) stands in for nvidia-smi
    from tests import fake_nvidia_smi  # pylint: disable=import-outside-toplevel

    smi = fake_nvidia_smi.install(str(tmp_path / 'bin'), str(tmp_path / 'smi'))
    root = tmp_path / 'root'
    root.mkdir()
    text = examples_of(installed_collection, 'gpu_mig')
    play, names = play_of(text, {}, play_vars=_vars(), defaults={FQ + 'gpu_mig': {'nvidia_smi': smi, 'root': str(root)}})
    proc = run_playbook(play)
    assert proc.returncode == 0, proc.stdout[-3000:]
    tasks = ran(playbook_json(proc), names)
    made = tasks['Two 3g.40gb instances on the first GPU, seven 1g.10gb on the second, kept across reboots'][0]['result']
    assert made['changed'] and made['unit'] == 'fleetgpu-mig.service', made
    assert tasks['Show the instances of each GPU'][0]['result']['msg'] == [['3g.40gb', '3g.40gb'], ['1g.10gb'] * 7]
    gpus = fake_nvidia_smi.state(str(tmp_path / 'smi'))['gpus']
    assert gpus[0]['mig'] is False and gpus[0]['instances'] == []          # given back by the last example
    assert len(gpus[1]['instances']) == 7
    unit = (root / 'etc/systemd/system/fleetgpu-mig.service').read_text()
    assert '-i 00000000:C1:00.0 -cgi ' + ','.join(['1g.10gb'] * 7) + ' -C' in unit and '41:00.0' not in unit
