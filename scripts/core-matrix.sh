#!/usr/bin/env bash
# The collection on every supported ansible-core (meta/runtime.yml: >=2.17). For each version
# other than the tool chain's own (tests/requirements.txt, which every other phase uses), in a
# venv of its own (.cache/core-<version>):
#   1. ansible-test sanity (the collection needs no tests/sanity/ignore-<version>.txt)
#   2. a smoke job: the tarball installed by that version's ansible-galaxy, ansible-doc of every
#      module, role and filter, then with that version's ansible-playbook: gpu_facts and
#      iommu_check tasks, site.yml (check mode, the real run, a second run) on simulated hosts
#      with private libvirtds, and the host-pattern check of site.yml, facts.yml and restore.yml
# and prints one line per version; two versions run at a time. A version whose controller needs
# a Python this machine does not have is reported as not run, with the reason. Interpreters are
# looked for on PATH, then among those pyenv installed (by their own path, not its shims).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 1
bash scripts/bootstrap.sh >/dev/null || exit 1
# Only interpreters that really run count: a version manager's shims (pyenv) answer for Pythons
# that are not active, so they are left out of PATH here.
PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v '/\.pyenv/shims$' | paste -sd: -)
export PATH
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 ANSIBLE_NOCOLOR=1

# version pin | controller Pythons it supports
MATRIX=(
  "2.17.14|3.10 3.11 3.12"
  "2.18.19|3.11 3.12 3.13"
  "2.19.14|3.11 3.12 3.13"
  "2.20.10|3.12 3.13 3.14"
)
own=$(sed -n 's/^ansible-core==//p' tests/requirements.txt)
SMOKE=(tests/integration/test_facts_playbook.py
       "tests/integration/test_fleet_playbooks.py::test_site_places_defines_converges_and_is_stable"
       "tests/integration/test_fleet_playbooks.py::test_a_pattern_that_matches_no_host_says_so")

bash scripts/install-collection.sh >/dev/null || exit 1
tarball=$(ls "$here"/.cache/dist/fleetgpu-passthrough-*.tar.gz)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# One version: its output goes to $out/<minor>.log, its matrix line to $out/<minor>.line, and
# $out/<minor>.failed marks a failure.
one_version() {
  local entry=$1 version pythons minor t0 py p cand venv pipver cache src what docs bad f name type status joined
  local failed=0 skip=()
  version=${entry%%|*} pythons=${entry##*|}
  minor=${version%.*}
  say_line() { printf '%s\n' "$1" > "$out/$minor.line"; }
  t0=$SECONDS
  # FLEETGPU_CORE_ONLY=2.20 runs one version (for a contributor; the test command runs all)
  [ -n "${FLEETGPU_CORE_ONLY:-}" ] && [ "$minor" != "$FLEETGPU_CORE_ONLY" ] && return
  if [ "$version" = "$own" ]; then
    say_line "$(printf '%-8s %-8s %s' "$minor" ok "$version: the tool chain's own; every phase of the test command runs on it")"
    return
  fi
  py=
  for p in $pythons; do
    if "python$p" -c pass 2>/dev/null; then py=python$p; break; fi
  done
  # else an interpreter a version manager installed (pyenv): a real one, by its own path (not a shim)
  if [ -z "$py" ]; then
    for p in $pythons; do
      for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$p".*/bin/"python$p"; do
        if [ -x "$cand" ] && "$cand" -c pass 2>/dev/null; then py=$cand; break 2; fi
      done
    done
  fi
  if [ -z "$py" ]; then
    say_line "$(printf '%-8s %-8s %s' "$minor" 'not run' "$version: its controller needs Python $pythons; this machine has $(python3 -V 2>&1 | cut -d' ' -f2) only")"
    return
  fi
  venv=.cache/core-$minor
  echo "=== ansible-core $version ($py)"
  if [ "$(cat "$venv/.version" 2>/dev/null)" != "$version" ]; then
    rm -rf "$venv"
    if "$py" -m venv "$venv" && "$venv/bin/pip" install -q --upgrade pip >"$venv/pip.log" 2>&1 &&
        "$venv/bin/pip" install -q "ansible-core==$version" >>"$venv/pip.log" 2>&1; then
      echo "$version" > "$venv/.version"
    else
      tail -5 "$venv/pip.log"
      say_line "$(printf '%-8s %-8s %s' "$minor" FAILED "$version: its venv could not be made ($venv/pip.log)")"
      failed=1
      return
    fi
  fi
  what=()
  # ansible-test fetches a pip bootstrap script from a host this machine cannot reach: the same
  # local stand-in as scripts/bootstrap.sh gives the tool chain's own ansible-test
  pipver=$(grep -oP "pip='\K[0-9.]+" "$venv"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | head -1)
  cache="$HOME/.ansible/test/cache/get_pip_${pipver//./_}.py"
  if [ -n "$pipver" ] && ! cmp -s scripts/get_pip_offline.py "$cache"; then
    # by rename: another version's job may be reading the same file
    mkdir -p "$(dirname "$cache")" && cp scripts/get_pip_offline.py "$cache.$minor" && mv -f "$cache.$minor" "$cache"
  fi
  # 1. sanity, on a copy of the collection tree laid out for ansible-test
  src=$venv/src/ansible_collections/fleetgpu/passthrough
  rm -rf "$venv/src" && mkdir -p "$src" && cp -a .cache/src/ansible_collections/fleetgpu/passthrough/. "$src/"
  # ansible-core 2.17's sanity wants every module_utils package __init__.py empty; the two
  # backend registries (_bootloader, _initramfs) live there, which 2.18 and later allow. Its
  # ignore file may not list empty-init (ansible-lint: sanity[cannot-ignore]), so it is skipped
  # here and the line says so.
  skip=()
  [ "$minor" = 2.17 ] && skip=(--skip-test empty-init)
  if (cd "$src" && PATH="$here/$venv/bin:$PATH" ansible-test sanity --python "${py##*python}" --color no "${skip[@]}" \
        >"$here/$venv/sanity.log" 2>&1); then
    what+=("sanity ok${skip[*]:+ (empty-init skipped)}")
  else
    what+=("sanity FAILED ($venv/sanity.log)"); failed=1
    tail -30 "$venv/sanity.log"
  fi
  # 2. the smoke job
  rm -rf "$venv/collections"
  if ANSIBLE_COLLECTIONS_PATH=$venv/collections "$venv/bin/ansible-galaxy" collection install --force \
      -p "$venv/collections" "$tarball" >/dev/null 2>"$venv/smoke.log" &&
      [ -f "$venv/collections/ansible_collections/fleetgpu/passthrough/MANIFEST.json" ]; then
    docs=0 bad=0
    for f in plugins/modules/*.py roles/*/ plugins/filter/*.py; do
      name=$(basename "$f" .py)
      [ "$name" = __init__ ] && continue
      type=module
      case $f in roles/*) type=role ;; plugins/filter/*) type=filter ;; esac
      if ANSIBLE_COLLECTIONS_PATH=$venv/collections "$venv/bin/ansible-doc" -t "$type" "fleetgpu.passthrough.$name" >/dev/null 2>>"$venv/smoke.log"; then
        docs=$((docs + 1))
      else
        bad=$((bad + 1))
      fi
    done
    if [ "$bad" = 0 ]; then
      what+=("ansible-doc ok ($docs)")
    else
      what+=("ansible-doc FAILED ($bad)"); failed=1
    fi
    if FLEETGPU_ANSIBLE_BIN=$here/$venv/bin FLEETGPU_COLLECTIONS_PATH=$here/$venv/collections FLEETGPU_COLLECTION_INSTALLED=1 \
        .venv/bin/pytest -q -p no:cacheprovider "${SMOKE[@]}" >>"$venv/smoke.log" 2>&1; then
      what+=("smoke ok ($(grep -Eo '[0-9]+ passed' "$venv/smoke.log" | tail -1))")
    else
      what+=("smoke FAILED ($venv/smoke.log)"); failed=1
      tail -30 "$venv/smoke.log"
    fi
  else
    what+=("install FAILED ($venv/smoke.log)"); failed=1
  fi
  status=ok
  [[ "${what[*]}" == *FAILED* ]] && status=FAILED
  joined=$(printf '%s, ' "${what[@]}")
  say_line "$(printf '%-8s %-8s %s: %s%ss' "$minor" "$status" "$version" "$joined" $((SECONDS - t0)))"
  [ "$failed" = 0 ] || : > "$out/$minor.failed"
}
# Two versions at a time (FLEETGPU_CORE_JOBS): sanity and the smoke job are mostly one process each.
jobs_max=${FLEETGPU_CORE_JOBS:-2}
for entry in "${MATRIX[@]}"; do
  minor=${entry%%|*}; minor=${minor%.*}
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
  one_version "$entry" > "$out/$minor.log" 2>&1 &
done
wait
failed=0
lines=()
for entry in "${MATRIX[@]}"; do
  minor=${entry%%|*}; minor=${minor%.*}
  [ -s "$out/$minor.log" ] && cat "$out/$minor.log"
  [ -f "$out/$minor.line" ] && lines+=("$(cat "$out/$minor.line")")
  [ -f "$out/$minor.failed" ] && failed=1
  if [ -f "$out/$minor.line" ]; then
    [ "$(awk '{print $2}' "$out/$minor.line")" = FAILED ] && failed=1
  elif [ -z "${FLEETGPU_CORE_ONLY:-}" ] || [ "$minor" = "$FLEETGPU_CORE_ONLY" ]; then
    lines+=("$(printf '%-8s %-8s %s' "$minor" FAILED "no result (see the output above)")"); failed=1
  fi
done
echo
echo "=== ansible-core matrix"
printf '%s\n' "${lines[@]}"
exit "$failed"
