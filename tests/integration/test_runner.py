"""The playbooks launched the way AWX / Automation Controller launches a job: through
``ansible_runner.run()`` with a private data directory laid out as AWX lays it out
(``project/``, ``inventory/``, ``env/extravars``, ``env/envvars``, ``env/settings``),
against simulated kernel trees.

Each test checks the runner's status and return code and the job events AWX stores
(``playbook_on_stats`` changed / failure counts per host, task results per host).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import ansible_runner
import pytest
import yaml

from conftest import REPO, VENV_BIN

sys.path.insert(0, str(REPO / 'tests' / 'sim'))
simkernel = pytest.importorskip('simkernel')

PLAYBOOKS = REPO / 'playbooks'
# inventory host -> simulated topology
HOSTS = {'ws1': 'workstation', 'pair1': 'identical_pair'}


def _need(*names: str) -> None:
    missing = [n for n in names if not (REPO / n).exists()]
    if missing:
        pytest.skip('not in the tree yet: %s' % ', '.join(missing))


class Job:
    """One AWX-style job: a private data directory and the runner's result."""

    def __init__(self, base: Path, collections: Path, hosts: Dict[str, Path],
                 host_vars: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        self.pdd = base / 'pdd'
        project = self.pdd / 'project'
        shutil.copytree(PLAYBOOKS, project / 'playbooks')
        inv = {'all': {'children': {'gpu_hosts': {'hosts': {}}}}}
        for host, root in hosts.items():
            hv = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                  # The one fleet-wide variable: the playbooks and both roles must follow it.
                  'fleetgpu_sysfs_root': str(root)}
            hv.update((host_vars or {}).get(host, {}))
            inv['all']['children']['gpu_hosts']['hosts'][host] = hv
        (self.pdd / 'inventory').mkdir(parents=True)
        self.inventory = self.pdd / 'inventory' / 'hosts.yml'
        self.inventory.write_text(yaml.safe_dump(inv))
        env = self.pdd / 'env'
        env.mkdir()
        # What a job template's credentials / settings put in the environment.
        (env / 'envvars').write_text(yaml.safe_dump({
            'ANSIBLE_COLLECTIONS_PATH': str(collections),
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_FORCE_COLOR': '0',
            'ANSIBLE_RETRY_FILES_ENABLED': '0',
            'ANSIBLE_LOCALHOST_WARNING': '0',
            'ANSIBLE_PYTHON_INTERPRETER': sys.executable,
        }))
        (env / 'extravars').write_text(yaml.safe_dump({}))
        (env / 'settings').write_text(yaml.safe_dump({'job_timeout': 900, 'idle_timeout': 600}))

    def run(self, playbook: str, extravars: Optional[Dict[str, Any]] = None, limit: Optional[str] = None,
            check: bool = False, diff: bool = False) -> 'ansible_runner.Runner':
        cmdline = ' '.join(a for a, on in (('--check', check), ('--diff', diff)) if on) or None
        # ansible-runner keeps a run's cmdline in env/cmdline and reuses it when the next run
        # passes none: a job after a check job would run in check mode too. AWX starts every
        # job from a fresh directory; drop the file to do the same.
        (self.pdd / 'env' / 'cmdline').unlink(missing_ok=True)
        return ansible_runner.run(private_data_dir=str(self.pdd), playbook=playbook,
                                  inventory=str(self.inventory), extravars=extravars or {},
                                  limit=limit, cmdline=cmdline, quiet=True)


def stats(r: 'ansible_runner.Runner') -> Dict[str, Dict[str, int]]:
    """playbook_on_stats event data: {'changed': {host: n}, 'ok': ..., 'failures': ..., 'dark': ...}."""
    found = [e['event_data'] for e in r.events if e.get('event') == 'playbook_on_stats']
    assert len(found) == 1, 'expected one playbook_on_stats event, got %d' % len(found)
    return found[0]


def results(r: 'ansible_runner.Runner', event: str = 'runner_on_ok') -> List[Dict[str, Any]]:
    return [e['event_data'] for e in r.events if e.get('event') == event]


def stdout(r: 'ansible_runner.Runner') -> str:
    return r.stdout.read() if r.stdout else ''


def snapshot(root: Path) -> Dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                out[str(p.relative_to(root))] = 'link:%s' % os.readlink(p) if p.is_symlink() else 'special'
                continue
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture()
def sim_roots(tmp_path: Path) -> Dict[str, Path]:
    return {host: Path(simkernel.materialize(topo, str(tmp_path / 'sim' / host))) for host, topo in HOSTS.items()}


@pytest.fixture()
def job(tmp_path: Path, installed_collection: Path, sim_roots: Dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv('PATH', '%s:%s' % (VENV_BIN, os.environ.get('PATH', '')))
    return Job(tmp_path, installed_collection, sim_roots)


def test_playbooks_exist() -> None:
    missing = [p for p in ('facts.yml', 'site.yml', 'restore.yml') if not (PLAYBOOKS / p).is_file()]
    assert not missing, 'playbooks missing: %s' % missing


# ----------------------------------------------------------------------------- helpers for site.yml
KERNEL = '6.1.0-27-amd64'
GRUB = 'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'
# Host tools the role calls on a Debian host, faked: they log their calls; the initramfs
# "image" lists the files the generator would pack.
FAKE_TOOLS = {
    'update-grub': '#!/bin/sh\necho "update-grub $*" >> "$FLEETGPU_TEST_LOG"\n',
    'update-initramfs': ('#!/bin/sh\necho "update-initramfs $*" >> "$FLEETGPU_TEST_LOG"\n'
                         'for root in "$FLEETGPU_TEST_ROOTS"/*; do\n'
                         '  img="$root/boot/initrd.img-' + KERNEL + '"\n'
                         '  echo "usr/lib/modules/' + KERNEL + '/kernel/drivers/vfio/pci/vfio-pci.ko" > "$img"\n'
                         '  for f in etc/modprobe.d/fleetgpu-passthrough.conf etc/fleetgpu-passthrough/vfio-pci-addresses; do\n'
                         '    [ -e "$root/$f" ] && echo "$f" >> "$img"\n'
                         '  done\n'
                         '  [ -e "$root/etc/initramfs-tools/scripts/init-top/fleetgpu-passthrough" ] && '
                         'echo scripts/init-top/fleetgpu-passthrough >> "$img"\n'
                         'done\nexit 0\n'),
    'lsinitramfs': '#!/bin/sh\ncat "$1"\n',
}


class SiteHosts:
    """Directory roots (a Debian /etc and /boot) for the GPU hosts of a site.yml job."""

    def __init__(self, base: Path, sim_roots: Dict[str, Path]) -> None:
        self.roots_dir = base / 'roots'
        self.roots = {}
        for host in sim_roots:
            root = self.roots_dir / host
            (root / 'etc/default/grub.d').mkdir(parents=True)
            (root / 'etc/default/grub').write_text(GRUB)
            (root / 'etc/initramfs-tools').mkdir(parents=True)
            (root / 'etc/initramfs-tools/initramfs.conf').write_text('MODULES=most\n')
            (root / 'boot').mkdir()
            (root / 'boot' / ('initrd.img-%s' % KERNEL)).write_text(
                'usr/lib/modules/%s/kernel/drivers/vfio/pci/vfio-pci.ko\n' % KERNEL)
            self.roots[host] = root
        self.bin = base / 'bin'
        self.bin.mkdir()
        for name, text in FAKE_TOOLS.items():
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.log = base / 'commands.log'
        self.log.write_text('')

    def host_vars(self) -> Dict[str, Dict[str, Any]]:
        # what an AWX inventory would hold per host: the GPU selection and, here, the roots
        return {host: {'vfio_host_root': str(root), 'vfio_host_devices': [{'address': '0000:01:00.0'}],
                       'vfio_host_initramfs': 'initramfs-tools', 'vfio_host_runtime_bind': False,
                       'vfio_host_install_packages': False}
                for host, root in self.roots.items()}

    def env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv('PATH', '%s:%s:%s' % (self.bin, VENV_BIN, os.environ.get('PATH', '')))
        monkeypatch.setenv('FLEETGPU_TEST_LOG', str(self.log))
        monkeypatch.setenv('FLEETGPU_TEST_ROOTS', str(self.roots_dir))

    def snapshot(self) -> Dict[str, str]:
        return snapshot(self.roots_dir)

    def commands(self) -> List[str]:
        lines = self.log.read_text().splitlines()
        self.log.write_text('')
        return lines


@pytest.fixture()
def site(tmp_path: Path, installed_collection: Path, sim_roots: Dict[str, Path],
         monkeypatch: pytest.MonkeyPatch):
    _need('playbooks/site.yml', 'roles/vfio_host', 'roles/libvirt_gpu')
    hosts = SiteHosts(tmp_path, sim_roots)
    hosts.env(monkeypatch)
    job = Job(tmp_path, installed_collection, sim_roots, host_vars=hosts.host_vars())
    return job, hosts


def cached_facts(r: 'ansible_runner.Runner', host: str) -> Dict[str, Any]:
    """A host's facts from the job's jsonfile fact cache (what AWX stores with fact storage on)."""
    cache = Path(r.config.fact_cache)
    files = [cache / host] + sorted(cache.glob('s*_%s' % host))
    existing = [f for f in files if f.is_file()]
    if not existing:
        return {}
    data = yaml.safe_load(existing[-1].read_text())
    if isinstance(data, dict) and set(data) == {'__payload__'}:
        data = yaml.safe_load(data['__payload__'])
    return data


def failed_messages(r: 'ansible_runner.Runner') -> List[str]:
    return [str(e['res'].get('msg', e['res'])) for e in results(r, 'runner_on_failed')]


# ----------------------------------------------------------------------------- facts.yml
def test_facts_job(job: Job, sim_roots: Dict[str, Path]) -> None:
    _need('playbooks/facts.yml')
    r = job.run('playbooks/facts.yml')
    assert r.status == 'successful' and r.rc == 0, stdout(r)[-4000:]
    st = stats(r)
    # every playbook first checks on the controller that its host pattern matches a host
    assert sorted(st['processed']) == sorted([*HOSTS, 'localhost'])
    assert st['changed'] == {} or set(st['changed'].values()) == {0}, st['changed']
    assert not st['failures'] and not st['dark']
    gathered = {e['host']: e['res']['ansible_facts']['gpu_passthrough'] for e in results(r)
                if e['task_action'].endswith('gpu_facts')}
    assert sorted(gathered) == sorted(HOSTS)
    for host, facts in gathered.items():
        assert '0000:01:00.0' in [g['address'] for g in facts['gpus']], host
        # AWX's fact storage: the job's jsonfile cache holds the same facts
        assert cached_facts(r, host).get('gpu_passthrough') == facts, host
    reports = [e['res']['msg'] for e in results(r) if e['task'] == 'Print the fleet report']
    assert len(reports) == 1 and sorted(reports[0]['hosts']) == sorted(HOSTS)
    assert reports[0]['summary']['hosts_ok'] == len(HOSTS) and reports[0]['report'].endswith('fleet-report.json')


@pytest.mark.parametrize('limit', ['pair1', 'ws1'])
def test_facts_job_limit(job: Job, limit: str) -> None:
    _need('playbooks/facts.yml')
    r = job.run('playbooks/facts.yml', limit=limit)
    assert r.status == 'successful' and r.rc == 0, stdout(r)[-4000:]
    assert list(stats(r)['processed']) == [limit]
    assert {e['host'] for e in results(r)} == {limit}
    (report,) = [e['res']['msg'] for e in results(r) if e['task'] == 'Print the fleet report']
    assert list(report['hosts']) == [limit]


def test_facts_job_hosts_from_extra_vars(job: Job) -> None:
    """fleetgpu_hosts (a survey answer) picks the hosts instead of the group gpu_hosts."""
    _need('playbooks/facts.yml')
    r = job.run('playbooks/facts.yml', extravars={'fleetgpu_hosts': 'ws1'})
    assert r.status == 'successful' and r.rc == 0, stdout(r)[-4000:]
    assert sorted(stats(r)['processed']) == ['localhost', 'ws1']


# ----------------------------------------------------------------------------- site.yml / restore.yml
def test_site_check_diff_changes_nothing(site) -> None:
    """A check job with diff (job type Check, Show changes on) plans per host and writes nothing."""
    job, hosts = site
    before = hosts.snapshot()
    r = job.run('playbooks/site.yml', extravars={'vfio_host_reboot_ok': 'false'}, check=True, diff=True)
    assert r.status == 'successful' and r.rc == 0, stdout(r)[-6000:]
    st = stats(r)
    assert sorted(st['processed']) == sorted([*HOSTS, 'localhost'])
    for host in HOSTS:
        assert st['changed'].get(host, 0) > 0, 'check mode predicts no change on %s' % host
    assert not st['failures']
    diffs = [e for e in results(r) if e['res'].get('diff')]
    assert {e['host'] for e in diffs} == set(HOSTS), 'diff mode shows no change for some host'
    assert hosts.snapshot() == before
    assert [c for c in hosts.commands() if not c.startswith('lsinitramfs')] == []


def test_site_survey_strings_then_idempotent(site) -> None:
    """The first node of the approval workflow: survey answers are strings; no reboot; then nothing to do."""
    job, hosts = site
    answers = {'vfio_host_reboot_ok': 'false', 'vfio_host_iommu_pt': 'true', 'fleetgpu_serial': 2}
    r = job.run('playbooks/site.yml', extravars=answers)
    assert r.status == 'successful' and r.rc == 0, stdout(r)[-6000:]
    st = stats(r)
    for host in HOSTS:
        assert st['changed'].get(host, 0) > 0
    assert not [e for e in results(r) if e['task_action'] == 'ansible.builtin.reboot']
    required = {e['host']: e['res']['ansible_facts']['vfio_host_reboot_required'] for e in results(r)
                if 'vfio_host_reboot_required' in e['res'].get('ansible_facts', {})}
    assert required == {host: True for host in HOSTS}
    messages = [e['res'].get('msg', '') for e in results(r) if e['task'].endswith('Say that a reboot is required')]
    assert messages and all('vfio_host_reboot_ok' in m for m in messages)
    # the artifact a workflow hands to its approval node
    assert stats(r).get('artifact_data', {}).get('fleetgpu_reboot_required') == {host: True for host in HOSTS}
    for host, root in hosts.roots.items():
        assert 'intel_iommu=on' in (root / 'etc/default/grub.d/zz-fleetgpu-passthrough.cfg').read_text(), host

    after = hosts.snapshot()
    hosts.commands()
    r = job.run('playbooks/site.yml', extravars={'vfio_host_reboot_ok': 'false'})
    assert r.status == 'successful' and r.rc == 0, stdout(r)[-6000:]
    changed = stats(r)['changed']
    assert changed == {} or set(changed.values()) == {0}, [
        (e['host'], e['task']) for e in results(r) if e['res'].get('changed')]
    assert hosts.snapshot() == after
    assert stats(r).get('artifact_data', {}).get('fleetgpu_reboot_required') == {host: True for host in HOSTS}

    # restore.yml in check mode after the converge: plans the undo, writes nothing
    r = job.run('playbooks/restore.yml', check=True, diff=True)
    assert r.status == 'successful' and r.rc == 0, stdout(r)[-6000:]
    for host in HOSTS:
        assert stats(r)['changed'].get(host, 0) > 0
    assert hosts.snapshot() == after


def test_site_limit_one_host(site) -> None:
    job, hosts = site
    before = hosts.snapshot()
    r = job.run('playbooks/site.yml', limit='pair1', check=True)
    assert r.status == 'successful' and r.rc == 0, stdout(r)[-6000:]
    assert list(stats(r)['processed']) == ['pair1']
    assert {e['host'] for e in results(r)} <= {'pair1'}
    assert hosts.snapshot() == before


def test_site_host_without_devices_is_left_alone(site) -> None:
    """A host with no GPU to give (no vfio_host_devices, no pool GPU, no placed VM) is left alone with a
    message, not failed (issue 12: the rest of the lab works without GPU)."""
    job, hosts = site
    before = hosts.snapshot()
    r = job.run('playbooks/site.yml', extravars={'vfio_host_devices': []}, limit='ws1')
    assert r.status == 'successful' and r.rc == 0, stdout(r)[-4000:]
    assert not stats(r)['failures'] and not stats(r)['changed']
    messages = [e['res'].get('msg', '') for e in results(r) if e['task'] == 'Say why nothing is done here']
    assert messages and 'left alone' in messages[0], messages
    assert hosts.snapshot() == before


def test_site_bad_survey_answer_fails_validation(site) -> None:
    job, hosts = site
    before = hosts.snapshot()
    r = job.run('playbooks/site.yml', extravars={'vfio_host_reboot_ok': 'perhaps'}, limit='ws1')
    assert r.status == 'failed' and r.rc != 0
    failed = results(r, 'runner_on_failed')
    assert failed, stdout(r)[-4000:]
    assert failed[0]['task_action'] in ('validate_argument_spec', 'ansible.builtin.validate_argument_spec'), (
        failed[0]['task_action'], failed[0]['res'].get('msg'))
    assert "vfio_host_reboot_ok" in failed[0]['res']['msg'] and 'bool' in failed[0]['res']['msg']
    assert hosts.snapshot() == before


# ----------------------------------------------------------------------------- static: defaults
MAGIC = frozenset(['ansible_facts', 'ansible_check_mode', 'ansible_play_hosts', 'ansible_play_hosts_all',
                   'ansible_play_batch', 'inventory_hostname', 'hostvars', 'groups', 'group_names', 'item',
                   'omit', 'play_hosts', 'ansible_diff_mode', 'role_path', 'playbook_dir', 'true', 'false',
                   'none', 'True', 'False', 'None',
                   # Jinja and Ansible global functions
                   'dict', 'range', 'lookup', 'query', 'q', 'now', 'lipsum', 'cycler', 'joiner', 'namespace',
                   'undef'])


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ('when', 'that', 'changed_when', 'failed_when', 'until'):
                for cond in (value if isinstance(value, list) else [value]):
                    if isinstance(cond, str):
                        yield '{{ %s }}' % cond
            else:
                yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _defined_in(plays: list) -> set:
    """Variables a playbook defines itself: registered results, set_fact keys, vars blocks."""
    found = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get('register'), str):
                found.add(node['register'])
            for key in ('ansible.builtin.set_fact', 'set_fact', 'vars'):
                if isinstance(node.get(key), dict):
                    found.update(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(plays)
    return found


def _undefaulted(text: str) -> set:
    """Variable names a template reads without a default() filter around them."""
    from jinja2 import Environment, nodes
    env = Environment()
    ast = env.parse(text)
    defaulted = set()
    for flt in ast.find_all(nodes.Filter):
        if flt.name in ('default', 'd') and flt.node is not None:
            defaulted.update(n.name for n in flt.node.find_all(nodes.Name))
            if isinstance(flt.node, nodes.Name):
                defaulted.add(flt.node.name)
    for test in ast.find_all(nodes.Test):
        if test.name in ('defined', 'undefined') and isinstance(test.node, nodes.Name):
            defaulted.add(test.node.name)
    local = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ('store', 'param')}
    return {n.name for n in ast.find_all(nodes.Name) if n.ctx == 'load'} - defaulted - local


@pytest.mark.parametrize('playbook', ['facts.yml', 'site.yml', 'restore.yml', 'verify_guests.yml'])
def test_playbook_variables_have_defaults(playbook: str) -> None:
    """Every variable a playbook reads before a role's defaults apply has a default()."""
    _need('playbooks/%s' % playbook)
    plays = yaml.safe_load((PLAYBOOKS / playbook).read_text())
    own = _defined_in(plays)
    problems = []
    for play in plays:
        for text in _strings({k: v for k, v in play.items() if k != 'roles'}):
            if '{{' not in text and '{%' not in text:
                continue
            for name in sorted(_undefaulted(text) - MAGIC - own):
                problems.append('%s: %s (in %r)' % (playbook, name, text.strip()[:80]))
    assert not problems, 'variables without a default:\n  ' + '\n  '.join(problems)
