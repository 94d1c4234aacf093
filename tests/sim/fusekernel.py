"""A simulated kernel that behaves: PCI driver binding over a FUSE mount.

``tests/sim/simkernel.py`` materializes a static tree shaped like the kernel's
(``sys``, ``proc``, ``dev``, and ``.sim/devices.json``).  This file serves such a
tree through FUSE (a pass-through over the backing directory) and gives the
PCI control files the kernel's behaviour, processed synchronously inside the
``write()`` call as the kernel does:

* ``sys/bus/pci/drivers/NAME/unbind`` (ADDR): removes the ``driver`` link of the
  device and the driver's link to it; ENODEV when the device is not bound to NAME.
* ``sys/bus/pci/drivers/NAME/bind`` (ADDR): EBUSY when the device already has a
  driver, ENODEV when the driver does not match it (``driver_override`` names
  another driver, or neither the default driver nor a ``new_id`` matches).
* ``sys/bus/pci/drivers_probe`` (ADDR): binds an unbound device to its
  ``driver_override`` if set (and that driver is loaded), else to a driver whose
  ``new_id`` matches, else to the device's ``default_driver``.
* ``.../ADDR/driver_override``: stores the value up to the first newline; an
  empty value (``"\\n"``) clears it to ``(null)``.  (A write of zero bytes never
  reaches the file system, as it never reaches a sysfs attribute.)
* ``new_id`` / ``remove_id``: recorded; ``new_id`` also binds every unbound
  device that matches, as the kernel does (why callers must not use it).
* The first bind of a group's device to a vfio driver creates ``dev/vfio/N`` and
  ``dev/vfio/vfio``; when the group's last vfio device is unbound, ``dev/vfio/N``
  goes away.
* ``.../ADDR/sriov_numvfs`` (the kernel's sriov_numvfs_store): EINVAL for a non-number, ERANGE
  above ``sriov_totalvfs``, ENOENT when the PF has no driver, EBUSY for a new non-zero count while
  VFs are enabled; a count creates the VF functions (``virtfnN`` / ``physfn`` links, one IOMMU
  group each, bound to the PF's ``vf_driver`` when ``sriov_drivers_autoprobe`` is 1), 0 removes
  them.
* ``.../mdev_supported_types/TYPE/create`` (UUID): EINVAL for a malformed UUID, EEXIST for a UUID
  in use, ENOSPC when ``available_instances`` is 0 (the sample mbochs driver's answer); creates
  ``/sys/bus/mdev/devices/UUID`` (with ``mdev_type``, ``remove``, its own IOMMU group and
  ``/dev/vfio/N``) and decrements ``available_instances``; ``.../UUID/remove`` (1) undoes it.

Every control write is appended to ``.sim/ops.log`` (one JSON object a line).

Fault injection: ``.sim/faults.json`` in the backing tree (a list, or
``{"faults": [...]}``), re-read on every operation.  Each fault matches on
``op`` (``unbind``, ``bind``, ``drivers_probe``, ``driver_override``,
``new_id``, ``remove_id``, or ``read`` with ``attr``), optionally ``device``
and ``driver``; ``skip`` lets that many matching operations pass first and
``times`` limits how often it fires.  Effects: ``error`` (an errno name such
as ``EBUSY``), ``hang`` (the call does not return until unmount),
``wrong_driver`` (a probe binds that driver instead), ``probe_fails`` (the
driver's probe fails: ``drivers_probe`` succeeds and the device stays without a
driver, as after a reset it did not come back from), ``vanish`` (the device's
directories and links disappear, the write fails with ENODEV).

Use ``with mounted(backing, mountpoint): ...`` from tests, or run
``python tests/sim/fusekernel.py BACKING MOUNTPOINT`` (foreground).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

_ADDR = r'[0-9a-f]{4,5}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]'
_DRIVER_CTL_RE = re.compile(r'^/sys/bus/pci/drivers/([^/]+)/(bind|unbind|new_id|remove_id)$')
_PROBE_RE = re.compile(r'^/sys/bus/pci/drivers_probe$')
_OVERRIDE_RE = re.compile(r'^/sys/(?:devices/.*|bus/pci/devices)/(%s)/driver_override$' % _ADDR)
_ATTR_RE = re.compile(r'^/sys/(?:devices/.*|bus/pci/devices)/(%s)/([^/]+)$' % _ADDR)
_NUMVFS_RE = re.compile(r'^/sys/(?:devices/.*|bus/pci/devices)/(%s)/sriov_numvfs$' % _ADDR)
_UUID = r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
_CREATE_RE = re.compile(r'^/sys/devices/(.+)/mdev_supported_types/([^/]+)/create$')
_REMOVE_RE = re.compile(r'^/sys/devices/(.+)/(%s)/remove$' % _UUID)

NULL = '(null)'


def _is_vfio(driver: str | None) -> bool:
    return bool(driver) and 'vfio' in str(driver)


class KernelError(OSError):
    """An errno returned to the writer, as the kernel would."""

    def __init__(self, err: int) -> None:
        super().__init__(err, os.strerror(err))


class SimKernel:
    """The kernel's PCI binding semantics over a backing directory (no FUSE here).

    Paths given to :meth:`control_write` are relative to the mount root and
    start with ``/`` (``/sys/bus/pci/drivers/vfio-pci/bind``).
    """

    def __init__(self, backing: str) -> None:
        self.root = os.path.abspath(backing)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.dynids: dict[str, set[tuple[str, str]]] = {}
        self._fired: dict[str, int] = {}
        self._seen: dict[str, int] = {}

    # ------------------------------------------------------------ helpers
    def b(self, rel: str) -> str:
        """Backing path of a mount-relative path."""
        return os.path.join(self.root, rel.lstrip('/'))

    def _default_drivers(self) -> dict[str, str | None]:
        try:
            with open(self.b('.sim/devices.json'), encoding='utf-8') as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        if isinstance(data, dict) and 'devices' in data:
            data = data['devices']
        out: dict[str, str | None] = {}
        if isinstance(data, dict):
            for addr, info in data.items():
                out[addr] = info.get('default_driver') if isinstance(info, dict) else info
        elif isinstance(data, list):
            for info in data:
                if isinstance(info, dict) and 'address' in info:
                    out[info['address']] = info.get('default_driver')
        return out

    def _faults(self) -> list[dict[str, Any]]:
        try:
            with open(self.b('.sim/faults.json'), encoding='utf-8') as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return []
        if isinstance(data, dict):
            data = data.get('faults', [])
        return [f for f in data if isinstance(f, dict)] if isinstance(data, list) else []

    def fault(self, op: str, device: str | None, driver: str | None = None, attr: str | None = None) -> dict[str, Any] | None:
        """The first fault that fires for this operation (counting skips and times)."""
        for index, spec in enumerate(self._faults()):
            if spec.get('op') not in (op, '*'):
                continue
            if spec.get('device') and spec['device'] != device:
                continue
            if spec.get('driver') and spec['driver'] != driver:
                continue
            if spec.get('attr') and spec['attr'] != attr:
                continue
            key = '%d:%s' % (index, json.dumps(spec, sort_keys=True))
            self._seen[key] = self._seen.get(key, 0) + 1
            if self._seen[key] <= int(spec.get('skip', 0)):
                continue
            if 'times' in spec and self._fired.get(key, 0) >= int(spec['times']):
                continue
            self._fired[key] = self._fired.get(key, 0) + 1
            return spec
        return None

    def hang(self) -> None:
        """Block like a write stuck on a device lock, until the file system goes away."""
        while not self.stop.wait(0.2):
            pass
        raise KernelError(errno.EIO)

    def device_dir(self, addr: str) -> str | None:
        link = self.b('/sys/bus/pci/devices/%s' % addr)
        if not os.path.lexists(link):
            return None
        real = os.path.realpath(link)
        return real if os.path.isdir(real) else None

    def driver_dir(self, name: str) -> str:
        return self.b('/sys/bus/pci/drivers/%s' % name)

    def current_driver(self, dev: str) -> str | None:
        target = os.readlink(os.path.join(dev, 'driver')) if os.path.islink(os.path.join(dev, 'driver')) else None
        return os.path.basename(target.rstrip('/')) if target else None

    def override(self, dev: str) -> str | None:
        try:
            with open(os.path.join(dev, 'driver_override'), encoding='utf-8') as handle:
                value = handle.read().strip()
        except OSError:
            return None
        return None if value in ('', NULL) else value

    def ids(self, dev: str) -> tuple[str, str]:
        def rd(name: str) -> str:
            try:
                with open(os.path.join(dev, name), encoding='utf-8') as handle:
                    return handle.read().strip().lower().replace('0x', '')
            except OSError:
                return ''
        return rd('vendor'), rd('device')

    def group(self, dev: str) -> str | None:
        link = os.path.join(dev, 'iommu_group')
        return os.path.basename(os.readlink(link).rstrip('/')) if os.path.islink(link) else None

    def log(self, entry: dict[str, Any]) -> None:
        os.makedirs(self.b('.sim'), exist_ok=True)
        with open(self.b('.sim/ops.log'), 'a', encoding='utf-8') as handle:
            handle.write(json.dumps(entry, sort_keys=True) + '\n')

    # ------------------------------------------------------------ binding
    def matches(self, dev: str, addr: str, driver: str) -> bool:
        """pci_match_device(): override first, then dynamic ids, then the id table."""
        if not os.path.isdir(self.driver_dir(driver)):
            return False
        override = self.override(dev)
        if override is not None:
            return override == driver
        if self.ids(dev) in self.dynids.get(driver, set()):
            return True
        return self._default_drivers().get(addr) == driver

    def attach(self, dev: str, addr: str, driver: str) -> None:
        drv = self.driver_dir(driver)
        os.symlink(os.path.relpath(drv, dev), os.path.join(dev, 'driver'))
        link = os.path.join(drv, addr)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.relpath(dev, drv), link)
        if _is_vfio(driver):
            group = self.group(dev)
            if group is not None:
                os.makedirs(self.b('/dev/vfio'), exist_ok=True)
                for name in ('vfio', group):
                    path = self.b('/dev/vfio/%s' % name)
                    if not os.path.exists(path):
                        with open(path, 'w', encoding='utf-8'):
                            pass
                        os.chmod(path, 0o600)

    def detach(self, dev: str, addr: str, driver: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(dev, 'driver'))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.driver_dir(driver), addr))
        if _is_vfio(driver):
            group = self.group(dev)
            if group is not None and not self._group_has_vfio(group):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.b('/dev/vfio/%s' % group))

    def _group_has_vfio(self, group: str) -> bool:
        members = self.b('/sys/kernel/iommu_groups/%s/devices' % group)
        for name in os.listdir(members) if os.path.isdir(members) else []:
            real = os.path.realpath(os.path.join(members, name))
            if _is_vfio(self.current_driver(real)):
                return True
        return False

    def vanish(self, addr: str) -> None:
        """The device leaves the bus: its directory and every link to it disappear."""
        dev = self.device_dir(addr)
        group = self.group(dev) if dev else None
        driver = self.current_driver(dev) if dev else None
        for link in (self.b('/sys/bus/pci/devices/%s' % addr),
                     self.b('/sys/bus/pci/drivers/%s/%s' % (driver, addr)) if driver else '',
                     self.b('/sys/kernel/iommu_groups/%s/devices/%s' % (group, addr)) if group else ''):
            if link and os.path.lexists(link):
                os.unlink(link)
        if dev:
            shutil.rmtree(dev, ignore_errors=True)

    def probe(self, dev: str, addr: str, wrong: str | None = None) -> str | None:
        """device_attach(): the driver it bound to, or None."""
        if wrong:
            if os.path.isdir(self.driver_dir(wrong)):
                self.attach(dev, addr, wrong)
                return wrong
            return None
        override = self.override(dev)
        candidates: list[str] = []
        if override is not None:
            candidates = [override]
        else:
            vid = self.ids(dev)
            candidates = sorted(d for d, ids in self.dynids.items() if vid in ids)
            default = self._default_drivers().get(addr)
            if default:
                candidates.append(default)
        for driver in candidates:
            if self.matches(dev, addr, driver):
                self.attach(dev, addr, driver)
                return driver
        return None

    # ------------------------------------------------------------ entry points
    def is_control(self, path: str) -> bool:
        return bool(_DRIVER_CTL_RE.match(path) or _PROBE_RE.match(path) or _OVERRIDE_RE.match(path)
                    or _NUMVFS_RE.match(path) or _CREATE_RE.match(path) or _REMOVE_RE.match(path))

    def control_write(self, path: str, data: bytes) -> int:
        text = data.decode('utf-8', 'replace')
        value = text.split('\n', 1)[0].strip()
        m_drv = _DRIVER_CTL_RE.match(path)
        m_ovr = _OVERRIDE_RE.match(path)
        if _NUMVFS_RE.match(path) or _CREATE_RE.match(path) or _REMOVE_RE.match(path):
            return self.partition_write(path, text)
        if m_drv:
            driver, op = m_drv.group(1), m_drv.group(2)
            device = value if op in ('bind', 'unbind') else None
        elif m_ovr:
            driver, op, device = None, 'driver_override', m_ovr.group(1)
        else:
            driver, op, device = None, 'drivers_probe', value
        entry: dict[str, Any] = {'op': op, 'device': device, 'driver': driver, 'value': value}
        spec = self.fault(op, device, driver)
        if spec and spec.get('hang'):
            self.log(dict(entry, result='hang'))
            self.hang()
        with self.lock:
            try:
                result = self._apply(op, device, driver, value, spec)
            except KernelError as exc:
                self.log(dict(entry, result=errno.errorcode.get(exc.errno or 0, str(exc.errno))))
                raise
            self.log(dict(entry, result=result))
        return len(data)

    def _apply(self, op: str, device: str | None, driver: str | None, value: str, spec: dict[str, Any] | None) -> str:
        if spec and spec.get('vanish') and device:
            self.vanish(device)
            raise KernelError(errno.ENODEV)
        if spec and spec.get('error'):
            raise KernelError(getattr(errno, str(spec['error']), errno.EIO))
        if op in ('new_id', 'remove_id'):
            return self._dynid(op, str(driver), value)
        dev = self.device_dir(device) if device else None
        if dev is None:
            raise KernelError(errno.EINVAL if op == 'drivers_probe' else errno.ENODEV)
        current = self.current_driver(dev)
        if op == 'driver_override':
            if len(value) >= 4096:
                raise KernelError(errno.EINVAL)
            with open(os.path.join(dev, 'driver_override'), 'w', encoding='utf-8') as handle:
                handle.write((value or NULL) + '\n')
            return 'ok'
        if op == 'unbind':
            if current != driver:
                raise KernelError(errno.ENODEV)
            self.detach(dev, str(device), str(driver))
            return 'ok'
        if op == 'bind':
            if current is not None:
                raise KernelError(errno.EBUSY)
            if not self.matches(dev, str(device), str(driver)):
                raise KernelError(errno.ENODEV)
            self.attach(dev, str(device), str(driver))
            return 'ok'
        # drivers_probe: a bound device is left alone, an unmatched one stays unbound.
        if current is not None:
            return 'bound:%s' % current
        if spec and spec.get('probe_fails'):
            return 'unbound'  # the driver's probe failed: the write succeeds, nothing binds
        bound = self.probe(dev, str(device), spec.get('wrong_driver') if spec else None)
        return 'bound:%s' % bound if bound else 'unbound'

    def _dynid(self, op: str, driver: str, value: str) -> str:
        fields = value.split()
        if len(fields) < 2 or not os.path.isdir(self.driver_dir(driver)):
            raise KernelError(errno.EINVAL)
        pair = (fields[0].lower().replace('0x', ''), fields[1].lower().replace('0x', ''))
        ids = self.dynids.setdefault(driver, set())
        if op == 'remove_id':
            if pair not in ids:
                raise KernelError(errno.ENODEV)
            ids.discard(pair)
            return 'ok'
        if pair in ids:
            raise KernelError(errno.EEXIST)
        ids.add(pair)
        bound = []
        for addr in sorted(os.listdir(self.b('/sys/bus/pci/devices'))):
            dev = self.device_dir(addr)
            if dev and self.current_driver(dev) is None and self.ids(dev) == pair and self.matches(dev, addr, driver):
                self.attach(dev, addr, driver)
                bound.append(addr)
        return 'captured:%s' % ','.join(bound)

    # ------------------------------------------------------------ SR-IOV and mediated devices
    def partition_write(self, path: str, text: str) -> int:
        """``sriov_numvfs``, an mdev type's ``create`` and an mdev's ``remove``, as the kernel handles them."""
        m_vfs, m_create, m_remove = _NUMVFS_RE.match(path), _CREATE_RE.match(path), _REMOVE_RE.match(path)
        value = text.split('\n', 1)[0].strip()
        if m_vfs:
            op, device = 'sriov_numvfs', m_vfs.group(1)
        elif m_create:
            op, device = 'mdev_create', m_create.group(1).rsplit('/', 1)[-1]
        else:
            assert m_remove is not None
            op, device = 'mdev_remove', m_remove.group(2)
        entry: dict[str, Any] = {'op': op, 'device': device, 'driver': None, 'value': value}
        spec = self.fault(op, device)
        if spec and spec.get('hang'):
            self.log(dict(entry, result='hang'))
            self.hang()
        with self.lock:
            try:
                if spec and spec.get('error'):
                    raise KernelError(getattr(errno, str(spec['error']), errno.EIO))
                if m_vfs:
                    result = self.set_numvfs(m_vfs.group(1), value)
                elif m_create:
                    result = self.mdev_create(m_create.group(1), m_create.group(2), value)
                else:
                    assert m_remove is not None
                    result = self.mdev_remove(m_remove.group(1), m_remove.group(2), value)
            except KernelError as exc:
                self.log(dict(entry, result=errno.errorcode.get(exc.errno or 0, str(exc.errno))))
                raise
            self.log(dict(entry, result=result))
        return len(text.encode('utf-8'))

    def _read(self, path: str, default: str = '') -> str:
        try:
            with open(path, encoding='utf-8') as handle:
                return handle.read().strip()
        except OSError:
            return default

    def _write(self, path: str, text: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write(text)

    def _link(self, path: str, target: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(os.path.relpath(target, os.path.dirname(path)), path)

    def _new_group(self, member: str, name: str) -> int:
        """A new IOMMU group holding one device (a VF, an mdev): the next free number."""
        groups = self.b('/sys/kernel/iommu_groups')
        os.makedirs(groups, exist_ok=True)
        taken = [int(g) for g in os.listdir(groups) if g.isdigit()]
        number = max(taken) + 1 if taken else 0
        gdir = os.path.join(groups, str(number))
        self._link(os.path.join(gdir, 'devices', name), member)
        self._write(os.path.join(gdir, 'type'), 'DMA\n')
        self._write(os.path.join(gdir, 'reserved_regions'), '0x00000000fee00000 0x00000000feefffff msi\n')
        self._link(os.path.join(member, 'iommu_group'), gdir)
        return number

    def _drop_group(self, member: str) -> None:
        group = self.group(member)
        if group is None:
            return
        shutil.rmtree(self.b('/sys/kernel/iommu_groups/%s' % group), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.b('/dev/vfio/%s' % group))

    def _records(self) -> dict[str, Any]:
        try:
            with open(self.b('.sim/devices.json'), encoding='utf-8') as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_records(self, data: dict[str, Any]) -> None:
        self._write(self.b('.sim/devices.json'), json.dumps(data, indent=1, sort_keys=True) + '\n')

    def set_numvfs(self, addr: str, value: str) -> str:
        """sriov_numvfs_store(): EINVAL for a non-number, ERANGE above sriov_totalvfs, ENOENT without a PF driver,
        EBUSY for a new non-zero count while VFs are enabled; 0 removes the VFs (unbinding their drivers)."""
        dev = self.device_dir(addr)
        if dev is None:
            raise KernelError(errno.ENODEV)
        try:
            want = int(value, 0)
        except ValueError:
            raise KernelError(errno.EINVAL) from None
        if not 0 <= want <= 0xffff:
            raise KernelError(errno.EINVAL)
        total = int(self._read(os.path.join(dev, 'sriov_totalvfs'), '0') or 0)
        if want > total:
            raise KernelError(errno.ERANGE)
        current = int(self._read(os.path.join(dev, 'sriov_numvfs'), '0') or 0)
        if want == current:
            return 'ok'
        if self.current_driver(dev) is None:
            raise KernelError(errno.ENOENT)
        if want == 0:
            self._remove_vfs(dev)
            self._write(os.path.join(dev, 'sriov_numvfs'), '0\n')
            return 'disabled'
        if current:
            raise KernelError(errno.EBUSY)
        bound = self._add_vfs(dev, addr, want)
        self._write(os.path.join(dev, 'sriov_numvfs'), '%d\n' % want)
        return 'enabled:%d%s' % (want, (' bound:' + ','.join(bound)) if bound else '')

    def _add_vfs(self, pf: str, addr: str, count: int) -> list[str]:
        offset = int(self._read(os.path.join(pf, 'sriov_offset'), '1') or 1)
        stride = int(self._read(os.path.join(pf, 'sriov_stride'), '1') or 1)
        vf_device = self._read(os.path.join(pf, 'sriov_vf_device'), '0000')
        records = self._records()
        info = records.get(addr) or {}
        vf_driver = (info.get('sriov') or {}).get('vf_driver')
        dom, bus, rest = addr.split(':')
        slot, func = rest.split('.')
        rid0 = (int(bus, 16) << 8) | (int(slot, 16) << 3) | int(func, 16)
        attrs = {name: self._read(os.path.join(pf, name)) for name in (
            'vendor', 'subsystem_vendor', 'subsystem_device', 'class', 'revision', 'numa_node', 'local_cpulist')}
        attrs['device'] = '0x%s' % vf_device
        autoprobe = self._read(os.path.join(pf, 'sriov_drivers_autoprobe'), '1') == '1'
        for index in range(count):
            rid = rid0 + offset + index * stride
            vaddr = '%s:%02x:%02x.%x' % (dom, (rid >> 8) & 0xff, (rid >> 3) & 0x1f, rid & 7)
            vdir = os.path.join(os.path.dirname(pf), vaddr)
            os.makedirs(vdir, exist_ok=True)
            for name, text in attrs.items():
                self._write(os.path.join(vdir, name), text + '\n')
            for name, text in (('driver_override', NULL), ('reset_method', 'flr'), ('enable', '0'), ('irq', '0'),
                               ('uevent', 'PCI_SLOT_NAME=%s' % vaddr)):
                self._write(os.path.join(vdir, name), text + '\n')
            for name in ('remove', 'rescan', 'reset'):
                self._write(os.path.join(vdir, name), '')
            config = bytearray(256)
            config[0:2] = int(attrs['vendor'] or '0', 16).to_bytes(2, 'little')
            config[2:4] = int(vf_device, 16).to_bytes(2, 'little')
            config[9:12] = int(attrs['class'] or '0', 16).to_bytes(3, 'little')
            with open(os.path.join(vdir, 'config'), 'wb') as handle:
                handle.write(bytes(config))
            self._write(os.path.join(vdir, 'resource'), '0x%016x 0x%016x 0x%016x\n' % (0, 0, 0) * 13)
            self._link(os.path.join(vdir, 'subsystem'), self.b('/sys/bus/pci'))
            self._link(os.path.join(vdir, 'physfn'), pf)
            self._link(os.path.join(pf, 'virtfn%d' % index), vdir)
            self._link(self.b('/sys/bus/pci/devices/%s' % vaddr), vdir)
            self._new_group(vdir, vaddr)
            records[vaddr] = {'default_driver': vf_driver, 'driver': None, 'physfn': addr,
                              'path': os.path.relpath(vdir, self.b('/sys')), 'vendor': attrs['vendor'][2:],
                              'device': vf_device}
        self._save_records(records)
        bound = []
        for index in range(count):
            vdir = os.path.realpath(os.path.join(pf, 'virtfn%d' % index))
            vaddr = os.path.basename(vdir)
            if autoprobe and vf_driver and os.path.isdir(self.driver_dir(vf_driver)):
                self.attach(vdir, vaddr, vf_driver)
                bound.append(vaddr)
        return bound

    def _remove_vfs(self, pf: str) -> None:
        records = self._records()
        for name in sorted(os.listdir(pf)):
            if not name.startswith('virtfn'):
                continue
            link = os.path.join(pf, name)
            vdir = os.path.realpath(link)
            vaddr = os.path.basename(vdir)
            driver = self.current_driver(vdir) if os.path.isdir(vdir) else None
            if driver:
                self.detach(vdir, vaddr, driver)
            self._drop_group(vdir)
            for path in (self.b('/sys/bus/pci/devices/%s' % vaddr), link):
                if os.path.lexists(path):
                    os.unlink(path)
            shutil.rmtree(vdir, ignore_errors=True)
            records.pop(vaddr, None)
        self._save_records(records)

    def mdev_create(self, parent_rel: str, type_id: str, value: str) -> str:
        """create_store() / mdev_device_create(): EINVAL for a malformed UUID, EEXIST for one in use, and the
        parent driver's ENOSPC (what the sample mbochs returns) when the type has no instance left."""
        tdir = self.b('/sys/devices/%s/mdev_supported_types/%s' % (parent_rel, type_id))
        if not os.path.isdir(tdir):
            raise KernelError(errno.ENOENT)
        uid = value.lower()
        if not re.match(r'^%s\Z' % _UUID, uid):
            raise KernelError(errno.EINVAL)
        if os.path.lexists(self.b('/sys/bus/mdev/devices/%s' % uid)):
            raise KernelError(errno.EEXIST)
        available = int(self._read(os.path.join(tdir, 'available_instances'), '0') or 0)
        if available <= 0:
            raise KernelError(errno.ENOSPC)
        mdir = self.b('/sys/devices/%s/%s' % (parent_rel, uid))
        os.makedirs(mdir)
        self._link(os.path.join(mdir, 'mdev_type'), tdir)
        self._link(os.path.join(mdir, 'subsystem'), self.b('/sys/bus/mdev'))
        os.makedirs(self.b('/sys/bus/mdev/drivers/vfio_mdev'), exist_ok=True)
        self._link(os.path.join(mdir, 'driver'), self.b('/sys/bus/mdev/drivers/vfio_mdev'))
        self._write(os.path.join(mdir, 'remove'), '')
        self._write(os.path.join(mdir, 'uevent'), 'MDEV_TYPE=%s\nDRIVER=vfio_mdev\n' % type_id)
        self._link(self.b('/sys/bus/mdev/devices/%s' % uid), mdir)
        self._link(os.path.join(tdir, 'devices', uid), mdir)
        group = self._new_group(mdir, uid)
        self._write(self.b('/dev/vfio/%d' % group), '')
        self._write(os.path.join(tdir, 'available_instances'), '%d\n' % (available - 1))
        return 'created:%s' % uid

    def mdev_remove(self, parent_rel: str, uid: str, value: str) -> str:
        """remove_store(): a write of 1 removes the device and gives its instance back; anything else does nothing."""
        try:
            flag = int(value, 0)
        except ValueError:
            raise KernelError(errno.EINVAL) from None
        if flag != 1:
            return 'ignored'
        mdir = self.b('/sys/devices/%s/%s' % (parent_rel, uid))
        tdir = os.path.realpath(os.path.join(mdir, 'mdev_type'))
        self._drop_group(mdir)
        for path in (self.b('/sys/bus/mdev/devices/%s' % uid), os.path.join(tdir, 'devices', uid)):
            if os.path.lexists(path):
                os.unlink(path)
        shutil.rmtree(mdir, ignore_errors=True)
        available = int(self._read(os.path.join(tdir, 'available_instances'), '0') or 0)
        self._write(os.path.join(tdir, 'available_instances'), '%d\n' % (available + 1))
        return 'removed:%s' % uid

    def read_fault(self, path: str) -> None:
        match = _ATTR_RE.match(path)
        if not match:
            return
        spec = self.fault('read', match.group(1), attr=match.group(2))
        if spec and spec.get('hang'):
            self.hang()
        if spec and spec.get('error'):
            raise KernelError(getattr(errno, str(spec['error']), errno.EIO))


def _operations(kernel: SimKernel) -> Any:
    from fuse import FuseOSError, Operations  # pylint: disable=import-outside-toplevel

    class KernelFS(Operations):
        use_ns = True

        def __call__(self, op: str, path: str, *args: Any) -> Any:
            try:
                return getattr(self, op)(path, *args)
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from None

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            st = os.lstat(kernel.b(path))
            out = {key: getattr(st, key) for key in (
                'st_mode', 'st_nlink', 'st_uid', 'st_gid', 'st_size', 'st_atime_ns', 'st_mtime_ns', 'st_ctime_ns')}
            for key in ('st_atime', 'st_mtime', 'st_ctime'):
                out[key] = out.pop(key + '_ns')
            return out

        def access(self, path: str, amode: int) -> int:
            if not os.path.lexists(kernel.b(path)):
                raise OSError(errno.ENOENT, path)
            return 0

        def readdir(self, path: str, fh: Any) -> list[str]:
            return ['.', '..'] + sorted(os.listdir(kernel.b(path)))

        def readlink(self, path: str) -> str:
            return os.readlink(kernel.b(path))

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(kernel.b(path))
            return {key: getattr(st, key) for key in (
                'f_bavail', 'f_bfree', 'f_blocks', 'f_bsize', 'f_favail', 'f_ffree', 'f_files', 'f_flag',
                'f_frsize', 'f_namemax')}

        def open(self, path: str, fi: Any) -> int:
            if not os.path.exists(kernel.b(path)):
                raise OSError(errno.ENOENT, path)
            fi.direct_io = 1
            return 0

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            fd = os.open(kernel.b(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            os.close(fd)
            if fi is not None:
                fi.direct_io = 1
            return 0

        def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
            kernel.read_fault(path)
            with open(kernel.b(path), 'rb') as handle:
                handle.seek(offset)
                return handle.read(size)

        def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
            if kernel.is_control(path):
                return kernel.control_write(path, data)
            with open(kernel.b(path), 'r+b') as handle:
                handle.seek(offset)
                handle.write(data)
            return len(data)

        def truncate(self, path: str, length: int, fh: Any = None) -> int:
            if not kernel.is_control(path):
                os.truncate(kernel.b(path), length)
            return 0

        def unlink(self, path: str) -> int:
            os.unlink(kernel.b(path))
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(kernel.b(path))
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(kernel.b(path), mode)
            return 0

        def symlink(self, target: str, source: str) -> int:
            os.symlink(source, kernel.b(target))
            return 0

        def rename(self, old: str, new: str) -> int:
            os.rename(kernel.b(old), kernel.b(new))
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(kernel.b(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.lchown(kernel.b(path), uid, gid)
            return 0

        def utimens(self, path: str, times: Any = None) -> int:
            if times:
                os.utime(kernel.b(path), ns=times, follow_symlinks=False)
            else:
                os.utime(kernel.b(path))
            return 0

        def flush(self, path: str, fh: Any) -> int:
            return 0

        def release(self, path: str, fh: Any) -> int:
            return 0

        def fsync(self, path: str, datasync: int, fh: Any) -> int:
            return 0

        def destroy(self, path: str) -> None:
            kernel.stop.set()

    return KernelFS()


def serve(backing: str, mountpoint: str) -> None:
    """Mount and serve in the foreground until unmounted or signalled."""
    import warnings  # pylint: disable=import-outside-toplevel

    from fuse import FUSE  # pylint: disable=import-outside-toplevel

    kernel = SimKernel(backing)
    warnings.simplefilter('ignore', DeprecationWarning)
    FUSE(_operations(kernel), mountpoint, raw_fi=True, foreground=True, nothreads=False,
         entry_timeout=0, attr_timeout=0, negative_timeout=0, fsname='fleetgpu-simkernel')
    kernel.stop.set()


def is_mounted(mountpoint: str) -> bool:
    target = os.path.realpath(mountpoint)
    try:
        with open('/proc/self/mountinfo', encoding='utf-8') as handle:
            return any(line.split()[4] == target for line in handle)
    except OSError:
        return os.path.ismount(mountpoint)


def unmount(mountpoint: str) -> None:
    """Detach the mount even when a writer is blocked inside it."""
    for cmd in (['fusermount', '-u', '-z', mountpoint], ['umount', '-l', mountpoint]):
        if not is_mounted(mountpoint):
            return
        if shutil.which(cmd[0]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


@contextlib.contextmanager
def mounted(backing: str | os.PathLike[str], mountpoint: str | os.PathLike[str], wait: float = 20.0) -> Iterator[str]:
    """Serve ``backing`` at ``mountpoint`` in a child process for the block's duration.

    Always unmounts and ends the child, also when the block raises.
    """
    backing, mountpoint = os.fspath(backing), os.fspath(mountpoint)
    if not os.path.isdir(os.path.join(backing, 'sys')):
        raise FileNotFoundError('%s holds no materialized kernel tree (no sys/)' % backing)
    os.makedirs(mountpoint, exist_ok=True)
    log_path = os.path.join(backing, '.sim', 'fuse.log')
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, 'ab') as log:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), backing, mountpoint],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + wait
        while not is_mounted(mountpoint):
            if proc.poll() is not None:
                raise RuntimeError('simulated kernel exited with %s before mounting %s (see %s)'
                                   % (proc.returncode, mountpoint, log_path))
            if time.monotonic() > deadline:
                raise RuntimeError('simulated kernel did not mount %s within %gs' % (mountpoint, wait))
            time.sleep(0.05)
        yield mountpoint
    finally:
        unmount(mountpoint)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(1)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        unmount(mountpoint)


@contextlib.contextmanager
def simulated(topology: Any, dest: str | os.PathLike[str]) -> Iterator[str]:
    """Materialize ``topology`` (see simkernel.py) under ``dest/backing``, serve it at
    ``dest/mnt`` and yield the ``sysfs_root`` to pass to modules (``dest/mnt/sys``)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import simkernel  # pylint: disable=import-outside-toplevel

    dest = os.fspath(dest)
    backing = os.path.join(dest, 'backing')
    simkernel.materialize(topology, backing)
    with mounted(backing, os.path.join(dest, 'mnt')) as mnt:
        yield os.path.join(mnt, 'sys')


def backing_of(sysfs_root: str) -> str:
    """The backing directory of a tree served by :func:`simulated`."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(sysfs_root))), 'backing')


def set_faults(backing: str, faults: list[dict[str, Any]]) -> None:
    os.makedirs(os.path.join(backing, '.sim'), exist_ok=True)
    with open(os.path.join(backing, '.sim', 'faults.json'), 'w', encoding='utf-8') as handle:
        json.dump(faults, handle)


def ops(backing: str) -> list[dict[str, Any]]:
    """The control writes the simulated kernel processed, in order."""
    try:
        with open(os.path.join(backing, '.sim', 'ops.log'), encoding='utf-8') as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def snapshot(backing: str) -> dict[str, str]:
    """Every path of the tree (``.sim`` excluded) with its link target or content, to compare states."""
    out: dict[str, str] = {}
    for top in ('sys', 'dev', 'proc'):
        base = os.path.join(backing, top)
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, backing)
                if os.path.islink(path):
                    out[rel] = '-> ' + os.readlink(path)
                elif os.path.isdir(path):
                    out[rel] = 'dir'
                elif os.path.isfile(path):
                    with open(path, 'rb') as handle:
                        out[rel] = handle.read().decode('utf-8', 'replace')
                else:
                    out[rel] = 'special'
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write('usage: %s BACKING MOUNTPOINT\n' % argv[0])
        return 2
    serve(argv[1], argv[2])
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
