# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Preflight: what must hold before anything moves.

The destination has the guest's networks, pools and volumes; its name is free there; the source holds
every lease it should; the destination's lock manager would lease the guest exactly as the source does (the
same lock manager, and the same lease files in the same lockspaces); the convergence ramp fits the guest's
size. Nothing is changed here.
"""

from __future__ import annotations

import os

from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    domain_disks,
    domain_lease_resources,
    rw_disks_without_lease,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.convergence import convergence_ramp
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (
    describe,
    source_keeps,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.snapshot_info import migration_blockers
from ansible_collections.lockstep.virt.plugins.module_utils._virt.units import to_bytes
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, parse_xml


class Preflight:
    """The checks of a migration, recorded in ``run.checks``; reads the run's connections, plan and leases."""

    def __init__(self, run, read_dest_config):
        self.run = run
        self.read_dest_config = read_dest_config  # (destination Connection) -> LockConfig

    def convergence_ramp(self, src_dom, xml):
        """The downtime ramp and timeouts for this guest's size (memory, plus the disks a copy moves)."""
        run = self.run
        root = parse_xml(xml, "domain", "libvirt's domain XML")
        memory = 0
        for el in elements(root, "memory")[:1]:
            memory = to_bytes(int((el.text or "0").strip()), el.get("unit") or "KiB")
        disk_bytes = 0
        if run.params.get("copy_storage") not in (None, "none"):
            for disk in domain_disks(root):
                if disk.get("readonly") or disk.get("shareable") or not disk.get("target"):
                    continue
                try:
                    disk_bytes += src_dom.blockInfo(disk["target"])[1]
                except Exception:
                    pass
        conv_plan = convergence_ramp(run.plan.convergence, memory, disk_bytes, live=run.params.get("live", True))
        run.warnings.extend(conv_plan.pop("warnings"))
        run.plan.convergence_plan = conv_plan

    # ------------------------------------------------------------------ checks
    def _check(self, name, ok, detail):
        self.run.checks.append({"name": name, "ok": bool(ok), "detail": detail})

    def check(self, xml, dest_dom, leases):
        run = self.run
        root = parse_xml(xml, "domain", "libvirt's domain XML")
        if dest_dom is not None:
            try:
                same = dest_dom.UUIDString() == parse_xml(xml, "domain").findtext("uuid")
            except Exception:
                same = False
            self._check(
                "dest_name_free",
                same,
                "{} has a shut-off definition of {}{}".format(
                    run.dest_name, run.name, "" if same else " with another UUID"
                ),
            )
        devices = elements(root, "devices")
        networks, pools, volumes = [], [], []
        if devices:
            for iface in elements(devices[0], "interface"):
                src = elements(iface, "source")
                if iface.get("type") == "network" and src and src[0].get("network"):
                    networks.append(src[0].get("network"))
        for disk in domain_disks(root):
            if disk["pool"]:
                pools.append(disk["pool"])
                volumes.append((disk["pool"], disk["volume"]))
        for net in sorted(set(networks)):
            try:
                active = bool(run.dest.virt.networkLookupByName(net).isActive())
                self._check(
                    "dest_network",
                    active,
                    "network {} on {} is {}".format(net, run.dest_name, "active" if active else "not active"),
                )
            except Exception:
                self._check("dest_network", False, "{} has no network {}".format(run.dest_name, net))
        for pool in sorted(set(pools)):
            try:
                active = bool(run.dest.virt.storagePoolLookupByName(pool).isActive())
                self._check(
                    "dest_pool",
                    active,
                    "storage pool {} on {} is {}".format(pool, run.dest_name, "active" if active else "not active"),
                )
            except Exception:
                self._check("dest_pool", False, "{} has no storage pool {}".format(run.dest_name, pool))
        for pool, volume in sorted(set(volumes)):
            try:
                run.dest.virt.storagePoolLookupByName(pool).storageVolLookupByName(volume)
                self._check("dest_volume", True, "volume {} in pool {} on {}".format(volume, pool, run.dest_name))
            except Exception:
                self._check(
                    "dest_volume",
                    False,
                    "{} does not see volume {} in pool {} (on shared storage, refresh the pool there)".format(
                        run.dest_name, volume, pool
                    ),
                )
        if not run.plan.verify:
            return
        cfg = run.lock_config
        if not cfg.enabled or not cfg.probeable:
            why = (
                "no lock manager is configured for the {} driver".format(run.src.profile.name)
                if not cfg.enabled
                else "leases of {} cannot be probed from here".format(cfg.manager or "?")
            )
            self._check("lock_manager", False, "{}; set lock.verify: false to migrate without verification".format(why))
            return
        unleased = rw_disks_without_lease(self._all_resources(root))
        if unleased and not any(r["kind"] == "lease" for r in run.resources):
            run.warnings.append(
                "{} has read-write disks no lease protects: {}".format(
                    run.name, ", ".join(r["disk"] or "?" for r in unleased)
                )
            )
        self._check_dest_locking(root)
        if run.src_state == "running" or run.src.profile.paused_guest_holds_leases:
            missing = [r for r in leases if not source_keeps(r)]
            self._check(
                "source_holds_leases",
                not missing,
                "all held by {}".format(run.src_name)
                if not missing
                else describe(missing, run.src_name, run.dest_name),
            )

    def _check_dest_locking(self, root):
        """The destination must lease the guest as the source does: read its lock configuration with the same
        reader (over SSH for a remote URI) and compare the lock manager and every lease the guest would take
        there. A destination without a lock manager would run the guest unleased; another lockspace would
        let a second copy elsewhere run beside it."""
        run = self.run
        src_cfg = run.lock_config
        why = None
        try:
            dest_cfg = self.read_dest_config(run.dest)
        except Exception as exc:  # a reader that broke: nothing is known about the destination
            dest_cfg = None
            why = str(exc)
        run.dest_lock_config = dest_cfg
        src, dest = run.src_name, run.dest_name
        if dest_cfg is None or not dest_cfg.readable or dest_cfg.errors:
            reason = why if dest_cfg is None else "; ".join(dest_cfg.errors)
            self._check(
                "dest_lock_manager",
                False,
                "cannot read the lock configuration of {} ({}): it may run {} unleased; set lock.verify: false to "
                "migrate without verification".format(dest, reason, run.name),
            )
            return
        where = dest_cfg.lock_conf or "its driver config"
        if not dest_cfg.enabled:
            self._check(
                "dest_lock_manager",
                False,
                "{} has no lock manager ({} sets no lock_manager) while {} uses {}: {} would run there unleased, "
                "and nothing would stop a second copy of it".format(dest, where, src, src_cfg.manager, run.name),
            )
            return
        if dest_cfg.manager != src_cfg.manager:
            self._check(
                "dest_lock_manager",
                False,
                "{} uses lock manager {} and {} uses {}: their leases do not exclude each other".format(
                    dest, dest_cfg.manager, src, src_cfg.manager
                ),
            )
            return
        if dest_cfg.manager == "sanlock":
            self._check_dest_sanlock(root, src_cfg, dest_cfg, where)
            return
        mine = self._all_resources(root)
        theirs = domain_lease_resources(root, dest_cfg, run.resolve_volume)
        problems = []
        for a, b in zip(mine, theirs):
            name = "{} {}".format(a["kind"], a.get("key") or a.get("disk") or a.get("path"))
            if a["kind"] == "lease":
                known = [d for d in (dest_cfg.file_lockspace_dir, dest_cfg.lvm_lockspace_dir) if d]
                if a["lockspace"] and os.path.normpath(a["lockspace"]) not in [os.path.normpath(d) for d in known]:
                    problems.append(
                        "{}: its lockspace {} is not one {}'s virtlockd knows ({})".format(
                            name, a["lockspace"], dest, ", ".join(known) or "no file_lockspace_dir"
                        )
                    )
            elif a["resource"] and not b["resource"]:
                problems.append("{}: not leased on {} (auto_disk_leases is off there)".format(name, dest))
            elif a["resource"] != b["resource"]:
                problems.append(
                    "{}: leased as {} on {} but as {} on {}".format(name, a["resource"], src, b["resource"], dest)
                )
        if problems:
            self._check(
                "dest_lockspace",
                False,
                "{} would lease {} in another lockspace than {} (file_lockspace_dir {} there, {} here): {}".format(
                    dest,
                    run.name,
                    src,
                    dest_cfg.file_lockspace_dir or "unset",
                    src_cfg.file_lockspace_dir or "unset",
                    "; ".join(problems),
                ),
            )
            return
        self._check(
            "dest_lock_manager",
            True,
            "{} uses {} with the same lockspace as {} ({}; read from {})".format(
                dest, dest_cfg.manager, src, dest_cfg.file_lockspace_dir or "direct locks on the images", where
            ),
        )

    def _check_dest_sanlock(self, root, src_cfg, dest_cfg, where):
        """sanlock on both: the disk leases must be the same lease files (``disk_lease_dir``), and the two
        hosts must have different host_ids (the same host_id on two hosts lets both hold one lease)."""
        run = self.run
        src, dest = run.src_name, run.dest_name
        problems = []
        if dest_cfg.host_id is None or dest_cfg.host_id == src_cfg.host_id:
            problems.append(
                "host_id {} there and {} here: every host needs its own".format(dest_cfg.host_id, src_cfg.host_id)
            )
        mine = self._all_resources(root)
        theirs = domain_lease_resources(root, dest_cfg, run.resolve_volume)
        for a, b in zip(mine, theirs):
            if a["kind"] != "lease" and a["resource"] != b["resource"]:
                problems.append(
                    "disk {}: leased as {} on {} but as {} on {}".format(
                        a.get("disk") or a.get("path"), a["resource"], src, b["resource"] or "nothing", dest
                    )
                )
        if problems:
            self._check(
                "dest_lockspace",
                False,
                "{} would lease {} apart from {} (sanlock, disk_lease_dir {} there, {} here): {}".format(
                    dest,
                    run.name,
                    src,
                    dest_cfg.disk_lease_dir or "unset",
                    src_cfg.disk_lease_dir or "unset",
                    "; ".join(problems),
                ),
            )
            return
        self._check(
            "dest_lock_manager",
            True,
            "{} uses sanlock with the same disk lease directory as {} ({}; host_id {}; read from {})".format(
                dest, src, dest_cfg.disk_lease_dir, dest_cfg.host_id, where
            ),
        )

    def _all_resources(self, root):
        return domain_lease_resources(root, self.run.lock_config, self.run.resolve_volume)

    def check_snapshots(self, src_dom):
        """libvirt's QEMU driver refuses to migrate a guest that has snapshot metadata: name each snapshot."""
        try:
            blockers = migration_blockers(src_dom)
        except Exception:  # a driver without snapshots: nothing blocks
            return
        for b in blockers:
            self._check("no_snapshots", False, "snapshot {}: {}".format(b["name"], b["reason"]))
