# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Records every task result as one JSON line, so integration tests read results, not logs."""

from __future__ import annotations

DOCUMENTATION = """
name: lab_record
type: aggregate
short_description: write each task result as a JSON line to the file named by LAB_RECORD_FILE
description:
  - Test helper of the lockstep.virt integration suite.
requirements:
  - LAB_RECORD_FILE set in the environment
"""

import json
import os

from ansible.plugins.callback import CallbackBase


def _field(result, public, private):
    # ansible-core 2.19 added public accessors; older cores only have the private ones
    value = getattr(result, public, None)
    return value if value is not None else getattr(result, private)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "lab_record"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        path = os.environ.get("LAB_RECORD_FILE")
        if not path:
            return
        task = _field(result, "task", "_task")
        host = _field(result, "host", "_host")
        data = _field(result, "result", "_result")
        entry = {
            "host": host.get_name(),
            "task": task.get_name(),
            "action": task.action,
            "status": status,
            "result": data,
        }
        with open(path, "a") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result, **kwargs):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._record(result, "unreachable")
