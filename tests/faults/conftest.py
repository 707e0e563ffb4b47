"""Fault and bad-input tests on the lab: the integration fixtures (``lab``, ``guest_name``) and helpers
(tests/integration/labkit.py, migrate_helpers.py) are shared with tests/integration."""

import importlib.util
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
COLLECTIONS = os.path.join(os.path.dirname(os.path.dirname(HERE)), ".build", "collections")
if COLLECTIONS not in sys.path:  # `make collection` links the checkout there
    sys.path.insert(0, COLLECTIONS)

_spec = importlib.util.spec_from_file_location("integration_conftest", os.path.join(INTEGRATION, "conftest.py"))
_integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integration)

lab = _integration.lab
guest_name = _integration.guest_name


MATRIX = []


@pytest.fixture(scope="session")
def matrix():
    """Outcomes of the fault cells run in this session (the table at the end)."""
    return MATRIX


def pytest_terminal_summary(terminalreporter):
    if not MATRIX:
        return
    if os.environ.get("LOCKSTEP_FAULTS_REPORT"):  # every outcome, as JSON
        with open(os.environ["LOCKSTEP_FAULTS_REPORT"], "w") as fh:
            json.dump(MATRIX, fh, indent=1, default=str)
    rows = {}
    for o in MATRIX:
        row = rows.setdefault(o["fault"], {"injected": 0, "survived": 0, "lost": 0, "phases": []})
        if o.get("trials"):  # counted per trial
            row["injected"], row["survived"], row["lost"] = o["injected"], o["survived"], o["lost"]
            row["phases"].append("{} trials".format(o["injected"]))
            continue
        row["injected"] += 1 if o["injected"] else 0
        row["survived"] += 1 if o["survived"] else 0
        row["lost"] += 1 if o["lost"] else 0
        row["phases"].append("{}:{}".format(o["phase"], "ok" if o["survived"] else ("LOST" if o["lost"] else "FAIL")))
    w = terminalreporter.write_line
    w("")
    w("Fault matrix (lock manager: {})".format(_integration.lab_lock_manager() or "lab down"))
    w("| fault | injected | survived | lost | phases |")
    w("| --- | ---: | ---: | ---: | --- |")
    for fault, r in rows.items():
        w("| {} | {} | {} | {} | {} |".format(fault, r["injected"], r["survived"], r["lost"], ", ".join(r["phases"])))
    total = [sum(r[k] for r in rows.values()) for k in ("injected", "survived", "lost")]
    w("| total | {} | {} | {} | |".format(*total))
    for o in MATRIX:
        said = o["problems"] + ([] if o.get("trials") else o["notes"])
        if said:
            w("- {} @ {}: {}".format(o["fault"], o["phase"], "; ".join(said)))
