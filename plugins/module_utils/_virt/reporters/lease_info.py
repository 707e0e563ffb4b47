# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lease facts of a host: its lock manager configuration and every guest's leases, held or not, by whom.

``unleased_running`` lists running guests exposed to a split brain: a read-write disk no lease covers, or a
lease the guest should hold that this host's lock manager (virtlockd, or sanlock) does not hold. With sanlock
each lease's holder is named by host (``holder_host``), and ``lock_manager.sanlock`` shows this host's daemon:
its host_id and the hosts of its lockspaces. A shareable disk is locked shared (``lock: shared``): this host's
virtlockd must hold a shared lock on it, which it keeps for every guest here sharing the disk (``sharers``);
another holder's shared lock is no conflict.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import CheckpointRecorder
from ansible_collections.lockstep.virt.plugins.module_utils._virt.handoff_marker import describe_handoff, marker_in
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    describe_holder,
    public_lease,
    read_lock_config,
    rw_disks_without_lease,
    sanlock_probe_for,
    virtlockd_pids,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import Lifecycle, is_active, state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, read_xml, select

LEASE_INFO_ARGUMENT_SPEC = {
    "names": {"type": "list", "elements": "str", "aliases": ["name"]},
}


class LeaseInfoReporter:
    def __init__(self, conn, params, read_config=read_lock_config):
        self.conn = conn
        self.params = params
        self.config = read_config(conn.profile, local=conn.local)

    def _domains(self):
        names = self.params.get("names")
        if not names:
            return select(self.conn, DOMAIN, context="cannot list domains")
        return [dom for name in names for dom in select(self.conn, DOMAIN, name)]

    def _sanlock(self, cfg):
        """This host's sanlock daemon: its name, the lockspaces it joined (with its host_id in each) and the
        hosts named in each lockspace's delta lease records; null fields when the daemon does not answer."""
        probe = sanlock_probe_for(cfg, host_name=self.conn.hostname)
        status = probe.status()
        lockspaces = []
        for ls in (status or {}).get("lockspaces", []):
            hosts = probe.host_names(ls["lockspace"])
            lockspaces.append(
                {
                    "name": ls["lockspace"],
                    "host_id": ls["host_id"],
                    "path": ls["path"],
                    "offset": ls["offset"],
                    "hosts": [{"host_id": hid, "host": hosts[hid]} for hid in sorted(hosts)],
                }
            )
        return {
            "host_id": cfg.host_id,
            "daemon": status["daemon"] if status else None,
            "answers": status is not None,
            "lockspaces": lockspaces,
            "errors": probe.errors,
        }

    def run(self):
        cfg = self.config
        lc = Lifecycle(self.conn, CheckpointRecorder(host=self.conn.hostname), cfg)
        guests = []
        unleased = []
        missing = []
        found = set()
        for dom in self._domains():
            name = dom.name()
            active = is_active(dom)
            probed = lc.probe(dom, inactive=not active)
            leases = [public_lease(r) for r in probed]
            state = state_name(dom)
            marker = marker_in(read_xml(dom, DOMAIN, inactive=not active))
            guests.append(
                {
                    "name": name,
                    "state": state,
                    "leases": leases,
                    "handoff": dict(marker, note=describe_handoff(state, marker)) if marker else None,
                }
            )
            found.add(name)
            if state != "running":
                continue
            reasons = []
            for r in rw_disks_without_lease(probed):
                reasons.append("read-write disk {} ({}) has no lease".format(r["disk"], r["path"]))
            if cfg.probeable and cfg.manager == "sanlock":
                for r in probed:
                    if r.get("resource") and not r.get("held_here") and not r.get("shared"):
                        reasons.append(
                            "{} {} not held by this host's sanlock ({})".format(
                                r["kind"], r.get("key") or r.get("disk"), describe_holder(r)
                            )
                        )
            elif cfg.probeable:
                for r in probed:
                    if not r.get("resource"):
                        continue
                    if r.get("shared") and r.get("held_here") and r.get("lock") != "shared":
                        reasons.append(
                            "shareable disk {} is locked exclusively, not shared".format(r.get("disk") or r["path"])
                        )
                    elif not r.get("held_here"):
                        reasons.append(
                            "{}{} {} not held by this host's virtlockd ({})".format(
                                "shareable " if r.get("shared") else "",
                                r["kind"],
                                r.get("key") or r.get("disk"),
                                "{}held by pid {}".format(
                                    "shared, " if r.get("lock") == "shared" else "", r["holder_pid"]
                                )
                                if r.get("held")
                                else "not held",
                            )
                        )
            if reasons:
                unleased.append({"name": name, "reasons": reasons})
        if self.params.get("names"):
            missing = [n for n in self.params["names"] if n not in found]
        dirs = (cfg.file_lockspace_dir, cfg.lvm_lockspace_dir, cfg.scsi_lockspace_dir, cfg.disk_lease_dir)
        lockspaces = sorted(
            set(d for d in dirs if d) | set(r["lockspace"] for g in guests for r in g["leases"] if r.get("lockspace"))
        )
        lock_manager = cfg.to_dict()
        lock_manager["enabled"] = cfg.enabled
        lock_manager["probeable"] = cfg.probeable
        lock_manager["lockspace_dirs"] = lockspaces
        lock_manager["virtlockd_pids"] = sorted(virtlockd_pids()) if cfg.probeable and cfg.manager == "lockd" else []
        lock_manager["sanlock"] = self._sanlock(cfg) if cfg.probeable and cfg.manager == "sanlock" else None
        return {
            "changed": False,
            "host": self.conn.hostname,
            "lock_manager": lock_manager,
            "guests": guests,
            "unleased_running": unleased,
            "missing": missing,
        }
