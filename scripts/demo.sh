#!/usr/bin/env bash
# The README's main job (`make demo`): the fleet passthrough job on two local test hosts.
#
#  1. install what is needed (scripts/bootstrap.sh), build or reuse the test-host image
#  2. boot two QEMU test hosts at once (real kernels; one with an Intel IOMMU, one with an AMD
#     IOMMU; each with a boot GPU, a GPU with its HDMI audio function and an AMD-vendor GPU)
#  3. install the collection as users do and run playbooks/site.yml through the fleet inventory
#     in inventories/fleet-testbed: GPU models and VM requests, no host or address named; the
#     placement puts the VMs across the two hosts, the hosts converge, the VMs are defined
#  4. print a summary: the placement, per host what is bound to vfio-pci and which VM holds
#     what (from the fleet report site.yml rewrites after the converge, so the end state),
#     reboots, time, and the path of the fleet report (JSON + HTML)
#  5. stop the test hosts (always, also on failure or Ctrl-C)
#
# FLEETGPU_DEMO_KEEP=1 leaves the hosts running (stop them with
# `python3 roles/testbed/files/launch.py --run-dir "$FLEETGPU_TESTBED_CACHE/run-demo" sweep`).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
t0=$SECONDS
bash scripts/bootstrap.sh
export PATH="$here/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$here/.cache/collections"
export ANSIBLE_NOCOLOR=1 ANSIBLE_HOST_KEY_CHECKING=False
export FLEETGPU_TESTBED_CACHE=${FLEETGPU_TESTBED_CACHE:-/var/cache/fleetgpu-testbed}
export FLEETGPU_TESTBED_RUN="$FLEETGPU_TESTBED_CACHE/run-demo"
hosts=(testbed-intel testbed-amd)
topologies=(intel amd)
report_dir="$here/.cache/demo-report"
launcher=(python3 roles/testbed/files/launch.py)

stop_hosts() {
  if [ "${FLEETGPU_DEMO_KEEP:-0}" != 1 ]; then
    "${launcher[@]}" sweep >/dev/null 2>&1 || true
  fi
}
trap stop_hosts EXIT
trap 'exit 130' INT TERM HUP

echo "== test-host image"
t=$SECONDS
timeout 2400 bash roles/testbed/files/build_image.sh >/dev/null
image_s=$((SECONDS - t))
echo "== collection"
bash scripts/install-collection.sh
echo "== booting two test hosts at once (${hosts[*]}: boot GPU, GPU + HDMI audio, AMD-vendor GPU each)"
t=$SECONDS
pids=()
for i in "${!hosts[@]}"; do
  timeout 900 "${launcher[@]}" up --name "${hosts[$i]}" --topology "${topologies[$i]}" \
    --inventory "$FLEETGPU_TESTBED_RUN/${hosts[$i]}.inventory.yml" --group gpu_hosts &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
boot_s=$((SECONDS - t))
invs=()
declare -A boots_before
for h in "${hosts[@]}"; do
  invs+=(-i "$FLEETGPU_TESTBED_RUN/$h.inventory.yml")
  boots_before[$h]=$("${launcher[@]}" ssh --name "$h" -- wc -l /var/lib/fleetgpu-testbed/boots | cut -d' ' -f1)
  "${launcher[@]}" ssh --name "$h" -- systemctl start libvirtd
done

echo "== playbooks/site.yml (fleet: VM requests placed across the hosts)"
t=$SECONDS
timeout 2400 ansible-playbook -i inventories/fleet-testbed "${invs[@]}" playbooks/site.yml \
  -e fleetgpu_report_dir="$report_dir" -e fleetgpu_serial=2
site_s=$((SECONDS - t))

echo "== summary"
python3 - "$report_dir/fleet-report.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
print('Placement (fleetgpu_placement); the hosts as the job left them:')
for p in report.get('placement', []):
    print('  %-6s -> %-14s %s x %s' % (p['vm'], p['host'], p['model'], ', '.join(p['devices'])))
for host in report.get('hosts', []):
    print('Host %s (%s):' % (host.get('name'), host.get('status')))
    for g in host.get('gpus', []):
        print('  %s %-12s %-8s driver=%-10s state=%-10s vm=%s' % (
            g.get('address'), g.get('vendor_device', ''), g.get('model') or '-', g.get('driver') or 'none',
            g.get('state'), g.get('vm') or '-'))
EOF
for h in "${hosts[@]}"; do
  after=$("${launcher[@]}" ssh --name "$h" -- wc -l /var/lib/fleetgpu-testbed/boots | cut -d' ' -f1)
  vms=$("${launcher[@]}" ssh --name "$h" -- virsh -q -c qemu:///system list --all --name | tr '\n' ' ')
  echo "Host $h: VMs defined: ${vms:-none}; reboots during the job: $((after - ${boots_before[$h]}))"
done
echo "Time: image ${image_s}s, boot ${boot_s}s, site.yml ${site_s}s, total $((SECONDS - t0))s"
echo "Fleet report: $report_dir/fleet-report.json and $report_dir/fleet-report.html"
