#!/bin/sh
# Test host state that the main job may change, one "key value" line each; used to prove
# that restore.yml brings the host back and that a refused run changed nothing.
# With --record (Molecule prepare, through ansible.builtin.script: no Python module run, which
# costs seconds under TCG): keep this script on the host, record the state and the boot count
# before the main job, and start libvirtd.
set -u
state=/var/lib/fleetgpu-testbed
if [ "${1:-}" = --record ]; then
  set -e
  install -m 0755 "$0" "$state/snapshot.sh"
  "$state/snapshot.sh" > "$state/before.txt"
  wc -l < "$state/boots" > "$state/boots.before"
  systemctl start libvirtd
  exit 0
fi
echo "cmdline $(cat /proc/cmdline)"
for f in /etc/default/grub /etc/default/grub.d/* /etc/modprobe.d/* /etc/modules-load.d/* /etc/initramfs-tools/modules /etc/initramfs-tools/hooks/* /etc/initramfs-tools/scripts/init-top/*; do
  [ -f "$f" ] && echo "file $f $(md5sum < "$f" | cut -d' ' -f1)"
done
grep -o 'linux[[:space:]].*' /boot/grub/grub.cfg | head -1 | sed 's/^/grubcfg /'
for a in 0000:00:01.0 0000:01:00.0 0000:01:00.1 0000:02:00.0; do
  d=/sys/bus/pci/devices/$a
  drv=none
  [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
  echo "driver $a $drv"
done
