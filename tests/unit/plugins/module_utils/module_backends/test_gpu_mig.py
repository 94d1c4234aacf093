"""gpu_mig's engine against the recorded nvidia-smi command interface (tests/fake_nvidia_smi.py): layout,
idempotence, check mode, persistence, absent, and the errors."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _mig
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import gpu_mig
from tests import fake_nvidia_smi as fake


class Host:
    def __init__(self, tmp: Path, gpus: list[dict] | None = None) -> None:
        self.state = str(tmp / 'smi-state')
        self.smi = fake.install(str(tmp / 'bin'), self.state, gpus)
        self.root = str(tmp / 'root')
        os.makedirs(self.root)
        self.reloads = 0

    def run_cmd(self, argv: list) -> tuple[int, str, str]:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    def reload(self) -> None:
        self.reloads += 1

    def mig(self, gpus: list[dict], state: str = 'present', check: bool = False, persist: bool = True) -> tuple[dict, list[str]]:
        return gpu_mig.run(self.run_cmd, self.smi, gpus, state, persist, self.root, check, True, self.reload)

    def changing_calls(self) -> list[list[str]]:
        return [c for c in fake.calls(self.state) if any(a in c for a in ('-mig', '-cgi', '-dci', '-dgi'))]


LAYOUT = [{'gpu': 0, 'instances': [{'profile': '1g.10gb', 'count': 2}, {'profile': '3g.40gb', 'count': 1}]}]


def test_layout_is_made_with_argument_lists_then_nothing_changes(tmp_path: Path) -> None:
    host = Host(tmp_path)
    predicted, _w = host.mig(LAYOUT, check=True)
    assert predicted['changed'] and host.changing_calls() == []          # check mode runs only the reads
    assert not os.path.exists(os.path.join(host.root, 'etc/systemd/system/fleetgpu-mig.service'))
    assert predicted['commands'] == [[host.smi, '-i', '0', '-mig', '1'],
                                     [host.smi, 'mig', '-i', '0', '-cgi', '3g.40gb,1g.10gb,1g.10gb', '-C']]
    result, warnings = host.mig(LAYOUT)
    assert result['changed'] and warnings == [] and not result['reboot_required']
    # what check mode predicted is what ran (the profiles are checked once MIG mode is on)
    ran = host.changing_calls()
    assert ran == [a[1:] for a in predicted['commands']]
    [gpu] = result['gpus']
    assert gpu['mig'] == 'enabled' and gpu['layout'] == ['3g.40gb', '1g.10gb', '1g.10gb']
    assert sorted(i['profile'] for i in gpu['instances']) == ['1g.10gb', '1g.10gb', '3g.40gb']
    assert all(i['compute_instances'] == [0] for i in gpu['instances'])
    unit = Path(host.root, 'etc/systemd/system/fleetgpu-mig.service').read_text()
    assert 'Before=nvidia-vgpud.service nvidia-vgpu-mgr.service libvirtd.service' in unit
    assert 'ExecStart=%s -i 00000000:41:00.0 -mig 1\n' % host.smi in unit
    assert 'ExecStart=%s mig -i 00000000:41:00.0 -cgi 3g.40gb,1g.10gb,1g.10gb -C\n' % host.smi in unit
    assert os.readlink(os.path.join(host.root, 'etc/systemd/system/multi-user.target.wants/fleetgpu-mig.service')) == \
        '/etc/systemd/system/fleetgpu-mig.service'
    assert host.reloads == 1
    # second run and second check run: no change, no command that changes anything
    before = len(host.changing_calls())
    for check in (False, True):
        again, _w = host.mig(LAYOUT, check=check)
        assert not again['changed'] and again['commands'] == [] and again['files'] == [], again
    assert len(host.changing_calls()) == before


def test_a_changed_layout_is_replaced_whole_and_the_diff_shows_it(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.mig(LAYOUT)
    new = [{'gpu': '41:00.0', 'instances': [{'profile': 'MIG 7g.80gb'}]}]
    predicted, _w = host.mig(new, check=True)
    assert predicted['commands'] == [[host.smi, 'mig', '-i', '0', '-dci'], [host.smi, 'mig', '-i', '0', '-dgi'],
                                     [host.smi, 'mig', '-i', '0', '-cgi', '7g.80gb', '-C']]
    layout_diff = predicted['diff'][0]
    assert layout_diff['before'] == 'GPU 0 00000000:41:00.0: 1g.10gb, 1g.10gb, 3g.40gb\n'
    assert layout_diff['after'] == 'GPU 0 00000000:41:00.0: 7g.80gb\n'
    result, _w = host.mig(new)
    assert [i['profile'] for i in result['gpus'][0]['instances']] == ['7g.80gb']
    assert not host.mig(new)[0]['changed']


def test_absent_removes_instances_mig_mode_and_the_persisted_files(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.mig(LAYOUT + [{'gpu': 1, 'instances': [{'profile': '2g.20gb', 'count': 3}]}])
    result, _w = host.mig([{'gpu': 0}], state='absent')
    assert result['commands'] == [[host.smi, 'mig', '-i', '0', '-dci'], [host.smi, 'mig', '-i', '0', '-dgi'],
                                  [host.smi, '-i', '0', '-mig', '0']]
    gpus = fake.state(host.state)['gpus']
    assert gpus[0]['mig'] is False and gpus[0]['instances'] == [] and len(gpus[1]['instances']) == 3
    unit = Path(host.root, 'etc/systemd/system/fleetgpu-mig.service').read_text()
    assert '41:00.0' not in unit and 'C1:00.0 -cgi 2g.20gb,2g.20gb,2g.20gb -C' in unit   # GPU 1 stays persisted
    host.mig([{'gpu': 1}], state='absent')
    assert not os.path.exists(os.path.join(host.root, 'etc/systemd/system/fleetgpu-mig.service'))
    assert not os.path.lexists(os.path.join(host.root, 'etc/systemd/system/multi-user.target.wants/fleetgpu-mig.service'))
    assert not os.path.exists(os.path.join(host.root, 'etc/fleetgpu-passthrough/mig-layout.json'))
    assert not host.mig([{'gpu': 0}, {'gpu': 1}], state='absent')[0]['changed']


@pytest.mark.parametrize('gpus,needle', [
    ([{'gpu': 2, 'instances': [{'profile': '1g.10gb'}]}], r'GPU 2 \(Tesla T4, 00000000:3B:00.0\) does not support MIG'),
    ([{'gpu': 7}], r'gpus\[0\] \(GPU 7\): no NVIDIA GPU 7 \(nvidia-smi lists: 0 00000000:41:00.0'),
    ([{'gpu': 'nope'}], r"gpus\[0\].gpu: 'nope' is neither a GPU index"),
    ([{'gpu': 0, 'instances': [{'profile': '1g.10gb', 'count': 0}]}], r'instances\[0\].count must be a number of 1 or more'),
    ([{'gpu': 0}, {'gpu': '0'}], r'gpus\[1\]: GPU 0 is listed twice'),
    ([], r'gpus must be a non-empty list'),
])
def test_bad_input_is_refused_naming_it_before_any_change(tmp_path: Path, gpus: list, needle: str) -> None:
    host = Host(tmp_path)
    with pytest.raises(_mig.MigError, match=needle):
        host.mig(gpus)
    assert host.changing_calls() == []


def test_profiles_are_checked_against_the_gpu_before_any_change(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.mig([{'gpu': 0, 'instances': []}])                          # MIG mode on, no instance
    with pytest.raises(_mig.MigError, match=r"profile '5g.50gb' is not offered by this GPU \(profiles: 1g.10gb \(id 19\)"):
        host.mig([{'gpu': 0, 'instances': [{'profile': '5g.50gb'}]}])
    with pytest.raises(_mig.MigError, match=r'3 x 3g.40gb asked, GPU 0 holds at most 2'):
        host.mig([{'gpu': 0, 'instances': [{'profile': '3g.40gb', 'count': 3}]}])
    with pytest.raises(_mig.MigError, match=r'needs 8 compute slices, GPU 0 has 7'):
        host.mig([{'gpu': 0, 'instances': [{'profile': '4g.40gb'}, {'profile': '2g.20gb', 'count': 2}]}])
    assert [c for c in host.changing_calls() if '-cgi' in c] == []


def test_nvidia_smi_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(_mig.MigError, match='nvidia-smi was not found .* MIG needs the NVIDIA driver'):
        gpu_mig.run(lambda argv: (0, '', ''), None, LAYOUT, 'present', True, str(tmp_path), False, False)


def test_an_instance_in_use_is_not_destroyed_and_the_tool_says_why(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.mig(LAYOUT)
    data = fake.state(host.state)
    data['gpus'][0]['busy'] = True
    Path(host.state, 'state.json').write_text(json.dumps(data))
    with pytest.raises(_mig.MigError, match='-dci failed with exit code 19: .*In use by another client'):
        host.mig([{'gpu': 0, 'instances': [{'profile': '7g.80gb'}]}])
    assert len(fake.state(host.state)['gpus'][0]['instances']) == 3


def test_pending_mig_mode_warns_and_asks_for_a_reboot(tmp_path: Path) -> None:
    gpus = fake.default_gpus()
    gpus[0]['busy'] = True
    host = Host(tmp_path, gpus)
    result, warnings = host.mig(LAYOUT)
    assert result['reboot_required'] and result['gpus'][0]['mig'] == 'pending'
    assert "MIG mode is pending until the GPU is reset or the host reboots" in warnings[0]
    assert [c for c in host.changing_calls() if '-cgi' in c] == []
    assert '-cgi 3g.40gb,1g.10gb,1g.10gb -C' in Path(host.root, 'etc/systemd/system/fleetgpu-mig.service').read_text()


def test_persist_false_writes_nothing(tmp_path: Path) -> None:
    host = Host(tmp_path)
    result, _w = host.mig(LAYOUT, persist=False)
    assert result['changed'] and result['files'] == [] and result['unit'] is None
    assert os.listdir(host.root) == []


@pytest.mark.parametrize('text,rows', [
    ('0, 00000000:41:00.0, NVIDIA A100 80GB PCIe, Enabled, Enabled\n2, 00000000:3B:00.0, Tesla T4, [N/A], [N/A]\n',
     [(0, 'Enabled', True), (2, '[N/A]', False)]),
    ('1, 00000000:C1:00.0, Odd, Name, With Commas, Disabled, Enabled\n', [(1, 'Disabled', True)]),
])
def test_query_rows(text: str, rows: list) -> None:
    assert [(r.index, r.mig_current, r.supports_mig) for r in _mig.parse_query(text)] == rows


def test_query_garbage_names_the_line() -> None:
    with pytest.raises(_mig.MigError, match="not index, bus id, name, MIG mode: 'oops'"):
        _mig.parse_query('oops\n')
