# Test-only stdout callback: prints one JSON document with every task result and the
# per-host stats, so tests can assert on what a real ansible-playbook run returned.
from __future__ import annotations

import json
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = '''
name: fleetgpu_json
type: stdout
short_description: JSON results for the collection's tests
description: Prints task results and stats as one JSON document at the end of the run.
'''


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'stdout'
    CALLBACK_NAME = 'fleetgpu_json'

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[dict] = []
        self._task_started = time.monotonic()

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._task_started = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._task_started = time.monotonic()

    def _add(self, result, status: str) -> None:
        self.tasks.append({
            'task': result._task.get_name(),
            'action': result._task.action,
            'host': result._host.get_name(),
            'status': status,
            # seconds since the task started (for the benchmarks; no test asserts a time)
            'seconds': round(time.monotonic() - self._task_started, 2),
            'result': self._clean(result._result),
        })

    @staticmethod
    def _clean(res: dict) -> dict:
        return json.loads(json.dumps(res, default=str))

    def v2_runner_on_ok(self, result) -> None:
        self._add(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:
        self._add(result, 'ignored' if ignore_errors else 'failed')

    def v2_runner_on_skipped(self, result) -> None:
        self._add(result, 'skipped')

    def v2_runner_on_unreachable(self, result) -> None:
        self._add(result, 'unreachable')

    def v2_playbook_on_stats(self, stats) -> None:
        hosts = sorted(stats.processed.keys())
        summary = {h: stats.summarize(h) for h in hosts}
        self._display.display(json.dumps({'tasks': self.tasks, 'stats': summary, 'custom': dict(stats.custom)},
                                         default=str))
