"""What the source's QEMU log proves about an interrupted migration (migration/evidence.py).

The log lines are libvirt 9.0's own (qemuProcessLaunch, qemuProcessStop), captured on a lab host.
"""

from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.evidence import (
    Copy,
    decide,
    last_stop_in_log,
    reason_name,
)

START = (
    " package: 9.0.0-4+deb12u2 (Debian), qemu version: 7.2.22Debian 1:7.2+dfsg-7+deb12u18+b3, "
    "kernel: 6.18.44-fc-v1272, hostname: hv1"
)
LOG = """\
2026-12-04 22:37:42.842+0000: starting up libvirt version: 9.0.0,{START}
LC_ALL=C \\
/usr/bin/qemu-system-x86_64 \\
-name guest=demo1,debug-threads=on \\
2026-12-04 22:37:45.669+0000: shutting down, reason=migrated
2026-12-04 22:37:47.859+0000: starting up libvirt version: 9.0.0,{START}
2026-12-04 22:37:47.859+0000: Domain id=2 is tainted: high-privileges
2026-12-04 22:37:48.457+0000: shutting down, reason=destroyed
""".replace("{START}", START)


def write_log(tmp_path, text=LOG):
    (tmp_path / "demo1.log").write_text(text)
    return str(tmp_path)


def test_the_last_event_since_the_handoff_began_counts(tmp_path):
    d = write_log(tmp_path)
    what, reason, at = last_stop_in_log("demo1", "2026-12-04T22:37:40.000Z", log_dir=d)
    assert (what, reason) == ("stopped", "destroyed") and at.second == 48
    what, reason, _at = last_stop_in_log("demo1", "2026-12-04T22:37:43.000Z", log_dir=d)
    assert (what, reason) == ("stopped", "destroyed")


def test_a_migrated_stop_is_evidence_only_when_nothing_came_after(tmp_path):
    d = write_log(tmp_path, LOG.split("2026-12-04 22:37:47.859", maxsplit=1)[0])
    assert last_stop_in_log("demo1", "2026-12-04T22:37:43.000Z", log_dir=d)[:2] == ("stopped", "migrated")
    d = write_log(tmp_path, LOG.split("2026-12-04 22:37:48.457", maxsplit=1)[0])
    assert last_stop_in_log("demo1", "2026-12-04T22:37:43.000Z", log_dir=d)[:2] == ("started", None)


def test_nothing_since_or_no_log_is_no_evidence(tmp_path):
    d = write_log(tmp_path)
    assert last_stop_in_log("demo1", "2026-12-04T23:00:00.000Z", log_dir=d) is None
    assert last_stop_in_log("other", "2026-12-04T22:00:00.000Z", log_dir=d) is None
    assert last_stop_in_log("demo1", "not a time", log_dir=d) is None


def test_reason_names_follow_libvirt():
    assert reason_name(5, 4) == "migrated" and reason_name(3, 2) == "migration"
    assert reason_name(3, 13) == "post-copy failed" and reason_name(1, 11) == "post-copy failed"
    assert reason_name(1, 1) is None


def test_a_paused_destination_is_never_resumed_on_the_absence_of_a_lease_alone():
    marker = {"was": "running", "persist": "1", "started": "2026-12-04T22:37:43.000Z"}
    dest = Copy("hv2", "paused", "user", marker)
    assert decide(Copy("hv1"), dest, None).action == "refuse"
    assert decide(Copy("hv1", "shutoff", "shutdown"), dest).action == "refuse"
    assert decide(Copy("hv1", "shutoff", "migrated"), dest).action == "resume_dest"
    assert decide(Copy("hv1", "running", None, marker), dest).action == "stop_stale_dest"


def test_two_paused_copies_are_refused_whatever_the_reasons():
    # a Finish whose reply was lost with the source left paused: neither copy is proof of being current
    marker = {"was": "running", "persist": "1", "started": "2026-12-04T22:37:43.000Z"}
    for src_reason in ("migration", "user"):
        v = decide(Copy("hv1", "paused", src_reason, marker), Copy("hv2", "paused", "user", marker))
        assert v.action == "refuse" and "paused copy" in v.reason
    v = decide(Copy("hv1", "paused", "migration", None), Copy("hv2", "paused", "user", marker))
    assert v.action == "refuse"
    # without a marker it is no interrupted handoff of this collection's: the run goes on (and refuses later)
    assert decide(Copy("hv1", "paused", "user"), Copy("hv2", "paused", "user")).action == "go_on"
