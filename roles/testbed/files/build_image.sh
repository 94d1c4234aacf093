#!/usr/bin/env bash
# Build (or reuse) the base disk image of the QEMU test hosts.
#
#   roles/testbed/files/build_image.sh           build if needed, print the image directory last
#   roles/testbed/files/build_image.sh --path    print the image directory only (no build)
#
# The image: Debian 12 (debootstrap, minbase) with the kernel, systemd, openssh, python3,
# initramfs-tools, GRUB on the disk, pciutils, and qemu + libvirt inside for the VM step,
# mdevctl, and the kernel's sample mediated-device driver mbochs (samples/vfio-mdev/mbochs.c of
# Debian's linux-source-6.1) built out of tree against the image's own kernel headers, installed
# in /lib/modules/<release>/extra (not loaded at boot: a test that wants it loads it).
# It lives OUTSIDE the repository in ${FLEETGPU_TESTBED_CACHE:-/var/cache/fleetgpu-testbed},
# in a directory named after a hash of the recipe (this script and roles/testbed/files/guest/*),
# so a recipe change builds a new image. Test hosts boot from qcow2 overlays of it, so
# the cached image is never modified by a run.
#
# The package mirror is read from this machine's apt configuration at run time
# (or FLEETGPU_TESTBED_MIRROR), never written in the repository.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${FLEETGPU_TESTBED_CACHE:-/var/cache/fleetgpu-testbed}
suite=bookworm
disk_size_mib=6144
part_start_sectors=2048

recipe_hash() {
  (cd "$here" && sha256sum build_image.sh guest/* | sha256sum | cut -c1-16)
}
imgdir="$cache/base-$(recipe_hash)"

if [ "${1:-}" = "--path" ]; then
  echo "$imgdir"
  exit 0
fi

log() { printf '[build_image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -f "$imgdir/ready" ]; then
  log "reusing cached image $imgdir"
  echo "$imgdir"
  exit 0
fi

[ "$(id -u)" = 0 ] || { log "must run as root (debootstrap, chroot)"; exit 1; }
for tool in debootstrap mkfs.ext4 sfdisk qemu-system-x86_64 qemu-img ssh-keygen flock timeout; do
  command -v "$tool" >/dev/null || { log "missing tool: $tool (Debian packages: debootstrap e2fsprogs fdisk qemu-system-x86 qemu-utils openssh-client)"; exit 1; }
done

mkdir -p "$cache"
exec 9>"$cache/.build.lock"
if ! flock -w 1800 9; then
  log "another build holds $cache/.build.lock for more than 30 minutes"
  exit 1
fi
if [ -f "$imgdir/ready" ]; then   # built by a concurrent caller while we waited
  echo "$imgdir"
  exit 0
fi

# The mirror: first "deb" source for $suite in this machine's apt configuration.
find_mirror() {
  if [ -n "${FLEETGPU_TESTBED_MIRROR:-}" ]; then
    echo "$FLEETGPU_TESTBED_MIRROR"
    return
  fi
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822 stanzas: remember URIs/Suites/Types per stanza, print the first matching URI.
    awk -v suite="$suite" '
      function flush() {
        if (uris != "" && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ")) { split(uris, u, " "); print u[1]; found = 1; exit }
        uris = ""; suites = ""; types = ""
      }
      /^[[:space:]]*$/ { flush(); next }
      /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
      /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
      END { if (!found) flush() }
    ' "$f" | head -1 | grep . && return
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1) == suite) { print $i; exit } }' "$f" | grep . && return
  done
  return 1
}
mirror=$(find_mirror) || { log "no 'deb' source for $suite in /etc/apt (set FLEETGPU_TESTBED_MIRROR)"; exit 1; }

t0=$SECONDS
work="$cache/build.$$"
rootfs="$work/rootfs"
rm -rf "$work"
mkdir -p "$rootfs"
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  if [ -n "${qemu_pid:-}" ]; then kill "$qemu_pid" 2>/dev/null || true; fi
  # Never delete through a bind mount of the machine's /dev, /proc or /sys.
  if grep -q " $work/" /proc/mounts; then
    log "left $work in place: something is still mounted below it"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "debootstrap $suite (minbase) from the configured mirror"
timeout 1800 debootstrap --variant=minbase \
  --include=systemd-sysv,openssh-server,python3,linux-image-amd64,kmod,iproute2,udev,initramfs-tools,ca-certificates \
  "$suite" "$rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 || {
    tail -30 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
log "debootstrap done after $((SECONDS - t0)) s"

echo "deb $mirror $suite main" > "$rootfs/etc/apt/sources.list"
printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
chmod +x "$rootfs/usr/sbin/policy-rc.d"
for m in proc sys dev dev/pts; do
  mount --bind "/$m" "$rootfs/$m"
  mounted+=("$rootfs/$m")
done
in_root() { DEBIAN_FRONTEND=noninteractive LC_ALL=C chroot "$rootfs" "$@"; }
in_root debconf-set-selections <<'EOF'
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
EOF
# The GRUB defaults go in before grub-pc so its configuration handling keeps them.
install -D -m 0644 "$here/guest/grub" "$rootfs/etc/default/grub"
# The .deb files of python3-libvirt and python3-lxml stay in apt's cache: a scenario that
# removes them from a host sees role vfio_host install them again with the real apt, offline
# (python3-apt is what Ansible's apt module runs on).
log "installing GRUB, pciutils, qemu and libvirt into the image"
timeout 1800 chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LC_ALL=C sh -c \
  'apt-get update -q && apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold \
     grub-pc pciutils qemu-system-x86 libvirt-daemon-system libvirt-clients python3-libvirt python3-lxml \
     python3-apt dbus less procps &&
   find /var/cache/apt/archives -maxdepth 1 -name "*.deb" ! -name "python3-libvirt_*" ! -name "python3-lxml_*" -delete' \
  > "$work/apt.log" 2>&1 || {
    tail -30 "$work/apt.log" >&2; log "package installation failed"; exit 1; }
install -m 0644 "$here/guest/grub" "$rootfs/etc/default/grub"
log "packages done after $((SECONDS - t0)) s; building mbochs against the image's kernel headers"
# mbochs: the kernel's sample mediated display device, built in the chroot against the headers
# of the exact kernel release the image installed; the compiler, the headers and the source
# are removed again, only the module and mdevctl stay.
kver=$(find "$rootfs/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)
timeout 1800 chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LC_ALL=C KVER="$kver" sh -euc '
  build="linux-headers-$KVER linux-source-6.1 gcc make libc6-dev"
  apt-get install -y -q --no-install-recommends mdevctl $build
  rm -rf /tmp/mbochs && mkdir -p /tmp/mbochs
  tar -xJf /usr/src/linux-source-6.1.tar.xz -C /tmp/mbochs --strip-components=3 \
    linux-source-6.1/samples/vfio-mdev/mbochs.c
  echo "obj-m := mbochs.o" > /tmp/mbochs/Makefile
  make -s -C "/lib/modules/$KVER/build" M=/tmp/mbochs modules
  install -D -m 0644 /tmp/mbochs/mbochs.ko "/lib/modules/$KVER/extra/mbochs.ko"
  depmod "$KVER"
  modinfo -k "$KVER" mbochs >/dev/null
  rm -rf /tmp/mbochs
  apt-get purge -y -q $build
  apt-get autoremove --purge -y -q
  find /var/cache/apt/archives -maxdepth 1 -name "*.deb" ! -name "python3-libvirt_*" ! -name "python3-lxml_*" -delete' \
  > "$work/mbochs.log" 2>&1 || {
    tail -30 "$work/mbochs.log" >&2; log "building mbochs failed"; exit 1; }
[ -f "$rootfs/lib/modules/$kver/extra/mbochs.ko" ] || { log "mbochs.ko is missing after the build"; exit 1; }
for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[$i]}"; done
mounted=()
rm -f "$rootfs/usr/sbin/policy-rc.d"
log "mbochs and mdevctl done after $((SECONDS - t0)) s"

# Configuration.
echo testbed > "$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 testbed\n' > "$rootfs/etc/hosts"
echo "/dev/vda1 / ext4 rw,errors=remount-ro 0 1" > "$rootfs/etc/fstab"
install -D -m 0644 "$here/guest/20-wired.network" "$rootfs/etc/systemd/network/20-wired.network"
install -D -m 0644 "$here/guest/blacklist-radeon.conf" "$rootfs/etc/modprobe.d/blacklist-radeon.conf"
install -D -m 0644 "$here/guest/sshd-testbed.conf" "$rootfs/etc/ssh/sshd_config.d/testbed.conf"
install -D -m 0644 "$here/guest/fleetgpu-firstboot.service" "$rootfs/etc/systemd/system/fleetgpu-firstboot.service"
install -D -m 0755 "$here/guest/fleetgpu-firstboot" "$rootfs/usr/local/sbin/fleetgpu-firstboot"
install -D -m 0644 "$here/guest/fleetgpu-bootlog.service" "$rootfs/etc/systemd/system/fleetgpu-bootlog.service"
install -D -m 0755 "$here/guest/fleetgpu-bootlog" "$rootfs/usr/local/sbin/fleetgpu-bootlog"
for unit in fleetgpu-firstboot.service fleetgpu-bootlog.service; do
  ln -sf "/etc/systemd/system/$unit" "$rootfs/etc/systemd/system/multi-user.target.wants/$unit"
done
# A persistent journal: `journalctl --list-boots` counts the reboots of a converge.
mkdir -p "$rootfs/var/log/journal"
ln -sf /lib/systemd/system/systemd-networkd.service "$rootfs/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
# Faster, quieter boots: no waiting for the network, no periodic jobs during tests.
for unit in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
            e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer libvirt-guests.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
# The blacklist must also hold in the initramfs: rebuild it with the file in place.
in_root update-initramfs -u -k all > "$work/initramfs.log" 2>&1 || {
  tail -20 "$work/initramfs.log" >&2; log "update-initramfs failed"; exit 1; }
# Later rebuilds inside the running test host (the vfio_host role's) include only the modules
# this machine needs (plus what the role lists): mkinitramfs forks a lot and forks are slow
# under TCG. The image's own initramfs above was built with MODULES=most (no machine in a chroot).
sed -i 's/^MODULES=most/MODULES=dep/' "$rootfs/etc/initramfs-tools/initramfs.conf"
passwd_hash='*'
in_root usermod -p "$passwd_hash" root
rm -f "$rootfs"/etc/ssh/ssh_host_*
in_root ssh-keygen -A >/dev/null

mkdir -p "$work/out"
ssh-keygen -q -t ed25519 -N '' -C fleetgpu-testbed -f "$work/out/id_ed25519"
install -d -m 0700 "$rootfs/root/.ssh"
install -m 0600 "$work/out/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
kver=$(find "$rootfs/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)
cp "$rootfs/boot/vmlinuz-$kver" "$work/out/vmlinuz"
cp "$rootfs/boot/initrd.img-$kver" "$work/out/initrd.img"
echo "$kver" > "$work/out/kernel-release"

log "making the partitioned disk image (${disk_size_mib} MiB, ext4 from the directory)"
disk="$work/out/disk.raw"
truncate -s "${disk_size_mib}M" "$disk"
printf 'label: dos\nstart=%s, type=83, bootable\n' "$part_start_sectors" | sfdisk -q "$disk"
fs_kib=$(( disk_size_mib * 1024 - part_start_sectors / 2 ))
mkfs.ext4 -q -F -L testbed-root -E "offset=$((part_start_sectors * 512))" -d "$rootfs" "$disk" "${fs_kib}k"
rm -rf "$rootfs"

log "first boot (direct kernel): grub-install inside the guest"
timeout 600 qemu-system-x86_64 -accel tcg -machine q35 -cpu Skylake-Client -smp 2 -m 1536 \
  -display none -no-reboot -nic none \
  -kernel "$work/out/vmlinuz" -initrd "$work/out/initrd.img" \
  -append "root=/dev/vda1 rw console=ttyS0,115200n8 no_timer_check" \
  -drive "file=$disk,format=raw,if=virtio" \
  -serial "file:$work/out/firstboot.log" 2> "$work/out/firstboot.qemu.log" &
qemu_pid=$!
if ! wait "$qemu_pid"; then
  qemu_pid=
  tail -30 "$work/out/firstboot.log" >&2; log "first boot failed or timed out"; exit 1
fi
qemu_pid=
grep -q "fleetgpu-firstboot: grub installed" "$work/out/firstboot.log" || {
  tail -30 "$work/out/firstboot.log" >&2; log "GRUB was not installed on first boot"; exit 1; }

printf 'built %s in %s s\nkernel %s\n' "$(date -u +%FT%TZ)" "$((SECONDS - t0))" "$kver" > "$work/out/build-info"
touch "$work/out/ready"
rm -rf "$imgdir"
mv "$work/out" "$imgdir"
# Older images of other recipes are left to the user; list them.
log "image ready in $imgdir (build took $((SECONDS - t0)) s)"
echo "$imgdir"
