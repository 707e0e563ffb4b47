# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Figures of a migration: libvirt's job statistics, and the pause and lease gap measured from events."""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.events import SUSPENDED_MIGRATED


def job_summary(stats):
    """The job figures returned to users from libvirt's completed-job statistics."""
    if not stats:
        return {}
    return {
        "elapsed_ms": stats.get("time_elapsed"),
        "downtime_ms": stats.get("downtime"),
        "data_total": stats.get("data_total"),
        "data_processed": stats.get("data_processed"),
        "memory_iterations": stats.get("memory_iteration"),
        "memory_bps": stats.get("memory_bps"),
        "setup_ms": stats.get("setup_time"),
    }


def ms_between(start, end):
    if start is None or end is None:
        return None
    return max(0, int(round((end - start) * 1000)))


def event_timing(events, released_at=None):
    """``downtime_ms`` and ``lease_gap_ms`` from lifecycle events on both ends, or None each.

    downtime: the source's vCPUs stopped for the migration (SUSPENDED, migrated) until the destination's
    RESUMED. lease gap: from when the source let its leases go (``released_at``, a monotonic time the
    caller took from an event; with QEMU that is the same SUSPENDED event) until the destination's RESUMED,
    when its lock manager took them. Never a fallback to the module's own clock.
    """
    out = {"downtime_ms": None, "lease_gap_ms": None, "timing_source": None}
    if events is None or not events.available:
        return out
    suspended = events.first("source", "suspended", SUSPENDED_MIGRATED) or events.first("source", "suspended")
    resumed = events.first("dest", "resumed", after=suspended["t"] if suspended else None)
    if suspended is not None and resumed is not None:
        out["downtime_ms"] = ms_between(suspended["t"], resumed["t"])
        out["timing_source"] = "events"
    if released_at is not None and resumed is not None:
        out["lease_gap_ms"] = ms_between(released_at, resumed["t"])
        out["timing_source"] = "events"
    return out
