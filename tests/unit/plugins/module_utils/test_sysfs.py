"""The sysfs seam: rooted paths, reads, bounded reads and writes."""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._sysfs import (
    PathEscapeError,
    Sysfs,
    SysfsError,
    SysfsTimeout,
)
from tests.sim import simkernel


@pytest.fixture(scope='module')
def ws(tmp_path_factory: pytest.TempPathFactory) -> Sysfs:
    return Sysfs(simkernel.materialize('workstation', str(tmp_path_factory.mktemp('ws'))))


def test_roots_are_siblings(tmp_path: Path) -> None:
    s = Sysfs(str(tmp_path / 'host' / 'sys'))
    assert s.sys('bus', 'pci') == str(tmp_path / 'host' / 'sys' / 'bus' / 'pci')
    assert s.proc('cmdline') == str(tmp_path / 'host' / 'proc' / 'cmdline')
    assert s.dev('vfio', 'vfio') == str(tmp_path / 'host' / 'dev' / 'vfio' / 'vfio')
    assert s.host('lib', 'modules') == str(tmp_path / 'host' / 'lib' / 'modules')
    assert Sysfs('/sys').proc('cmdline') == '/proc/cmdline'


@pytest.mark.parametrize('parts', [('..', 'etc'), ('bus', '..', '..', 'x'), ('a/../../b',)])
def test_paths_cannot_escape(parts: tuple) -> None:
    with pytest.raises(PathEscapeError):
        Sysfs('/tmp/x/sys').sys(*parts)


def test_absolute_parts_stay_under_the_root() -> None:
    assert Sysfs('/tmp/x/sys').sys('/../bus') == '/tmp/x/sys/bus'


def test_reads(ws: Sysfs) -> None:
    dev = ws.sys('bus', 'pci', 'devices', '0000:01:00.0')
    assert ws.read(os.path.join(dev, 'vendor')) == '0x10de'
    assert ws.read_int(os.path.join(dev, 'class'), 16) == 0x030000
    assert ws.read(os.path.join(dev, 'nothing'), default=None) is None
    assert ws.read_int(os.path.join(dev, 'numa_node'), 10) == -1
    assert ws.link_name(os.path.join(dev, 'driver')) == 'nvidia'
    assert ws.link_name(os.path.join(dev, 'nothing')) is None
    assert ws.listdir(os.path.join(dev, 'nothing')) == []
    assert ws.cpu_vendor() == 'GenuineIntel' and 'vmx' in ws.cpu_flags()
    assert ws.cmdline().endswith('intel_iommu=on')


def test_missing_without_default_names_the_path(ws: Sysfs) -> None:
    path = ws.sys('bus', 'pci', 'devices', '0000:01:00.0', 'nothing')
    with pytest.raises(SysfsError) as info:
        ws.read(path)
    assert path in str(info.value) and info.value.path == path


def test_unreadable_attribute(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip('root reads files whatever their mode')
    path = tmp_path / 'attr'
    path.write_text('x')
    path.chmod(0)
    with pytest.raises(SysfsError, match=str(path)):
        Sysfs(str(tmp_path / 'sys')).read(str(path))


def test_directory_read_is_an_error_naming_it(ws: Sysfs) -> None:
    path = ws.sys('bus', 'pci', 'devices', '0000:01:00.0')
    with pytest.raises(SysfsError) as info:
        ws.read(path)
    assert path in str(info.value)


def test_bounded_read_and_write(ws: Sysfs, tmp_path: Path) -> None:
    dev = ws.sys('bus', 'pci', 'devices', '0000:01:00.0')
    values, stuck = ws.read_bounded([os.path.join(dev, 'vendor'), os.path.join(dev, 'missing')], timeout=5)
    assert stuck == [] and values[os.path.join(dev, 'vendor')] == '0x10de'
    assert values[os.path.join(dev, 'missing')] is None
    target = tmp_path / 'attr'
    target.write_text('')
    ws.write(str(target), 'vfio-pci')
    assert target.read_text() == 'vfio-pci'
    with pytest.raises(SysfsError) as info:
        ws.write(str(tmp_path / 'no' / 'such'), 'x')
    assert info.value.errno is not None


def test_bounded_read_of_a_stuck_attribute(tmp_path: Path) -> None:
    s = Sysfs(simkernel.materialize('stuck', str(tmp_path)))
    dev = s.sys('bus', 'pci', 'devices', '0000:01:00.0')
    start = time.monotonic()
    values, stuck = s.read_bounded([os.path.join(dev, 'driver_override'), os.path.join(dev, 'vendor')], timeout=0.3)
    assert stuck == [os.path.join(dev, 'driver_override')]
    assert values[os.path.join(dev, 'vendor')] == '0x1002'
    assert time.monotonic() - start < 5


def test_bounded_write_of_a_stuck_attribute(tmp_path: Path) -> None:
    s = Sysfs(simkernel.materialize('stuck', str(tmp_path)))
    path = s.sys('bus', 'pci', 'devices', '0000:01:00.0', 'driver_override')
    with pytest.raises(SysfsTimeout) as info:
        s.write(path, 'vfio-pci', timeout=0.3)
    assert path in str(info.value)


def test_fd_targets(tmp_path: Path) -> None:
    s = Sysfs(simkernel.materialize('in_use', str(tmp_path)))
    targets = s.fd_targets()
    assert (1342, '/dev/dri/card1') in targets and (3107, '/dev/vfio/20') in targets
    assert s.process_name(1342) == 'Xorg' and s.process_name(99999) == '?'


def test_large_file_is_read_whole(tmp_path: Path) -> None:
    big = tmp_path / 'proc' / 'cpuinfo'
    big.parent.mkdir()
    text = ''.join('processor\t: %d\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vmx sse%s\n\n' % (i, ' x' * 200)
                   for i in range(256))
    big.write_text(text + 'last line\n')
    s = Sysfs(str(tmp_path / 'sys'))
    assert len(text) > 65536
    assert s.read(str(big)).endswith('last line')


def test_read_bytes_bounded_reads_binary_reports_errno_and_missing(tmp_path: Path) -> None:
    blob = tmp_path / 'config'
    blob.write_bytes(bytes([0xde, 0x10, 0x04, 0x22, 0xff, 0x00]))
    values, errors, stuck = Sysfs(str(tmp_path / 'sys')).read_bytes_bounded([str(blob), str(tmp_path / 'none')], 4)
    assert values[str(blob)] == b'\xde\x10\x04\x22'   # the first 4 bytes, not text
    assert values[str(tmp_path / 'none')] is None and errors[str(tmp_path / 'none')] == errno.ENOENT
    assert stuck == []
