# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Evidence of how far an interrupted migration got, read from libvirt and never inferred from a lease.

A lease says who may *run* the guest now; it says nothing about whether a paused copy is current. After a
lost Finish reply libvirt's peer-to-peer Confirm runs cancelled and resumes the source, while the
destination keeps a whole paused copy that holds nothing; after the source libvirtd dies between Finish
and Confirm the source stays paused although the destination may have run. So a paused copy is resumed
only on evidence that nothing ran the guest after it was taken:

- the source finished the migration: its domain is shut off with reason *migrated*, or (when the source's
  definition is gone, ``UNDEFINE_SOURCE``) the last thing libvirt wrote in the guest's QEMU log on the source
  since the handoff began is ``shutting down, reason=migrated``;
- the destination never finished receiving: with ``PERSIST_DEST`` a destination that completed Finish keeps
  a definition, so no definition at all there means its copy never ran.

Everything else (a source shut off for another reason, an unreadable log, a post-copy that failed) is not
evidence, and the caller refuses with what it saw.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone

from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import STATE_NAMES

QEMU_LOG_DIR = "/var/log/libvirt/qemu"
# qemuProcessStop and qemuProcessLaunch write these lines into /var/log/libvirt/qemu/<name>.log
_LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\+0000: (?:(shutting down), reason=(\w+)|(starting up) )"
)

# state reasons by libvirt's own names (virDomain*Reason), for messages and decisions
SHUTOFF_REASONS = {
    0: "unknown",
    1: "shutdown",
    2: "destroyed",
    3: "crashed",
    4: "migrated",
    5: "saved",
    6: "failed",
    7: "from snapshot",
    8: "daemon",
}
PAUSED_REASONS = {
    0: "unknown",
    1: "user",
    2: "migration",
    3: "save",
    4: "dump",
    5: "I/O error",
    6: "watchdog",
    7: "from snapshot",
    8: "shutting down",
    9: "snapshot",
    10: "crashed",
    11: "starting up",
    12: "post-copy",
    13: "post-copy failed",
}
RUNNING_REASONS = {10: "post-copy", 11: "post-copy failed"}
POSTCOPY_REASONS = ("post-copy", "post-copy failed")


class Copy:
    """What one host has of the guest: ``state`` (absent, running, paused, shutoff, ...), its ``reason``
    in libvirt's words, the handoff ``marker`` (dict or None) and whether a migration job runs there."""

    def __init__(self, host, state="absent", reason=None, marker=None, job=False, active=None):
        self.host = host
        self.state = state
        self.reason = reason
        self.marker = marker
        self.job = job
        self.active = state in ("running", "paused") if active is None else active

    def describe(self):
        if self.state == "absent":
            return "{} has no definition of it".format(self.host)
        return "{} has it {}{}".format(self.host, self.state, " ({})".format(self.reason) if self.reason else "")


def reason_name(state, reason):
    """libvirt's reason for ``state`` in words (virDomainState: 1 running, 3 paused, 5 shut off)."""
    names = {1: RUNNING_REASONS, 3: PAUSED_REASONS, 5: SHUTOFF_REASONS}.get(state)
    if names is None:
        return None
    return names.get(reason, None if state == 1 else "unknown")


def read_copy(dom, host, read_marker, job_active):
    """The Copy of ``dom`` (None: absent) on ``host``; ``read_marker(dom)`` and ``job_active(dom)`` read the
    marker and the job."""
    if dom is None:
        return Copy(host)
    state, reason = dom.state()
    active = bool(dom.isActive())
    return Copy(
        host,
        STATE_NAMES.get(state, "unknown"),
        reason_name(state, reason),
        read_marker(dom),
        job_active(dom) if active else False,
        active,
    )


def _parse_marker_time(text):
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None


def last_stop_in_log(name, since, log_dir=QEMU_LOG_DIR):
    """What the source's QEMU log says happened last to ``name`` since ``since`` (the marker's ``started``).

    Returns ``(what, reason, at)`` with what = "stopped" or "started", or None when the log cannot be read
    or holds nothing since then.
    """
    start = _parse_marker_time(since)
    if start is None:
        return None
    try:
        with open(os.path.join(log_dir, name + ".log"), errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    last = None
    for line in lines:
        m = _LOG_LINE.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1)[:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
        if at < start:
            continue
        last = ("stopped", m.group(3), at) if m.group(2) else ("started", None, at)
    return last


class Verdict:
    """What reconcile may do, and the evidence it used (``evidence`` goes into the checkpoint's check)."""

    def __init__(self, action, evidence, reason=None):
        self.action = action
        self.evidence = evidence
        self.reason = reason  # for REFUSE: what is missing, in words

    def __repr__(self):
        return "Verdict({!r}, {!r})".format(self.action, self.evidence)


# reconcile's actions
GO_ON = "go_on"  # nothing left by a run here: the migration (or the already-there check) goes on
RESUME_DEST = "resume_dest"
COMPLETE = "complete"  # runs on the destination: only the marker is left
STOP_STALE_SOURCE = "stop_stale_source"
RESUME_SOURCE = "resume_source"
STOP_STALE_DEST = "stop_stale_dest"
POSTCOPY_FAILED = "postcopy_failed"
REFUSE = "refuse"


def source_finished(src, log_stop):
    """(True/False/None, words): whether the source provably finished the migration.

    ``src``: the source's Copy; ``log_stop``: :func:`last_stop_in_log`'s answer (used when the source's
    definition is gone).
    """
    if src.state == "shutoff":
        if src.reason == "migrated":
            return True, "{} shut it off with reason migrated".format(src.host)
        return False, "{} shut it off with reason {}, not migrated".format(src.host, src.reason)
    if src.state == "absent":
        if log_stop is None:
            return None, "{} has no definition left and its QEMU log says nothing since the handoff began".format(
                src.host
            )
        what, reason, at = log_stop
        when = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if what == "stopped" and reason == "migrated":
            return True, "{}'s QEMU log: shutting down, reason=migrated at {}".format(src.host, when)
        if what == "stopped":
            return False, "{}'s QEMU log: shutting down, reason={} at {}".format(src.host, reason, when)
        return False, "{}'s QEMU log: the guest started again there at {}".format(src.host, when)
    return None, src.describe()


def decide(src, dest, log_stop=None):
    """The Verdict for a guest found as ``src``/``dest`` (Copy objects) at the start of a run.

    ``log_stop`` is read only for a paused destination copy whose source has no definition left.
    """
    marker = dest.marker or src.marker
    if not src.active and not dest.active:
        return Verdict(GO_ON, "not active on either host")
    for copy in (dest, src):
        if copy.active and copy.reason in POSTCOPY_REASONS and marker is not None:
            return Verdict(
                POSTCOPY_FAILED,
                "{}; {}".format(dest.describe(), src.describe()),
                "a post-copy migration did not finish: part of the guest's memory may be only on the other host",
            )
    if src.state == "paused" and dest.state == "paused" and marker is not None:
        # the source stopped for the send and a copy sits on the destination: the source's copy is whole,
        # the destination's may be (Finish done) or not, and neither state tells whether one of them ran
        # since - a paused copy is never proof of being current
        return Verdict(
            REFUSE,
            "{}; {}".format(src.describe(), dest.describe()),
            "both hosts hold a paused copy of a handoff that did not finish: nothing proves which one is current",
        )
    if dest.active and not src.active:
        if dest.marker is None:
            return Verdict(GO_ON, "no handoff marker on {}".format(dest.host))
        if dest.state == "running":
            return Verdict(COMPLETE, "{}; {}".format(dest.describe(), src.describe()))
        if dest.state != "paused" or dest.marker.get("was") == "paused":
            return Verdict(COMPLETE, "{} was paused before the handoff: {}".format(dest.host, dest.describe()))
        finished, words = source_finished(src, log_stop)
        if finished:
            return Verdict(RESUME_DEST, words)
        return Verdict(
            REFUSE,
            "{}; {}".format(dest.describe(), words),
            "nothing proves that the guest did not run on {} after {}'s copy was taken".format(src.host, dest.host),
        )
    if dest.state == "running" and src.state == "paused":
        return Verdict(STOP_STALE_SOURCE, "{}; {}".format(dest.describe(), src.describe()))
    if src.state == "paused" and not dest.active and src.marker is not None:
        if src.marker.get("was") == "paused":
            return Verdict(GO_ON, "it was paused on {} before the handoff".format(src.host))
        if dest.state == "absent" and src.marker.get("persist") == "1":
            return Verdict(
                RESUME_SOURCE,
                "{}; the send used PERSIST_DEST, so a destination that had finished receiving would keep a "
                "definition: its copy never ran".format(dest.describe()),
            )
        return Verdict(
            REFUSE,
            "{}; {}".format(src.describe(), dest.describe()),
            "{} may have run the guest after the send{}".format(
                dest.host,
                " (it keeps a definition: it finished receiving)"
                if dest.state != "absent"
                else " (the handoff did not make it persistent there, so its copy may have run and gone)",
            ),
        )
    if src.state == "running" and dest.state == "paused" and dest.marker is not None:
        return Verdict(STOP_STALE_DEST, "{}; {}".format(src.describe(), dest.describe()))
    return Verdict(GO_ON, "{}; {}".format(src.describe(), dest.describe()))
