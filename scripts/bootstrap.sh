#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian 12 machine:
# apt packages, then a Python virtual environment with pinned versions (.venv).
# Idempotent: a second call only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc pkg-config git rsync
  libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  qemu-system-x86 qemu-utils debootstrap e2fsprogs fdisk openssh-client
  fuse3 libfuse2 pciutils pci.ids shellcheck chromium pandoc
  busybox-static
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The reboot tests run Debian's sshd privately (tests/integration/sshhost.py): unpack the
# package into .cache/sshd instead of installing it, so no ssh service starts on this machine.
if [ ! -x .cache/sshd/usr/sbin/sshd ]; then
  echo "bootstrap: unpacking openssh-server into .cache/sshd"
  rm -rf .cache/sshd-debs && mkdir -p .cache/sshd-debs .cache/sshd
  (cd .cache/sshd-debs && { apt-get download -q openssh-server libwrap0 2>/dev/null ||
    { apt-get update -q && apt-get download -q openssh-server libwrap0; }; })
  for deb in .cache/sshd-debs/*.deb; do dpkg-deb -x "$deb" .cache/sshd; done
  rm -rf .cache/sshd-debs
fi

PY=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: creating .venv from tests/requirements.txt"
  rm -rf .venv
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip wheel setuptools
  .venv/bin/pip install -q -r tests/requirements.txt
  echo "$want" > "$stamp"
fi
# The release tools (antsibull-changelog, antsibull-docs) in a venv of their own.
rstamp=.cache/venv-release/.requirements.sha256
rwant=$(sha256sum tests/requirements-release.txt | cut -d' ' -f1)
if [ ! -x .cache/venv-release/bin/python ] || [ "$(cat "$rstamp" 2>/dev/null)" != "$rwant" ]; then
  echo "bootstrap: creating .cache/venv-release from tests/requirements-release.txt"
  rm -rf .cache/venv-release
  "$PY" -m venv .cache/venv-release
  .cache/venv-release/bin/pip install -q --upgrade pip wheel
  .cache/venv-release/bin/pip install -q -r tests/requirements-release.txt
  echo "$rwant" > "$rstamp"
fi
# ansible-test's sanity venvs fetch a pip bootstrap script from a host this machine cannot
# reach: give it a local stand-in under the name it looks for.
pipver=$(grep -oP "pip='\K[0-9.]+" .venv/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | head -1)
cache="$HOME/.ansible/test/cache/get_pip_${pipver//./_}.py"
if [ -n "$pipver" ] && ! cmp -s scripts/get_pip_offline.py "$cache"; then
  mkdir -p "$(dirname "$cache")" && cp scripts/get_pip_offline.py "$cache"
fi
version=$(.venv/bin/ansible --version)
echo "bootstrap: ready (${version%%$'\n'*})"
