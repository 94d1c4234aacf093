"""site.yml on a real kernel without any IOMMU (the ``noiommu`` test host: q35, no vIOMMU).

The main job is run as users run it (ansible-playbook, the installed collection, the test
inventory's group_vars) and must fail early, on the host, with a message about the IOMMU, and
change nothing: no file, no kernel command line, no driver moved, no reboot, vfio-pci not loaded.
The host is booted by the session fixture ``testbed_hosts`` together with the other runtime hosts.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from conftest import REPO, playbook_env, tool

TESTBED_HOSTS = ('noiommu',)
BOOTS = 'echo "boots $(wc -l < /var/lib/fleetgpu-testbed/boots)"'

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='QEMU test hosts need root'),
]


@pytest.fixture(scope='module')
def refused(testbed_hosts: dict, installed_collection: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[object, List[str], List[str], str]]:
    """site.yml once against the host: (host, state before, state after, output); the host is
    stopped afterwards."""
    host = testbed_hosts['noiommu']
    work = tmp_path_factory.mktemp('noiommu')
    inventory = work / 'inventory'
    host.write_inventory(inventory / 'hosts.yml', group='gpu_hosts')
    shutil.copytree(REPO / 'inventories' / 'testbed' / 'group_vars', inventory / 'group_vars')
    before = host.state(BOOTS)
    # Default verbosity whatever the caller's environment says: the failure is read from the
    # one-line form of the task result.
    env = playbook_env(installed_collection, {'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_VERBOSITY': '0',
                                              'ANSIBLE_HOST_KEY_CHECKING': 'False'})
    proc = subprocess.run([tool('ansible-playbook'), '-i', str(inventory), 'fleetgpu.passthrough.site'],
                          capture_output=True, text=True, env=env, cwd=str(work), timeout=900, check=False)
    out = proc.stdout + '\n' + proc.stderr
    assert proc.returncode != 0, 'site.yml passed on a host without an IOMMU:\n%s' % out[-4000:]
    after = host.state(BOOTS + '\necho "iommu_groups $(ls /sys/kernel/iommu_groups | wc -l)"\n'
                       'echo "vfio_pci $(test -e /sys/bus/pci/drivers/vfio-pci && echo loaded || echo absent)"')
    yield host, before, after, out
    host.stop()


def test_the_host_has_no_iommu(refused) -> None:
    _host, _before, after, _out = refused
    assert 'iommu_groups 0' in after, after


def test_site_stops_on_the_host_with_a_message_about_the_iommu(refused) -> None:
    _host, _before, _after, out = refused
    fatal = re.search(r'fatal: \[rt-noiommu\]: FAILED! => (\{.*)', out)
    assert fatal, 'no failed task on the host:\n%s' % out[-4000:]
    assert re.search(r'"msg": "[^"]*IOMMU', fatal.group(1)), fatal.group(1)[:3000]
    assert re.search(r'rt-noiommu\s*:\s*ok=\d+\s+changed=0\s+unreachable=0\s+failed=1', out), out[-2000:]


def test_site_changed_nothing_on_the_host(refused) -> None:
    _host, before, after, _out = refused
    # Same files, command line, drivers and boot count; vfio-pci was never loaded.
    assert [line for line in after if not line.startswith(('iommu_groups', 'vfio_pci'))] == before
    assert 'vfio_pci absent' in after, after
