"""Two controllers migrate the same guest at once, trial after trial, the direction alternating: one run
moves it, the other fails cleanly - in the handoff (libvirt refuses a second migration job) or before it (the
module sees the incoming copy and refuses to touch a guest on both hosts) - or, if it only got to look once
the first was done, finds nothing to do;
never two running copies nor two lease holders (both hosts' states and the lease holders are sampled
throughout).
"""

import os
import uuid

from harness import PHASE_WORDS, Run, Watch, migrate_args
from migrate_helpers import Guest

TRIALS = int(os.environ.get("LOCKSTEP_FAULT_TRIALS", "20"))


def test_two_controllers_migrate_the_same_guest(lab, matrix):
    guest = Guest(lab, "cc-" + uuid.uuid4().hex[:8], "hv1")
    tally = {"fault": "two controllers at once", "phase": "all", "injected": True, "problems": [], "notes": []}
    outcomes = []
    try:
        src, dst = "hv1", "hv2"
        for trial in range(TRIALS):
            with Watch(lab, guest) as watch:
                runs = [Run(lab, src, migrate_args(guest, dst)), Run(lab, src, migrate_args(guest, dst))]
                results = [r.wait() for r in runs]
            problems = []
            if any(r is None for r in results):
                problems.append("a run ended without a result")
            else:
                moved = [r for r in results if not r["failed"] and r["changed"]]
                other = [r for r in results if r not in moved]
                if len(moved) != 1:
                    problems.append("{} runs moved the guest".format(len(moved)))
                for r in other:
                    msg = r.get("msg") or ""
                    if r["failed"] and (not msg or "Traceback" in msg or "Module result deserialization" in msg):
                        problems.append("the other run did not fail cleanly: {!r}".format(msg[:200]))
                    if r["failed"] and not any(msg.startswith(w + ":") for w in PHASE_WORDS):
                        tally["notes"].append("the other run refused before the handoff: {}".format(msg[:90]))
                    if not r["failed"] and r["changed"]:
                        problems.append("the other run also reports a move")
                    tally["notes"].append("trial {}: the other run {}".format(trial, msg[:90] or "found nothing to do"))
            if watch.two_running():
                problems.append("two running copies: {}".format(watch.two_running()[0]))
            if watch.two_holders():
                problems.append("two lease holders: {}".format(watch.two_holders()[0]))
            states = dict((h, lab.domain_state(h, guest.name)) for h in ("hv1", "hv2"))
            if states[dst] != "running" or states[src] not in (None, "shut off"):
                problems.append("after the trial: {}".format(states))
            if guest.holders() != [lab.virtlockd_pid(dst)] * 2 and states[dst] == "running":
                problems.append("leases {} with the guest on {}".format(guest.holders(), dst))
            outcomes.append(problems)
            if states[dst] == "running":
                src, dst = dst, src
    finally:
        guest.remove()
    tally["problems"] = ["trial {}: {}".format(i, "; ".join(p)) for i, p in enumerate(outcomes) if p]
    tally["injected"] = len(outcomes)
    tally["survived"] = sum(1 for p in outcomes if not p)
    tally["lost"] = sum(1 for p in outcomes if any("runs nowhere" in x or "two running" in x for x in p))
    tally["trials"] = True
    matrix.append(tally)
    assert not tally["problems"], tally["problems"]
