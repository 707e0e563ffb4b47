# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Preflight: what must hold before anything moves.

The destination has the guest's networks, pools and volumes; its name is free there; the source holds
every lease it should; the convergence ramp fits the guest's size. Nothing is changed here.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.convergence import plan_convergence
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    domain_disks,
    domain_lease_resources,
    rw_disks_without_lease,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import describe
from ansible_collections.lockstep.virt.plugins.module_utils._virt.snapshot import migration_blockers
from ansible_collections.lockstep.virt.plugins.module_utils._virt.units import to_bytes
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, parse_xml


class Preflight:
    """The checks of a migration, recorded in ``run.checks``; reads the run's connections, plan and leases."""

    def __init__(self, run):
        self.run = run

    def plan_convergence(self, src_dom, xml):
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
        conv_plan = plan_convergence(run.plan.convergence, memory, disk_bytes, live=run.params.get("live", True))
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
        if run.src_state == "running" or run.src.profile.paused_guest_holds_leases:
            missing = [r for r in leases if r.get("holder") != "source"]
            self._check(
                "source_holds_leases",
                not missing,
                "all held by {}".format(run.src_name)
                if not missing
                else describe(missing, run.src_name, run.dest_name),
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
