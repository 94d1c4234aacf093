#!/usr/bin/env bash
# End to end on real kernels (QEMU test hosts under TCG), the last phase of scripts/test.sh.
#
# Phases (each timed, each bounded):
#   image            build the test-host image or reuse the cached one
#   collection       build + install the collection as users do
#   runtime          one pytest session on three test hosts booted at once (intel, radeon,
#                    noiommu; tests/conftest.py testbed_hosts):
#                    test_real_kernel.py: vfio_bind binds and restores a group on a running
#                    host; gpu_facts and vfio_bind report a stuck device (radeon);
#                    test_dynamic.py: role libvirt_gpu with binding dynamic on the intel host
#                    (one run): the domain starts with the GPU's whole group moved to
#                    vfio-pci by libvirt, stops with each function back on its own driver, the
#                    boot GPU of the same vendor:device untouched (well under a minute)
#                    test_noiommu.py: site.yml stops early on a host without an IOMMU and
#                    changes nothing;
#                    test_partition.py: on the intel host, gpu_partition enables 2 SR-IOV VFs
#                    of the emulated NVMe controller (03:00.0, not a GPU) and creates 2 mdevs
#                    of the kernel's sample driver mbochs, persisted (udev rule, mdevctl);
#                    capacity exhaustion refused; a domain with a VF on
#                    vfio-pci and an mdev starts (no guest OS); removing either while it runs
#                    is refused naming it; the domain is stopped before the AWX job
#                    test_awx_runner.py: AWX jobs (ansible-runner) over SSH on the intel host:
#                    facts.yml; site.yml with a kernel argument whose trial boot panics (the
#                    host falls back by itself, the job fails, nothing permanent is written);
#                    then site.yml in check + diff mode and for real (the check must predict
#                    exactly the tasks the real job changes; its trial boot is committed)
#                    test_partition_after_reboot.py: after that job's reboots the VFs and mdevs
#                    are back, the domain's hostdevs resolve and it starts again; restore.yml
#                    (check mode, real, again) with the VM's fleet request then leaves no VF,
#                    mdev, udev rule or mdevctl definition
#                    test_guest_boot.py: a guest in a libvirt domain on the intel host (the
#                    host's kernel, a busybox initramfs, nested TCG) lists the PCI devices it
#                    sees: the GPU and its audio function on one guest slot, the 64-bit PCI
#                    window (a few minutes); then, in the same running guest, libvirt_hostdev
#                    where=live hot-plugs a second GPU (02:00.0) and unplugs it again: the QEMU
#                    monitor lists it after the attach and not after the detach; the same for
#                    an mbochs mdev that gpu_partition creates and removes
#                    test_drain.py: a running domain holding the GPU on the intel host (no guest
#                    OS): libvirt_domain_drain refuses, times out naming it, powers it off with
#                    force; the role's drain refuses the reboot; state started runs it again
#   molecule-fleet   site.yml end to end on two hosts at once, an Intel-IOMMU and an AMD-IOMMU
#                    one: VM requests placed across them (spread), one reboot each,
#                    idempotence, each VM starts with its GPU, a request that cannot fit and
#                    drift refused before any change, a fourth request moves nothing, restore
# The Molecule scenarios run two at a time (FLEETGPU_E2E_JOBS, default 2).
#
# Every QEMU started here is stopped on exit, whatever happens (trap + launch.py sweep).
# FLEETGPU_E2E_ONLY="intel amd ..." runs a subset of the phases above.
set -uo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here" || exit 1
export PATH="$here/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$here/.cache/collections"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 NO_COLOR=1
export FLEETGPU_TESTBED_CACHE=${FLEETGPU_TESTBED_CACHE:-/var/cache/fleetgpu-testbed}
# Hosts started by this run live in a run directory of their own, so the sweep on exit stops
# exactly them (never a host another run is using).
export FLEETGPU_TESTBED_RUN=${FLEETGPU_TESTBED_RUN:-$FLEETGPU_TESTBED_CACHE/run-e2e.$$}
export FLEETGPU_TESTBED_LIFETIME=${FLEETGPU_TESTBED_LIFETIME:-3600}
# An SSH connection multiplexer that exits just as a task starts ("mux_client_request_session:
# read from master failed: Broken pipe") is an SSH error (exit code 255), not the task's: Ansible
# tries such a connection again instead of calling the host unreachable.
export ANSIBLE_SSH_RETRIES=${ANSIBLE_SSH_RETRIES:-3}
logs="$here/.cache/e2e-logs"
mkdir -p "$logs"
only=" ${FLEETGPU_E2E_ONLY:-image collection runtime fleet} "
jobs=${FLEETGPU_E2E_JOBS:-2}
# The whole phase stays inside this budget (seconds): each step's limit is cut to what is left.
budget=${FLEETGPU_E2E_BUDGET:-3300}
deadline=$((SECONDS + budget))
cap() {  # cap LIMIT: the limit, or the time left in the budget when that is shorter (at least 60 s)
  local left=$((deadline - SECONDS))
  [ "$left" -lt 60 ] && left=60
  if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

cleanup() {
  local d
  python3 roles/testbed/files/launch.py sweep >/dev/null 2>&1 || true
  # Keep the serial consoles with the logs; drop the run directory (overlays are gone already).
  for d in "$FLEETGPU_TESTBED_RUN"/*/; do
    [ -f "$d/serial.log" ] && cp "$d/serial.log" "$logs/serial-$(basename "$d").log"
  done
  case "$FLEETGPU_TESTBED_RUN" in */run-e2e.*) rm -rf "$FLEETGPU_TESTBED_RUN" ;; esac
}
trap cleanup EXIT
trap 'echo "e2e: interrupted"; exit 130' INT TERM HUP

failed=()
times=()
record() {  # name seconds status
  times+=("$(printf '%-24s %5ss  %s' "$1" "$2" "$3")")
  [ "$3" = ok ] || failed+=("$1")
}
phase() {  # name timeout command...
  local name=$1 limit; limit=$(cap "$2"); shift 2
  local t0=$SECONDS status=ok
  echo "--- e2e phase: $name (limit ${limit}s)"
  timeout -k 30 "$limit" "$@" || status=FAILED
  record "$name" $((SECONDS - t0)) "$status"
  echo "--- e2e phase: $name: $status after $((SECONDS - t0)) s"
}
wants() { [[ "$only" == *" $1 "* ]]; }

diagnose() {  # scenario reason: keep and print what a failure needs to be understood from CI's output
  local s=$1 reason=$2 log="$logs/molecule-$1.log" out="$logs/diagnosis-$1.txt" d step task pids port
  step=$(grep -oE '\[[a-z0-9_-]+ > [a-z_]+\]' "$log" 2>/dev/null | tail -1)
  task=$(grep -E '^[0-9:]{8} (TASK|RUNNING HANDLER) \[' "$log" 2>/dev/null | tail -1 | sed 's/ \**$//')
  {
    echo "molecule $s: $reason"
    echo "molecule step: ${step:-(none)}"
    echo "last Ansible task: ${task:-(none)}"
    echo
    echo "--- SSH state (client processes, control sockets, loopback connections)"
    pids=$(pgrep -d, -f 'ssh .*127\.0\.0\.1|ssh: .*\[mux\]' || true)
    [ -n "$pids" ] && ps -o pid,etimes,stat,args -p "$pids" | cut -c1-300
    ls -la "$HOME/.ansible/cp" 2>/dev/null || true
    for d in "$FLEETGPU_TESTBED_RUN"/testbed-*/; do
      [ -f "$d/host.json" ] || continue
      port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$d/host.json" 2>/dev/null)
      echo "host $(basename "$d"), ssh port ${port:-?}:"
      [ -n "${port:-}" ] && ss -tnp "( dport = :$port or sport = :$port )" 2>/dev/null | cut -c1-200
      [ -n "${port:-}" ] && timeout 20 python3 roles/testbed/files/launch.py ssh --name "$(basename "$d")" --timeout 15 -- \
        "cat /proc/sys/kernel/random/boot_id /proc/uptime /proc/loadavg; timeout 10 systemctl list-jobs --no-pager; ps -eo pid,stat,etimes,wchan:24,args | awk 'NR == 1 || \$2 ~ /^D/'" 2>&1 | sed 's/^/  probe: /'
    done
    for d in "$FLEETGPU_TESTBED_RUN"/testbed-*/; do
      [ -f "$d/serial.log" ] || continue
      cp "$d/serial.log" "$logs/serial-$(basename "$d").log"
      echo
      echo "--- serial console of $(basename "$d") (last 40 lines; whole in $logs/serial-$(basename "$d").log)"
      tail -40 "$d/serial.log" | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g'
    done
  } > "$out" 2>&1
  cat "$out"
}

molecule_scenario() {  # scenario limit: run `molecule test`, output to a log file, bounded
  local s=$1 limit log="$logs/molecule-$1.log" t0=$SECONDS status=ok pid end
  limit=$(cap "$2")
  end=$((SECONDS + limit))
  echo "--- e2e: molecule $s started (limit ${limit}s, log $log)"
  # A session of its own, so that a time-out stops molecule and every ansible/ssh it started,
  # after the state of the moment has been recorded.
  # Every line carries the time it was printed: a slow step shows where the time went.
  # shellcheck disable=SC2016  # expanded by the inner bash
  # Verbosity 3: the reboot tasks log each poll of the host, so a slow return can be read.
  setsid env ANSIBLE_VERBOSITY="${FLEETGPU_E2E_VERBOSITY:-3}" bash -c 'set -o pipefail; molecule test -s "$1" 2>&1 |
    while IFS= read -r line; do printf "%(%H:%M:%S)T %s\n" -1 "$line"; done' _ "$s" > "$log" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 5; done
  if kill -0 "$pid" 2>/dev/null; then
    status=TIMEOUT
    diagnose "$s" "ran out of time after ${limit} s"
    kill -TERM -- "-$pid" 2>/dev/null; sleep 20; kill -KILL -- "-$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  else
    wait "$pid" || status=FAILED
  fi
  echo "$status $((SECONDS - t0))" > "$logs/molecule-$s.result"
  echo "--- e2e: molecule $s: $status after $((SECONDS - t0)) s"
  if [ "$status" = FAILED ]; then
    diagnose "$s" "failed"
    echo "----- last lines of $log"
    tail -60 "$log"
  fi
}

t_all=$SECONDS
wants image && phase image 2400 bash roles/testbed/files/build_image.sh
if [ ! -f "$(bash roles/testbed/files/build_image.sh --path)/ready" ]; then
  echo "e2e: no test-host image; the remaining phases cannot run"
  record rest 0 FAILED
else
  wants collection && phase collection 300 bash scripts/install-collection.sh
  if wants runtime; then
    # --durations: where the phase's time went, test by test (setup = the hosts' boot)
    phase runtime 2400 pytest -q -rs --durations=12 -p no:cacheprovider tests/testbed/test_real_kernel.py \
      tests/testbed/test_dynamic.py tests/testbed/test_noiommu.py tests/testbed/test_partition.py \
      tests/testbed/test_awx_runner.py tests/testbed/test_partition_after_reboot.py tests/testbed/test_guest_boot.py \
      tests/testbed/test_drain.py tests/testbed/test_testbed_role.py
    if [ "${failed[*]}" != "${failed[*]/runtime/}" ]; then
      # pytest names the failed test and its play output; a time-out shows nothing more, so
      # the hosts' consoles are kept and their ends printed here
      for d in "$FLEETGPU_TESTBED_RUN"/rt-*/; do
        [ -f "$d/serial.log" ] || continue
        cp "$d/serial.log" "$logs/serial-$(basename "$d").log"
        echo "--- serial console of $(basename "$d") (last 40 lines; whole in $logs/serial-$(basename "$d").log)"
        tail -40 "$d/serial.log" | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g'
      done
    fi
  fi

  scenarios=()
  wants fleet && scenarios+=(fleet)
  if [ "${#scenarios[@]}" -gt 0 ]; then
    rm -f "$logs"/molecule-*.result "$logs"/diagnosis-*.txt
    running=0
    for s in "${scenarios[@]}"; do
      limit=2700
      molecule_scenario "$s" "$limit" &
      # Molecule installs the collection under ~/.ansible when it starts: do not race it.
      sleep 30
      running=$((running + 1))
      if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
    done
    wait
    for s in "${scenarios[@]}"; do
      read -r st secs < "$logs/molecule-$s.result" 2>/dev/null || { st=FAILED; secs=0; }
      record "molecule-$s" "$secs" "$st"
    done
  fi
fi

echo
echo "=== e2e phase times (total $((SECONDS - t_all)) s; logs in $logs)"
printf '%s\n' "${times[@]}"
stray=$(pgrep -f "qemu-system-x86_64 -name fleetgpu-testbed-.*$FLEETGPU_TESTBED_RUN/" | tr '\n' ' ' || true)
run_dir=$FLEETGPU_TESTBED_RUN
cleanup
if [ -n "$(pgrep -f "qemu-system-x86_64 -name fleetgpu-testbed-.*$run_dir/" || true)" ]; then
  echo "e2e: QEMU processes survived the sweep"; failed+=(cleanup)
fi
[ -n "$stray" ] && echo "e2e: the final sweep stopped QEMU processes a phase had left running: $stray"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "e2e FAILED: ${failed[*]}"
  exit 1
fi
echo "e2e: all phases passed"
