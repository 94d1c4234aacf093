"""Print the controller-side placement cost at fleet scale: 4,000 VM requests over 1,000 hosts x 8 GPUs.

Usage: .venv/bin/python bench/bench_placement.py [--hosts 1000] [--gpus 8] [--vms 4000] [--policy spread]
                                                 [--mdev-parents 0] [--profile-vms 0]

The hosts are synthetic gpu_facts results (two GPU models, two NUMA nodes per host, a boot GPU,
one GPU in four already on vfio-pci) and synthetic libvirt results (a tenth of the VMs already
hold their GPUs, so the "keep existing assignments" path is exercised).  With --mdev-parents N
each host also has N mdev parents (vGPU-capable GPUs: two types that share the parent, 4 and 2
instances), and --profile-vms M adds M requests for 1 or 2 mediated devices by profile (by type
id or human name; a tenth already hold theirs).  Prints the time and the peak Python memory
(tracemalloc) of validation + placement, and of building and rendering the report.  Figures are
printed, never asserted.
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

# the collection from this checkout on sys.path, before it is imported
import _pyroot  # noqa: F401  # pylint: disable=unused-import

from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends import fleet_plan as fleet  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils import _fleet_report as report  # noqa: E402
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._partition import stable_mdev_uuid  # noqa: E402

KINDS = [('10de', '20b2', 'GA100 [A100 SXM4 80GB]'), ('10de', '2330', 'GH100 [H100 SXM5 80GB]')]


def mdev_parents(hosts: dict[str, fleet.HostInput], parents: int, profile_vms: int, requests: list[dict]) -> None:
    """N vGPU parents per host (types nvidia-63 "GRID T4-4Q" x4 and nvidia-64 "GRID T4-8Q" x2, one type per parent)
    and ``profile_vms`` requests by profile; every tenth of them already holds one mdev (found by its UUID)."""
    names = sorted(hosts)
    for name in names:
        facts = hosts[name].facts
        assert facts is not None
        facts['mdev_parents'] = [
            {'parent': '0000:%02x:00.0' % (0x90 + p), 'mdevs': [],
             'types': [{'type': 'nvidia-63', 'type_name': 'GRID T4-4Q', 'available_instances': 4},
                       {'type': 'nvidia-64', 'type_name': 'GRID T4-8Q', 'available_instances': 2}]}
            for p in range(parents)]
    for v in range(profile_vms):
        vm = 'vdi%05d' % v
        profile = 'GRID T4-4Q' if v % 3 else 'nvidia-64'
        requests.append({'name': vm, 'gpus': [{'profile': profile, 'count': 1 + v % 2}],
                         'domain_xml': '<domain type="kvm"><name>%s</name></domain>' % vm})
        if v % 10 == 0 and parents:
            facts = hosts[names[(v // 10) % len(names)]].facts
            assert facts is not None
            parent = facts['mdev_parents'][0]
            tid = 'nvidia-63' if v % 3 else 'nvidia-64'
            if all(m['type'] == tid for m in parent['mdevs']):
                parent['mdevs'].append({'uuid': stable_mdev_uuid(parent['parent'], tid, '%s-1' % vm), 'type': tid,
                                        'type_name': None, 'parent': parent['parent'], 'held_by': None})
                for t in parent['types']:
                    t['available_instances'] = max(0, t['available_instances'] - 1) if t['type'] == tid else 0


def synthetic(hosts: int, gpus: int, vms: int) -> tuple[dict[str, fleet.HostInput], list[dict]]:
    inputs = {}
    held_every = 10
    requests = []
    for h in range(hosts):
        name = 'gpu%04d' % h
        kind = KINDS[h % 2]
        rows = [{'address': '0000:03:00.0', 'vendor_id': '1a03', 'device_id': '2000', 'vendor_device': '1a03:2000',
                 'vendor_name': 'ASPEED', 'device_name': 'ASPEED Graphics Family', 'state': 'boot-vga',
                 'boot_vga': True, 'numa_node': 0, 'driver': 'ast', 'iommu_group': 1,
                 'iommu_group_members': [{'address': '0000:03:00.0'}], 'state_reasons': ['boot']}]
        for g in range(gpus):
            addr = '0000:%02x:00.0' % (0x10 + g * 0x10)
            vfio = g % 4 == 0
            rows.append({'address': addr, 'vendor_id': kind[0], 'device_id': kind[1],
                         'vendor_device': '%s:%s' % kind[:2], 'vendor_name': 'NVIDIA Corporation',
                         'device_name': kind[2], 'subsystem_vendor_id': '10de', 'subsystem_device_id': '1463',
                         'state': 'vfio-ready' if vfio else 'available', 'boot_vga': False,
                         'numa_node': 0 if g < gpus // 2 else 1, 'driver': 'vfio-pci' if vfio else 'nvidia',
                         'iommu_group': 10 + g, 'iommu_group_members': [{'address': addr}], 'state_reasons': []})
        inputs[name] = fleet.HostInput(name=name, facts={'host': {'iommu_enabled': True}, 'gpus': rows},
                                       libvirt={'available': True, 'domains': []})
    for v in range(vms):
        model = 'a100' if v % 2 == 0 else 'h100'
        count = (1, 2, 1, 4)[v % 4] if v % 2 == 0 else (1, 2)[v % 2 == 1 and (v // 2) % 2]
        requests.append({'name': 'vm%05d' % v, 'gpus': [{'model': model, 'count': count}],
                         'numa': ('required', 'preferred', 'any')[v % 3],
                         'domain_xml': '<domain type="kvm"><name>vm%05d</name></domain>' % v})
    # a tenth of the VMs already exist and hold one GPU of their model
    for v in range(0, vms, held_every):
        h = (v // held_every) % hosts
        host = inputs['gpu%04d' % h]
        model_host = KINDS[h % 2]
        want = 'a100' if v % 2 == 0 else 'h100'
        if (want == 'a100') != (model_host[1] == '20b2'):
            continue
        free = [g['address'] for g in host.facts['gpus'][1:]
                if not any(g['address'] in d['hostdevs'] for d in host.libvirt['domains'])]
        if free:
            host.libvirt['domains'].append({'name': 'vm%05d' % v, 'state': 'running', 'active': True,
                                            'persistent': True, 'hostdevs': [free[0]], 'numa_nodes': []})
    return inputs, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--hosts', type=int, default=1000)
    parser.add_argument('--gpus', type=int, default=8)
    parser.add_argument('--vms', type=int, default=4000)
    parser.add_argument('--policy', choices=fleet.POLICIES, default='spread')
    parser.add_argument('--mdev-parents', type=int, default=0, help='vGPU parents per host')
    parser.add_argument('--profile-vms', type=int, default=0, help='requests by mdev profile')
    args = parser.parse_args()

    def synthetic_all() -> tuple[dict[str, fleet.HostInput], list[dict]]:
        hosts, reqs = synthetic(args.hosts, args.gpus, args.vms)
        mdev_parents(hosts, args.mdev_parents, args.profile_vms, reqs)
        return hosts, reqs

    inputs, requests = synthetic_all()
    models_raw = {'a100': {'vendor_id': '10de', 'device_id': '20b2'}, 'h100': {'name': 'GH100 [H100 SXM5 80GB]'}}

    def place() -> fleet.FleetPlan:
        models = fleet.parse_models(models_raw, set(inputs))
        vms = fleet.parse_vms(requests, models, set(inputs))
        return fleet.plan(inputs, models, vms, args.policy, strict=True)

    # time without tracemalloc (it slows allocation-heavy code several times), then memory with it
    t0 = time.perf_counter()
    result = place()
    t1 = time.perf_counter()
    doc = report.build(result, 'place')
    html = report.render_html(doc)
    t2 = time.perf_counter()
    inputs, requests = synthetic_all()
    tracemalloc.start()
    result = place()
    _cur, peak_plan = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    doc = report.build(result, 'place')
    html = report.render_html(doc)
    _cur, peak_report = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    vms = result.vms
    t3 = t2
    t2 = t1
    kept = sum(1 for p in result.placements if p.kept)
    print('fleet: %d hosts x %d GPUs (+ boot GPU), %d VM requests (%d GPUs asked), policy %s'
          % (args.hosts, args.gpus, args.vms, sum(a.count for v in vms for a in v.gpus), args.policy))
    if args.mdev_parents or args.profile_vms:
        mdevs = [x for p in result.placements for x in p.partitions]
        print('mdev parents: %d per host; %d requests by profile; %d mdevs placed (%d kept), %d new'
              % (args.mdev_parents, args.profile_vms, len(mdevs), sum(1 for x in mdevs if x.kept),
                 sum(1 for x in mdevs if not x.kept)))
    print('placed %d VMs (%d kept their existing GPUs), %d could not be placed'
          % (len(result.placements), kept, len(result.unplaced)))
    print('validate + place: %.2f s, peak traced memory %.1f MiB' % (t1 - t0, peak_plan / 2 ** 20))
    print('report build + HTML render: %.2f s, peak traced memory %.1f MiB, HTML %.1f MiB'
          % (t3 - t2, peak_report / 2 ** 20, len(html) / 2 ** 20))


if __name__ == '__main__':
    main()
