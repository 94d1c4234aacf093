#!/usr/bin/env bash
# The project's test command (called by `make test` and .ci/run).
# Every phase runs; the run fails if any phase failed. Phase times are printed.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 1
bash scripts/bootstrap.sh || exit 1
export PATH="$here/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$here/.cache/collections"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 ANSIBLE_NOCOLOR=1
failed=()
times=()
phase() {
  local name=$1; shift
  local t0=$SECONDS
  echo
  echo "=== phase: $name"
  if "$@"; then status=ok; else status=FAILED; failed+=("$name"); fi
  times+=("$(printf '%-28s %5ss  %s' "$name" $((SECONDS - t0)) "$status")")
}
sanity() {
  (cd .cache/src/ansible_collections/fleetgpu/passthrough &&
    ansible-test sanity --python 3.11 --color no)
}
types() {
  # Typed Python is the style (docs/contributing.md): mypy checks the plugins as installed, and
  # every "# type: ignore" left in them must still be needed (modules without type information,
  # such as lxml, are taken as Any).
  (cd .cache/src && mypy --python-version 3.11 --explicit-package-bases --namespace-packages \
    --ignore-missing-imports --warn-unused-ignores --disallow-untyped-defs --no-incremental ansible_collections/fleetgpu/passthrough/plugins)
}
ruff_check() {
  # ruff (settings in pyproject.toml): pycodestyle, pyflakes and bugbear over every Python file of
  # the repository's plugins, tests, benchmarks and scripts, not only what ansible-test sanity sees.
  ruff check --no-cache plugins tests bench scripts
}
lint() {
  # Molecule (the end-to-end phase) installs this collection under ~/.ansible/collections; a copy
  # left there by an earlier run would shadow the one just built for ansible-lint.
  rm -rf "$HOME/.ansible/collections/ansible_collections/fleetgpu/passthrough"
  ansible-lint --profile production --offline -q
}
docs() {
  local f m r
  for f in plugins/modules/*.py; do
    m=$(basename "$f" .py)
    ansible-doc "fleetgpu.passthrough.$m" >/dev/null || { echo "ansible-doc failed for module $m"; return 1; }
  done
  for f in roles/*/; do
    r=$(basename "$f")
    ansible-doc -t role "fleetgpu.passthrough.$r" >/dev/null || { echo "ansible-doc failed for role $r"; return 1; }
  done
  for f in plugins/filter/*.py; do
    [ "$(basename "$f")" = __init__.py ] && continue
    r=$(basename "$f" .py)
    ansible-doc -t filter "fleetgpu.passthrough.$r" >/dev/null || { echo "ansible-doc failed for filter $r"; return 1; }
  done
  echo "ansible-doc renders every module and role"
}
phase install-collection bash scripts/install-collection.sh
phase sanity sanity
phase types types
phase ruff ruff_check
phase ansible-lint lint
phase ansible-doc docs
phase changelog bash scripts/changelog.sh --check
phase docsite bash scripts/docsite.sh --check
phase unit pytest -q -n 2 -p no:cacheprovider tests/unit
# The reboot tests (test_reboot_bounded.py) run a private sshd behind a proxy that plays a
# rebooting host (tests/integration/sshhost.py); they mostly wait, beside the other tests.
phase integration pytest -q -n 2 --dist loadfile -p no:cacheprovider tests/integration
phase core-matrix bash scripts/core-matrix.sh
# The end-to-end phase on QEMU test hosts (tests/testbed/e2e.sh, also `make e2e` alone):
# real kernels (runtime tests, AWX jobs, a host without an IOMMU, the two-host Molecule fleet
# scenario). FLEETGPU_E2E=0 leaves it out.
if [ "${FLEETGPU_E2E:-1}" = 1 ]; then
  phase e2e-real-kernels bash tests/testbed/e2e.sh
fi
echo
echo "=== phase times"
printf '%s\n' "${times[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED phases: ${failed[*]}"
  exit 1
fi
echo "all phases passed"
