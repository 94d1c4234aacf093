# -*- coding: utf-8 -*-
# Copyright: (c) 2026, fleetgpu.passthrough contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one root of every error the collection raises on purpose.

PRIVATE to the fleetgpu.passthrough collection: not a public API, may change
without notice.

Each family of errors (sysfs, bootloader, journal, libvirt...) derives from
:class:`FleetGpuError`, so a module catches exactly one class and turns it into
``fail_json``: the message is the error's text, ``details`` go into the result
as they are. Errors that also say what kind of Python error they are
(``ValueError``, ``LookupError``) keep that base as a second parent.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional


class FleetGpuError(Exception):
    """An error with a message for the user and optional structured ``details`` for the result."""

    def __init__(self, *args: object, details: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(*args)
        self.details: dict[str, Any] = dict(details or {})
        self.context: list[str] = []

    def add_context(self, where: str) -> 'FleetGpuError':
        """Say where the error happened (a file, a device); shown before the message. Returns the error."""
        self.context.insert(0, where)
        return self

    def __str__(self) -> str:
        text = super().__str__()
        return ': '.join(self.context + [text]) if self.context else text

    def result(self) -> dict[str, Any]:
        """What a module passes to ``fail_json``: ``msg`` and the details."""
        out: dict[str, Any] = dict(self.details)
        out['msg'] = str(self)
        return out
