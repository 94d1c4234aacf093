"""The playbooks through ansible-runner, as AWX launches them, against a QEMU test host
(real kernel, emulated Intel IOMMU, emulated GPUs: see roles/testbed/files/launch.py), over SSH.

The host is the runtime phase's intel host (session fixture ``testbed_hosts``), after
test_real_kernel.py has bound and given back its GPU at runtime. Jobs: facts.yml; site.yml with a
kernel argument that makes the trial boot panic (the host falls back by itself, the job fails, nothing
permanent is written); then the "check, approve, run" pair: site.yml in check + diff mode, then for real with
its one reboot, a trial boot that comes up and is made permanent.
Run by tests/testbed/e2e.sh (needs root, qemu and the test-host image, which it builds).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import ansible_runner
import pytest
import yaml

from conftest import REPO, VENV_BIN

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'roles' / 'testbed' / 'files'))
import launch  # noqa: E402

PLAYBOOKS = REPO / 'playbooks'
TESTBED_HOSTS = ('intel',)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='QEMU test hosts need root'),
]


@pytest.fixture(scope='module')
def testhost(testbed_hosts: dict) -> Iterator[launch.TestHost]:
    yield testbed_hosts['intel']


@pytest.fixture()
def pdd(tmp_path: Path, testhost: launch.TestHost, installed_collection: Path,
        monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv('PATH', '%s:%s' % (VENV_BIN, os.environ.get('PATH', '')))
    root = tmp_path / 'pdd'
    shutil.copytree(PLAYBOOKS, root / 'project' / 'playbooks')
    testhost.write_inventory(root / 'inventory' / 'hosts.yml', group='gpu_hosts')
    (root / 'env').mkdir()
    (root / 'env' / 'envvars').write_text(yaml.safe_dump({
        'ANSIBLE_COLLECTIONS_PATH': str(installed_collection),
        'ANSIBLE_HOST_KEY_CHECKING': 'False',
        'ANSIBLE_NOCOLOR': '1',
    }))
    (root / 'env' / 'extravars').write_text(yaml.safe_dump({}))
    (root / 'env' / 'settings').write_text(yaml.safe_dump({'job_timeout': 1500}))
    return root


def _stats(r: 'ansible_runner.Runner') -> dict:
    (found,) = [e['event_data'] for e in r.events if e.get('event') == 'playbook_on_stats']
    return found


def test_facts_job_on_a_real_kernel(pdd: Path, testhost: launch.TestHost) -> None:
    r = ansible_runner.run(private_data_dir=str(pdd), playbook='playbooks/facts.yml',
                           inventory=str(pdd / 'inventory' / 'hosts.yml'), extravars={}, quiet=True)
    out = r.stdout.read() if r.stdout else ''
    assert r.status == 'successful' and r.rc == 0, out[-4000:]
    stats = _stats(r)
    assert stats['ok'].get(testhost.name, 0) > 0
    assert stats['changed'].get(testhost.name, 0) == 0
    assert not stats['failures'] and not stats['dark']
    facts = [e['event_data']['res']['ansible_facts']['gpu_passthrough'] for e in r.events
             if e.get('event') == 'runner_on_ok' and 'gpu_passthrough' in e['event_data'].get('res', {}).get('ansible_facts', {})]
    assert facts, 'no gpu_facts result among the job events'
    host = facts[0]['host']
    assert host['cpu_vendor'] == 'intel' and host['iommu_enabled'] is True
    addresses = {g['address']: g for g in facts[0]['gpus']}
    assert '0000:01:00.0' in addresses and '0000:02:00.0' in addresses
    assert isinstance(addresses['0000:01:00.0']['iommu_group'], int)
    if '0000:00:01.0' in addresses:
        assert addresses['0000:00:01.0']['state'] == 'boot-vga'


# -- an AWX "check, approve, run" workflow on a real kernel ------------------------------

VM_XML = REPO / 'molecule' / 'shared' / 'files' / 'gpu-vm.xml'
# What the job may change besides the files molecule/shared/files/snapshot.sh lists: the initramfs, the VM's
# definition, and the boot count kept by the image's fleetgpu-bootlog.service.
EXTRA_STATE = ('echo "initrd $(md5sum < /boot/initrd.img-$(uname -r) | cut -d" " -f1)"; '
               'echo "domain $(virsh -q -c qemu:///system dumpxml --inactive gpu-vm | md5sum | cut -d" " -f1)"; '
               'echo "boots $(wc -l < /var/lib/fleetgpu-testbed/boots)"')


def _host_state(host: launch.TestHost) -> list:
    """Every line of state the main job may change on the host, sorted."""
    return host.state(EXTRA_STATE)


def _boots(state: list) -> int:
    (count,) = [int(line.split()[1]) for line in state if line.startswith('boots ')]
    return count


HUGEPAGES = 64


def _hugepages(host: launch.TestHost, base: str = '/sys/kernel/mm/hugepages') -> int:
    """The 2 MiB pages the running kernel holds (nr_hugepages)."""
    return int(host.ssh(['cat', '%s/hugepages-2048kB/nr_hugepages' % base]).stdout.strip())


def _changed_tasks(r: 'ansible_runner.Runner', host: str) -> list:
    """(play, role, task) of every task that reported changed on the host, in order."""
    out = []
    for e in r.events:
        data = e.get('event_data', {})
        if e.get('event') == 'runner_on_ok' and data.get('host') == host and data.get('res', {}).get('changed'):
            out.append((data.get('play', ''), data.get('role', ''), data.get('task', '')))
    return out


# -- the boot-once trial: a job whose new kernel arguments do not boot -------------------

# With rdinit= naming no file, the kernel finds no init in the initramfs, mounts the root itself, cannot
# (root=UUID= needs the initramfs) and panics: a real panic at boot, as firmware with a broken IOMMU gives.
# (init= would not do: Debian's initramfs falls back to /sbin/init when the init it is given is missing.)
PANIC_ARG = 'rdinit=/fleetgpu-no-such-init'
TRIAL_SCRIPT = '/etc/grub.d/42_fleetgpu-passthrough-trial'
DROPIN = '/etc/default/grub.d/zz-fleetgpu-passthrough.cfg'
BOOT_CONFIG = ('cat /proc/cmdline; cat %s %s /var/lib/fleetgpu-passthrough/kernel_cmdline.json 2>/dev/null; '
               # GRUB writes next_entry= (empty) once it has used a one-time entry: the value is what counts
               'grep -c fleetgpu-passthrough-trial /boot/grub/grub.cfg; '
               'echo "next_entry=$(sed -n s/^next_entry=//p /boot/grub/grubenv)"'
               % (DROPIN, TRIAL_SCRIPT))


def _testbed_group_vars(pdd: Path) -> str:
    group_vars = pdd / 'inventory' / 'group_vars'
    group_vars.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / 'inventories' / 'testbed' / 'group_vars' / 'gpu_hosts.yml', group_vars / 'gpu_hosts.yml')
    return str(pdd / 'inventory')


def _serial(host: launch.TestHost) -> str:
    return host.serial_log.read_text(errors='replace')


def test_trial_boot_that_panics_falls_back_and_fails_the_job(pdd: Path, testhost: launch.TestHost) -> None:
    """The one reboot boots the new command line once: a trial whose arguments make the kernel panic comes back
    by itself on the old entry, the job fails saying so, and nothing permanent was written (issue 15)."""
    inventory = _testbed_group_vars(pdd)
    config = testhost.ssh(['sh', '-c', shlex.quote(BOOT_CONFIG)]).stdout
    assert PANIC_ARG not in config and 'panic=' not in config, config
    boots = _boots(_host_state(testhost))
    serial = len(_serial(testhost))
    (pdd / 'env' / 'extravars').write_text(yaml.safe_dump({'vfio_host_kernel_args': [PANIC_ARG]}))
    job = ansible_runner.run(private_data_dir=str(pdd), playbook='playbooks/site.yml', inventory=inventory, quiet=True)
    out = job.stdout.read() if job.stdout else ''
    assert job.status == 'failed' and job.rc != 0, out[-4000:]
    failures = [e['event_data']['res'].get('msg', '') for e in job.events if e.get('event') == 'runner_on_failed']
    assert len(failures) == 1, failures
    assert 'did not come up' in failures[0] and 'fell back to its previous command line' in failures[0], failures
    assert PANIC_ARG in failures[0] and 'Nothing permanent was written' in failures[0], failures
    # the kernel really booted the trial entry once, panicked, and rebooted by itself into the old entry
    console = _serial(testhost)[serial:]
    assert console.count('Kernel panic - not syncing') == 1, console[-3000:]
    trial_lines = [line for line in console.splitlines() if 'Kernel command line:' in line and PANIC_ARG in line]
    assert len(trial_lines) == 1 and 'panic=10' in trial_lines[0], trial_lines
    # the boot configuration and the running command line are exactly as before; one boot reached user space
    assert testhost.ssh(['sh', '-c', shlex.quote(BOOT_CONFIG)]).stdout == config
    assert _boots(_host_state(testhost)) == boots + 1


def test_check_job_predicts_the_converge_job(pdd: Path, testhost: launch.TestHost) -> None:
    """site.yml in check + diff mode writes nothing and names exactly the tasks the real job
    then changes (the reboot included); the real job reboots the host once."""
    define = subprocess.run(testhost.ssh_command(['virsh', '-q', '-c', 'qemu:///system', 'define', '/dev/stdin']),
                            input=VM_XML.read_text(), capture_output=True, text=True, timeout=300, check=False)
    assert define.returncode == 0, define.stderr
    inventory = _testbed_group_vars(pdd)
    # the job also reserves hugepages at boot, through the same kernel arguments and the same one reboot
    (pdd / 'env' / 'extravars').write_text(yaml.safe_dump({'vfio_host_hugepages': [{'size': '2M', 'count': HUGEPAGES}]}))
    before = _host_state(testhost)
    assert _hugepages(testhost) != HUGEPAGES, 'the test host already holds the pages the job is to reserve'

    check = ansible_runner.run(private_data_dir=str(pdd), playbook='playbooks/site.yml', inventory=inventory,
                               cmdline='--check --diff', quiet=True)
    out = check.stdout.read() if check.stdout else ''
    assert check.status == 'successful' and check.rc == 0, out[-4000:]
    assert _host_state(testhost) == before, 'check mode changed the host'
    predicted = _changed_tasks(check, testhost.name)
    assert any('reboot' in task.lower() for _play, _role, task in predicted), predicted
    # the new command line is tried once before it is made permanent: check mode predicts the commit too
    assert any(task.endswith('Make the kernel arguments permanent and remove the trial entry')
               for _play, _role, task in predicted), predicted
    diffs = [e['event_data']['res']['diff'] for e in check.events
             if e.get('event') == 'runner_on_ok' and e['event_data'].get('res', {}).get('diff')]
    assert any('iommu' in str(d) for d in diffs), 'diff mode did not show the kernel command line'
    assert any('hugepagesz=2M hugepages=%d' % HUGEPAGES in str(d) for d in diffs), \
        'diff mode did not show the hugepage arguments'
    cmdline = [e['event_data']['res'] for e in check.events if e.get('event') == 'runner_on_ok'
               and e['event_data'].get('task', '').split(' : ')[-1].startswith('Persist the kernel arguments')]
    assert cmdline and cmdline[0]['changed'], cmdline
    after = cmdline[0]['cmdline_after'].split()
    assert 'hugepagesz=2M' in after and after.index('hugepagesz=2M') + 1 == after.index('hugepages=%d' % HUGEPAGES), after

    # ansible-runner kept '--check --diff' in env/cmdline for the next run: drop it (AWX would
    # start the approved job from a fresh private data directory).
    (pdd / 'env' / 'cmdline').unlink()
    assert not (pdd / 'env' / 'cmdline').exists()
    real = ansible_runner.run(private_data_dir=str(pdd), playbook='playbooks/site.yml', inventory=inventory,
                              quiet=True)
    out = real.stdout.read() if real.stdout else ''
    assert real.status == 'successful' and real.rc == 0, out[-4000:]
    done = _changed_tasks(real, testhost.name)
    assert done == predicted, 'check mode predicted %s, the job changed %s' % (predicted, done)
    assert _boots(_host_state(testhost)) == _boots(before) + 1, 'the job did not reboot the host exactly once'
    # the host runs its trial boot (panic=10 is on the trial entry only), and the arguments are permanent now
    boot = testhost.ssh(['sh', '-c', shlex.quote(BOOT_CONFIG)]).stdout
    assert 'panic=10' in boot.splitlines()[0] and 'intel_iommu=on' in boot.splitlines()[0], boot
    assert 'intel_iommu=on' in testhost.ssh(['cat', DROPIN]).stdout and TRIAL_SCRIPT not in boot
    assert testhost.ssh(['test', '-e', TRIAL_SCRIPT], check=False).returncode == 1
    assert '\n0\nnext_entry=\n' in boot, boot
    summary = [e['event_data']['res'].get('msg', {}) for e in real.events if e.get('event') == 'runner_on_ok'
               and e['event_data'].get('task', '').startswith('Print which hosts still need a reboot')]
    assert summary and summary[0]['fleetgpu_boot_trials'] == {testhost.name: 'committed'}, summary
    # the kernel reserved the pages at boot (the test host has one NUMA node: all of them on node 0)
    running = testhost.ssh(['cat', '/proc/cmdline']).stdout.split()
    assert 'hugepagesz=2M' in running and running.index('hugepagesz=2M') + 1 == running.index('hugepages=%d' % HUGEPAGES), \
        running
    assert _hugepages(testhost) == HUGEPAGES
    assert _hugepages(testhost, '/sys/devices/system/node/node0/hugepages') == HUGEPAGES
    warned = [e for e in real.events if e.get('event') == 'runner_on_ok'
              and e['event_data'].get('task', '').split(' : ')[-1].startswith('Warn that the kernel reserved fewer hugepages')]
    assert not warned, 'the verification found a shortfall: %s' % warned
