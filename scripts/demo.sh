#!/usr/bin/env bash
# The README's main job (`make demo`): the whole passthrough job on a local test host.
#
#  1. install what is needed (scripts/bootstrap.sh), build or reuse the test-host image
#  2. boot a QEMU test host (real kernel, emulated Intel IOMMU, three emulated GPUs)
#  3. install the collection as users do and run playbooks/site.yml through the inventory
#     in inventories/testbed (the launcher adds how to reach the host)
#  4. print a summary: GPUs found, devices bound, the VM that holds them, reboots, time
#  5. stop the test host (always, also on failure or Ctrl-C)
#
# FLEETGPU_DEMO_KEEP=1 leaves the host running (stop it with
# `python3 tests/testbed/launch.py --run-dir "$FLEETGPU_TESTBED_CACHE/run-demo" down --name testbed-intel`).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
t0=$SECONDS
bash scripts/bootstrap.sh
export PATH="$here/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$here/.cache/collections"
export ANSIBLE_NOCOLOR=1 ANSIBLE_HOST_KEY_CHECKING=False
export FLEETGPU_TESTBED_CACHE=${FLEETGPU_TESTBED_CACHE:-/var/cache/fleetgpu-testbed}
export FLEETGPU_TESTBED_RUN="$FLEETGPU_TESTBED_CACHE/run-demo"
host=testbed-intel
inv="$FLEETGPU_TESTBED_RUN/$host.inventory.yml"
launcher=(python3 tests/testbed/launch.py)

stop_host() {
  if [ "${FLEETGPU_DEMO_KEEP:-0}" != 1 ]; then
    "${launcher[@]}" sweep >/dev/null 2>&1 || true
  fi
}
trap stop_host EXIT
trap 'exit 130' INT TERM HUP

echo "== test-host image"
t=$SECONDS
timeout 2400 bash tests/testbed/build_image.sh >/dev/null
image_s=$((SECONDS - t))
echo "== collection"
bash scripts/install-collection.sh
echo "== booting the test host ($host: Intel CPU + IOMMU, boot GPU, GPU + HDMI audio, AMD-vendor GPU)"
t=$SECONDS
timeout 600 "${launcher[@]}" up --name "$host" --topology intel --inventory "$inv" --group gpu_hosts
boot_s=$((SECONDS - t))
boots_before=$("${launcher[@]}" ssh --name "$host" -- wc -l /var/lib/fleetgpu-testbed/boots | cut -d' ' -f1)
# A VM for the GPU: libvirt_gpu attaches to domains that exist.
"${launcher[@]}" ssh --name "$host" -- "virsh -q -c qemu:///system dominfo gpu-vm >/dev/null 2>&1 || \
  virsh -q -c qemu:///system define /dev/stdin >/dev/null" < molecule/shared/files/gpu-vm.xml

echo "== playbooks/site.yml"
t=$SECONDS
timeout 1800 ansible-playbook -i inventories/testbed -i "$inv" playbooks/site.yml
site_s=$((SECONDS - t))

echo "== summary"
# The ad-hoc output of the minimal callback: "<host> | SUCCESS => {module result as JSON}".
facts=$(ANSIBLE_STDOUT_CALLBACK=ansible.builtin.minimal timeout 300 \
  ansible gpu_hosts -i inventories/testbed -i "$inv" -m fleetgpu.passthrough.gpu_facts)
domain_xml=$("${launcher[@]}" ssh --name "$host" -- virsh -c qemu:///system dumpxml --inactive gpu-vm)
boots_after=$("${launcher[@]}" ssh --name "$host" -- wc -l /var/lib/fleetgpu-testbed/boots | cut -d' ' -f1)
FACTS="$facts" DOMAIN_XML="$domain_xml" python3 - "$host" "$((boots_after - boots_before))" \
  "$image_s" "$boot_s" "$site_s" "$((SECONDS - t0))" <<'EOF'
import json, os, re, sys
host, reboots, image_s, boot_s, site_s, total_s = sys.argv[1:]
out = os.environ['FACTS']
head = out.find(host + ' | ')
status, sep, _ = out[head:].partition(' => ')
if head < 0 or not sep or 'SUCCESS' not in status:
    sys.exit('gpu_facts failed on %s: %s' % (host, out[:2000]))
res = json.JSONDecoder().raw_decode(out, head + len(status) + len(sep))[0]
gpus = res['ansible_facts']['gpu_passthrough']['gpus']
print('GPUs found on %s: %d' % (host, len(gpus)))
for g in gpus:
    print('  %s %s %-28s driver=%-10s state=%s' % (g['address'], g['vendor_device'], g['class_name'],
                                                   g['driver'], g['state']))
    for m in g.get('companions', []):
        print('    + %s %s:%s %-24s driver=%s' % (m['address'], m['vendor_id'], m['device_id'], m['kind'], m['driver']))
bound = [g['address'] for g in gpus if g['driver'] == 'vfio-pci']
bound += [m['address'] for g in gpus for m in g.get('companions', []) if m['driver'] == 'vfio-pci']
print('Devices bound to vfio-pci: %s' % (', '.join(sorted(bound)) or 'none'))
srcs = re.findall(r"<hostdev .*?<source>\s*<address domain='(0x[0-9a-f]+)' bus='(0x[0-9a-f]+)' slot='(0x[0-9a-f]+)' function='(0x[0-9a-f]+)'",
                  os.environ['DOMAIN_XML'], re.S)
held = ['%04x:%02x:%02x.%x' % tuple(int(x, 16) for x in s) for s in srcs]
print('VM gpu-vm holds: %s' % (', '.join(held) or 'nothing'))
print('Reboots during the job: %s' % reboots)
print('Time: image %ss, boot %ss, site.yml %ss, total %ss' % (image_s, boot_s, site_s, total_s))
EOF
