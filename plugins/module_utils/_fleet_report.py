# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The fleet report: one JSON document and one self-contained HTML page.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

The HTML has no script, no external style sheet, font or image: it renders
from the file alone, offline.  Every value is escaped.
"""

from __future__ import annotations

import html
import json
import os

from ansible_collections.fleetgpu.passthrough.plugins.module_utils._errors import FleetGpuError
from ansible_collections.fleetgpu.passthrough.plugins.module_utils._files import write_atomic
from ansible_collections.fleetgpu.passthrough.plugins.module_utils.module_backends.fleet_plan import FleetPlan

REPORT_JSON = 'fleet-report.json'
REPORT_HTML = 'fleet-report.html'


class ReportError(FleetGpuError):
    """The report could not be written."""


def _partitions(fleet: FleetPlan, hname: str) -> list[dict]:
    """Every mdev of the host (parent, type, UUID, VM): those the plan creates (placed), those a placed VM keeps or a
    domain holds, running or in its definition (assigned), the others (existing)."""
    rows: dict[str, dict] = {}
    for par in fleet.parents.get(hname, []):
        for m in par.mdevs:
            uuid = str(m.get('uuid')).lower()
            # who holds it: the running domain using it, else the domains whose definitions name it
            vm = m.get('held_by') or ', '.join(m.get('domains') or []) or None
            rows[uuid] = {'parent': par.parent, 'type': m.get('type'), 'type_name': m.get('type_name'), 'uuid': uuid,
                          'vm': vm, 'status': 'assigned' if vm else 'existing'}
    for p in fleet.placements:
        if p.host != hname:
            continue
        for x in p.partitions:
            rows[x.uuid] = {'parent': x.parent, 'type': x.type, 'type_name': x.type_name, 'uuid': x.uuid, 'vm': p.vm.name,
                            'status': 'assigned' if x.kept else 'placed'}
    return [rows[u] for u in sorted(rows, key=lambda u: (str(rows[u]['parent']), str(rows[u]['type']), u))]


def build(fleet: FleetPlan, mode: str) -> dict:
    """The report document (deterministic: same inputs, same bytes)."""
    placed_by_vm = {p.vm.name: p for p in fleet.placements}
    hosts = []
    for hname in sorted(fleet.hosts):
        host = fleet.hosts[hname]
        facts = host.facts if isinstance(host.facts, dict) else {}
        host_raw = facts.get('host')
        hinfo: dict = host_raw if isinstance(host_raw, dict) else {}
        lv: dict = host.libvirt if isinstance(host.libvirt, dict) else {}
        gpus = []
        for g in fleet.gpus.get(hname, []):
            raw = g.raw
            vm = g.vm or (', '.join(g.holders) if g.holders else None)
            if g.vm:
                status = 'placed' if g.vm in placed_by_vm and g.address in placed_by_vm[g.vm].added else 'assigned'
            elif g.holders:
                status = 'assigned'
            elif g.model is not None and g.usable:
                status = 'free'
            elif g.model is None:
                status = 'not in a pool'
            else:
                status = 'refused'
            gpus.append({
                'address': g.address,
                'model': g.model,
                'pci_name': ' '.join(str(n) for n in (raw.get('vendor_name'), raw.get('device_name')) if n) or None,
                'vendor_device': raw.get('vendor_device'),
                'iommu_group': raw.get('iommu_group'),
                'numa_node': raw.get('numa_node'),
                'driver': raw.get('driver'),
                'state': raw.get('state'),
                'vm': vm,
                'status': status,
                'why': g.reason or None,
            })
        hosts.append({
            'name': hname,
            'partitions': _partitions(fleet, hname),
            'mdev_parents': [{'parent': par.parent, 'type': tid, 'type_name': par.types[tid].get('type_name'),
                              'available': par.types[tid].get('available'), 'planned': par.given.get(tid, 0)}
                             for par in fleet.parents.get(hname, []) for tid in sorted(par.types)],
            'status': host.status,
            'message': host.message or None,
            'iommu': (hinfo.get('iommu_type') or 'on') if hinfo.get('iommu_enabled') else ('off' if hinfo else None),
            'kernel': hinfo.get('kernel_release'),
            'libvirt': bool(lv.get('available')) if lv else None,
            'libvirt_error': lv.get('error') if lv else None,
            'domains': [{'name': d.get('name'), 'state': d.get('state'), 'hostdevs': d.get('hostdevs') or []}
                        for d in (lv.get('domains') or []) if isinstance(d, dict)] if lv else [],
            'gpus': gpus,
            'drift': fleet.drift.get(hname, []),
            'problems': list(host.problems),
            'vms': sorted(p.vm.name for p in fleet.placements if p.host == hname),
        })
    models = []
    for name in sorted(fleet.models):
        total = free = assigned = 0
        per_host: dict[str, int] = {}
        for host_gpus in fleet.gpus.values():
            for g in host_gpus:
                if g.model != name:
                    continue
                total += 1
                per_host[g.host] = per_host.get(g.host, 0) + 1
                if g.vm or g.holders:
                    assigned += 1
                elif g.usable:
                    free += 1
        models.append({'name': name, 'identity': fleet.models[name].describe(), 'total': total, 'free': free,
                       'assigned': assigned, 'unusable': total - free - assigned, 'hosts': per_host})
    return {
        'mode': mode,
        'policy': fleet.policy,
        'summary': {
            'hosts': len(fleet.hosts),
            'hosts_ok': sum(1 for h in fleet.hosts.values() if h.status == 'ok'),
            'hosts_failed': sorted(h for h, v in fleet.hosts.items() if v.status == 'failed'),
            'hosts_unreachable': sorted(h for h, v in fleet.hosts.items() if v.status == 'unreachable'),
            'gpus': sum(len(v) for v in fleet.gpus.values()),
            'vms': len(fleet.vms),
            'vms_placed': len(fleet.placements),
            'vms_unplaced': len(fleet.unplaced),
        },
        'models': models,
        'hosts': hosts,
        'placement': fleet.artifact(),
        'unplaced': [{'vm': u.vm.name, 'asks': u.vm.describe(), 'why': u.why,
                      'hosts': [{'host': r.host, 'free': r.free, 'reason': r.reason} for r in u.rejections]}
                     for u in fleet.unplaced],
        'errors': list(fleet.errors),
    }


_CSS = '''
body{font-family:sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0 1em}
th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left;font-size:.9em}
th{background:#eee}
.ok{color:#176317}.bad{color:#a11}.warn{color:#8a5a00}
tr.free td{background:#eef8ee}tr.placed td,tr.assigned td{background:#eef2fb}
tr.refused td{background:#fbeeee}
section.host{border-top:2px solid #888;padding-top:.3em}
'''


def _e(value: object) -> str:
    if value is None:
        return '-'
    return html.escape(str(value), quote=True)


def render_html(doc: dict) -> str:
    s = doc['summary']
    out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           '<title>fleetgpu fleet report</title>', '<style>%s</style></head><body>' % _CSS,
           '<h1>GPU fleet report</h1>',
           '<p id="summary">%d host(s), %d OK, %d failed, %d unreachable; %d GPU(s); %d of %d VM request(s) placed '
           '(policy %s, %s)</p>' % (s['hosts'], s['hosts_ok'], len(s['hosts_failed']), len(s['hosts_unreachable']),
                                    s['gpus'], s['vms_placed'], s['vms'], _e(doc['policy']), _e(doc['mode']))]
    if doc['errors']:
        out.append('<h2>Errors</h2><ul id="errors">%s</ul>' % ''.join('<li class="bad">%s</li>' % _e(e) for e in doc['errors']))
    out.append('<h2>Models</h2><table id="models"><tr><th>model</th><th>identity</th><th>total</th><th>free</th>'
               '<th>assigned</th><th>unusable</th><th>per host</th></tr>')
    for m in doc['models']:
        out.append('<tr class="model" data-model="%s"><td>%s</td><td>%s</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td>'
                   '<td>%s</td></tr>' % (_e(m['name']), _e(m['name']), _e(m['identity']), m['total'], m['free'],
                                         m['assigned'], m['unusable'],
                                         _e(', '.join('%s: %d' % kv for kv in sorted(m['hosts'].items()))) if m['hosts'] else '-'))
    out.append('</table>')
    out.append('<h2>Placement</h2><table id="placement"><tr><th>VM</th><th>host</th><th>model</th><th>devices</th></tr>')
    for p in doc['placement']:
        what = p['model'] if p.get('model') else 'profile %s' % p.get('profile')
        out.append('<tr class="placement"><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>'
                   % (_e(p['vm']), _e(p['host']), _e(what), _e(', '.join(p['devices']))))
    out.append('</table>')
    if doc['unplaced']:
        out.append('<h2 class="bad">Requests that cannot be placed</h2>')
        for u in doc['unplaced']:
            out.append('<p class="bad">VM %s asks for %s: %s</p><table class="unplaced"><tr><th>host</th>'
                       '<th>free GPUs per model</th><th>rejected because</th></tr>' % (_e(u['vm']), _e(u['asks']), _e(u['why'])))
            for r in u['hosts']:
                free = ', '.join('%s: %d' % kv for kv in sorted(r['free'].items())) or '-'
                out.append('<tr><td>%s</td><td>%s</td><td>%s</td></tr>' % (_e(r['host']), _e(free), _e(r['reason'])))
            out.append('</table>')
    out.append('<h2>Hosts</h2>')
    for h in doc['hosts']:
        cls = 'ok' if h['status'] == 'ok' else 'bad'
        out.append('<section class="host" id="host-%s" data-host="%s" data-status="%s"><h3>%s <span class="%s">%s</span></h3>'
                   % (_e(h['name']), _e(h['name']), _e(h['status']), _e(h['name']), cls, _e(h['status'])))
        if h['message']:
            out.append('<p class="bad">%s</p>' % _e(h['message']))
        if h['status'] == 'ok':
            out.append('<p>IOMMU %s; kernel %s; libvirt %s; VMs placed here: %s</p>'
                       % (_e(h['iommu']), _e(h['kernel']),
                          'yes' if h['libvirt'] else 'no (%s)' % _e(h['libvirt_error']),
                          _e(', '.join(h['vms'])) if h['vms'] else 'none'))
            out.append('<table class="gpus"><tr><th>address</th><th>model</th><th>PCI name</th><th>ids</th>'
                       '<th>IOMMU group</th><th>NUMA</th><th>driver</th><th>state</th><th>VM</th><th>pool</th>'
                       '<th>why</th></tr>')
            for g in h['gpus']:
                out.append('<tr class="gpu %s" data-host="%s" data-address="%s"><td>%s</td><td>%s</td><td>%s</td>'
                           '<td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>'
                           % (_e(g['status']).replace(' ', '-'), _e(h['name']), _e(g['address']), _e(g['address']),
                              _e(g['model']), _e(g['pci_name']), _e(g['vendor_device']), _e(g['iommu_group']),
                              _e(g['numa_node']), _e(g['driver']), _e(g['state']), _e(g['vm']), _e(g['status']),
                              _e(g['why'])))
            out.append('</table>')
            if h['mdev_parents'] or h['partitions']:
                out.append('<table class="mdev-parents"><tr><th>mdev parent</th><th>type</th><th>type name</th>'
                           '<th>available</th><th>created by this plan</th></tr>')
                for c in h['mdev_parents']:
                    out.append('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%d</td></tr>'
                               % (_e(c['parent']), _e(c['type']), _e(c['type_name']), _e(c['available']), c['planned']))
                out.append('</table><table class="partitions"><tr><th>parent</th><th>type</th><th>UUID</th><th>VM</th>'
                           '<th>status</th></tr>')
                for x in h['partitions']:
                    out.append('<tr class="partition %s" data-uuid="%s"><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>'
                               % (_e(x['status']), _e(x['uuid']), _e(x['parent']), _e(x['type']), _e(x['uuid']),
                                  _e(x['vm']), _e(x['status'])))
                out.append('</table>')
        for kind, items in (('drift', h['drift']), ('problems', h['problems'])):
            if items:
                out.append('<ul class="%s">%s</ul>' % (kind, ''.join('<li class="warn">%s</li>' % _e(i) for i in items)))
        out.append('</section>')
    out.append('</body></html>')
    return '\n'.join(out) + '\n'


def _write_if_changed(path: str, text: str) -> bool:
    try:
        with open(path, encoding='utf-8') as handle:
            if handle.read() == text:
                return False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ReportError('cannot read %s: %s' % (path, exc)) from None
    try:
        write_atomic(path, text, 0o644)
    except OSError as exc:
        raise ReportError('cannot write %s: %s' % (path, exc)) from None
    return True


def write(doc: dict, directory: str) -> tuple[dict[str, str], bool]:
    """Write both files (each only when its content changed); returns their paths and whether any changed."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ReportError('fleetgpu_report_dir %s cannot be created: %s' % (directory, exc)) from None
    paths = {'json': os.path.join(directory, REPORT_JSON), 'html': os.path.join(directory, REPORT_HTML)}
    changed = _write_if_changed(paths['json'], json.dumps(doc, indent=2, sort_keys=True) + '\n')
    changed = _write_if_changed(paths['html'], render_html(doc)) or changed
    return paths, changed
