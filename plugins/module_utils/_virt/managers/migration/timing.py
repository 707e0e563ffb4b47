# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Timing: ``downtime_ms`` and ``lease_gap_ms`` from lifecycle events seen on both ends, else null; the
completed job's own figures from libvirt."""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import ms_between
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup


class TimingPhase:
    def _job_stats(self):
        """libvirt's completed-job statistics, the destination's first (kept for later readers)."""
        flags = 0
        if libvirt is not None:
            flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | getattr(libvirt, "VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED", 0)
        for conn in (self.dest, self.src):
            try:
                dom = lookup(conn, DOMAIN, self.name)
                if dom is None:
                    continue
                stats = dom.jobStats(flags)
            except Exception:
                continue
            if stats and stats.get("time_elapsed") is not None:
                return stats
        return {}

    def _timing(self, result):
        """Source SUSPENDED (its vCPUs' final stop) -> destination RESUMED, both lifecycle events.

        ``downtime_ms`` is that pause as the guest sees it. ``lease_gap_ms`` is the same interval when the
        driver releases at the stop and acquires at the resume (QEMU); for a driver that takes leases at
        creation (libxl) no event marks the acquire, so it stays null. Without both events both are null.
        """
        ev = self.events
        if ev is None or not getattr(ev, "available", False):
            return
        result["events"] = ev.as_list()
        stopped = ev.first("source", "suspended", after=self.marks.get("begin"))
        resumed = ev.first("dest", "resumed", after=self.marks.get("send_start"))
        if stopped is None or resumed is None:
            return
        result["downtime_ms"] = ms_between(stopped["ts"], resumed["ts"])
        if not self.src.profile.paused_guest_holds_leases:
            result["lease_gap_ms"] = result["downtime_ms"]
        result["timing_source"] = "events"
