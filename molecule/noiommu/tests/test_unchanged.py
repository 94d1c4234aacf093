"""A host without an IOMMU after site.yml refused to run: nothing changed."""
from __future__ import annotations

STATE = '/var/lib/fleetgpu-testbed'


def test_no_iommu_on_this_host(host):
    assert host.check_output('ls /sys/kernel/iommu_groups | wc -l') == '0'
    assert host.check_output('ls /sys/class/iommu | wc -l') == '0'


def test_nothing_changed(host):
    before = host.file(STATE + '/before.txt').content_string.strip()
    now = host.check_output('%s/snapshot.sh' % STATE).strip()
    assert now == before


def test_no_reboot(host):
    before = int(host.file(STATE + '/boots.before').content_string.strip())
    assert int(host.check_output('wc -l < %s/boots' % STATE)) == before


def test_no_vfio_driver_loaded(host):
    assert not host.file('/sys/bus/pci/drivers/vfio-pci').exists
