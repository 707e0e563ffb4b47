# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Preflight: connect to both hosts, see where the guest is, check the destination and plan."""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import CheckpointRecorder
from ansible_collections.lockstep.virt.plugins.module_utils._virt.convergence import describe_plan, plan_convergence
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    ValidationError,
    VirtError,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    domain_disks,
    domain_lease_resources,
    rw_disks_without_lease,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration import (
    RELEASE_BEFORE_SEND,
    build_plan,
    checkpoint_order,
    describe,
    start_event_loop,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup
from ansible_collections.lockstep.virt.plugins.module_utils._virt.units import parse_size
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, parse_xml


def host_uuid(conn):
    with libvirt_errors("cannot read the capabilities of {}".format(conn.uri)):
        caps = parse_xml(conn.virt.getCapabilities(), "capabilities", "libvirt capabilities")
    host = elements(caps, "host")
    uuid = elements(host[0], "uuid") if host else []
    return (uuid[0].text or "").strip() if uuid else None


def memory_bytes(root):
    """The guest's ``<memory>`` in bytes (libvirt's unit convention, KiB when no unit is given)."""
    for el in elements(root, "memory")[:1]:
        return parse_size("{}{}".format((el.text or "0").strip(), el.get("unit") or "KiB"), "memory")
    return 0


class PreflightPhase:
    def _run(self):
        if self.use_events is True:
            self.use_events = start_event_loop()  # before any connection is opened
        self._connect()
        src_dom = lookup(self.src, DOMAIN, self.name)
        dest_dom = lookup(self.dest, DOMAIN, self.name)
        left = self._leftover(src_dom, dest_dom)
        if left is not None:
            if self.check_mode:
                result = self._result(changed=True, state=self._state(self.dest, dest_dom))
                result["would"] = "reconcile what an interrupted run left: " + left["detail"]
                return result
            done = self._reconcile(left, src_dom, dest_dom)
            if done is not None:
                return done
            # the source runs again: migrate it as asked
            src_dom = lookup(self.src, DOMAIN, self.name)
            dest_dom = lookup(self.dest, DOMAIN, self.name)
        src_active = src_dom is not None and self._active(src_dom)
        dest_active = dest_dom is not None and self._active(dest_dom)
        if dest_active and not src_active:
            return self._already_there(src_dom, dest_dom)
        if src_dom is None:
            self._fail(
                "guest {} not found on {} (nor running on {})".format(self.name, self.src_name, self.dest_name),
                cls=ValidationError,
            )
        if not src_active:
            self._fail(
                "guest {} is not running on {} (state {}); only running or paused guests are migrated".format(
                    self.name, self.src_name, state_name(src_dom)
                ),
                cls=ValidationError,
            )
        if dest_active:
            self._fail(
                "guest {} is active on both {} ({}) and {} ({}): refusing to touch it".format(
                    self.name, self.src_name, state_name(src_dom), self.dest_name, state_name(dest_dom)
                ),
                state=state_name(dest_dom),
            )

        with libvirt_errors("cannot read the XML of {}".format(self.name)):
            xml = src_dom.XMLDesc(0)
        self.resources = self.view.expected(xml)
        self.src_state = state_name(src_dom)
        if self.plan.get("convergence") is not None:
            self._plan_convergence(src_dom, xml)
        leases, probed_at = self._probed()
        self._checks(xml, dest_dom, leases)
        failed = [c for c in self.checks if not c["ok"]]
        if failed:
            self._fail(
                "{}migration of {} from {} to {} would fail: {}".format(
                    "check mode: " if self.check_mode else "",
                    self.name,
                    self.src_name,
                    self.dest_name,
                    "; ".join("{}: {}".format(c["name"], c["detail"]) for c in failed),
                ),
                leases=leases,
                state=self._state(self.dest, dest_dom),
            )
        if self.check_mode:
            result = self._result(
                changed=True, state="paused" if self.src_state == "paused" else "running", leases=leases
            )
            result["would"] = "migrate {} from {} to {} with flags {}; checkpoints {}".format(
                self.name,
                self.src_name,
                self.dest_name,
                "|".join(self.plan["flags"]),
                ", ".join(
                    checkpoint_order(
                        self.plan["release"],
                        self.plan["handoff"],
                        releases_at_stop=not self.src.profile.paused_guest_holds_leases,
                    )
                ),
            )
            if self.plan.get("convergence_plan"):
                result["would"] += "; convergence: " + describe_plan(self.plan["convergence_plan"])
            return result
        return self._migrate(src_dom, leases, probed_at)

    def _connect(self):
        self.src = self.open_conn(self.params.get("uri"))
        profile = self.src.profile
        self.plan = build_plan(self.params, profile)
        if self.plan["release"] == RELEASE_BEFORE_SEND:
            self.warnings.append(
                "lock.release: before_send reproduces the old ordering: the source releases its leases before the "
                "guest is sent and must take them back if the send fails, which can fail while the destination "
                "still holds them. Use it only to reproduce that failure."
            )
        self.src_name = self.src.hostname
        try:
            self.dest = self.open_conn(self.params["dest_uri"])
        except VirtError as err:
            self.dest = None
            raise ValidationError(
                "cannot reach the destination {}: {}".format(self.params["dest_uri"], err.libvirt_message or err.msg),
                code=err.code,
                domain=err.domain,
                libvirt_message=err.libvirt_message,
                result=self._result(),
            ) from None
        self.dest_name = self.dest.hostname
        src_uuid, dest_uuid = host_uuid(self.src), host_uuid(self.dest)
        if src_uuid and src_uuid == dest_uuid:
            self._fail(
                "the destination {} is the source host {} (same host UUID {}): nothing to migrate".format(
                    self.params["dest_uri"], self.src_name, src_uuid
                ),
                cls=ValidationError,
            )
        self.lock_config = self.read_config(profile, local=self.src.local)
        self.view = self.lease_view_factory(self.lock_config, resolve_volume=self._resolve_volume)
        self.rec = CheckpointRecorder(host=self.src_name, wall=self.wall)

    def _plan_convergence(self, src_dom, xml):
        """The downtime ramp and timeouts for this guest's size (memory, plus the disks a copy moves)."""
        root = parse_xml(xml, "domain", "libvirt's domain XML")
        disk_bytes = 0
        if self.params.get("copy_storage") not in (None, "none"):
            for disk in domain_disks(root):
                if disk.get("readonly") or disk.get("shareable") or not disk.get("target"):
                    continue
                try:
                    disk_bytes += src_dom.blockInfo(disk["target"])[1]
                except Exception:
                    pass
        conv_plan = plan_convergence(
            self.plan["convergence"], memory_bytes(root), disk_bytes, live=self.params.get("live", True)
        )
        self.warnings.extend(conv_plan.pop("warnings"))
        self.plan["convergence_plan"] = conv_plan

    def _active(self, dom):
        with libvirt_errors("cannot read the state of {}".format(self.name)):
            return bool(dom.isActive())

    def _resolve_volume(self, pool, volume):
        try:
            return self.src.virt.storagePoolLookupByName(pool).storageVolLookupByName(volume).path()
        except Exception:
            return None

    # ------------------------------------------------------------------ checks
    def _check(self, name, ok, detail):
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})

    def _checks(self, xml, dest_dom, leases):
        root = parse_xml(xml, "domain", "libvirt's domain XML")
        if dest_dom is not None:
            try:
                same = dest_dom.UUIDString() == root.findtext("uuid")
            except Exception:
                same = False
            self._check(
                "dest_name_free",
                same,
                "{} has a shut-off definition of {}{}".format(
                    self.dest_name, self.name, "" if same else " with another UUID"
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
                active = bool(self.dest.virt.networkLookupByName(net).isActive())
                self._check(
                    "dest_network",
                    active,
                    "network {} on {} is {}".format(net, self.dest_name, "active" if active else "not active"),
                )
            except Exception:
                self._check("dest_network", False, "{} has no network {}".format(self.dest_name, net))
        for pool in sorted(set(pools)):
            try:
                active = bool(self.dest.virt.storagePoolLookupByName(pool).isActive())
                self._check(
                    "dest_pool",
                    active,
                    "storage pool {} on {} is {}".format(pool, self.dest_name, "active" if active else "not active"),
                )
            except Exception:
                self._check("dest_pool", False, "{} has no storage pool {}".format(self.dest_name, pool))
        for pool, volume in sorted(set(volumes)):
            try:
                self.dest.virt.storagePoolLookupByName(pool).storageVolLookupByName(volume)
                self._check("dest_volume", True, "volume {} in pool {} on {}".format(volume, pool, self.dest_name))
            except Exception:
                self._check(
                    "dest_volume",
                    False,
                    "{} does not see volume {} in pool {} (on shared storage, refresh the pool there)".format(
                        self.dest_name, volume, pool
                    ),
                )
        if not self.plan["verify"]:
            return
        cfg = self.lock_config
        if not cfg.enabled or not cfg.probeable:
            why = (
                "no lock manager is configured for the {} driver".format(self.src.profile.name)
                if not cfg.enabled
                else "leases of {} cannot be probed from here".format(cfg.manager or "?")
            )
            self._check("lock_manager", False, "{}; set lock.verify: false to migrate without verification".format(why))
            return
        unleased = rw_disks_without_lease(domain_lease_resources(root, self.lock_config, self._resolve_volume))
        if unleased and not any(r["kind"] == "lease" for r in self.resources):
            self.warnings.append(
                "{} has read-write disks no lease protects: {}".format(
                    self.name, ", ".join(r["disk"] or "?" for r in unleased)
                )
            )
        if self.src_state == "running" or self.src.profile.paused_guest_holds_leases:
            missing = [r for r in leases if r.get("holder") != "source"]
            self._check(
                "source_holds_leases",
                not missing,
                "all held by {}".format(self.src_name)
                if not missing
                else describe(missing, self.src_name, self.dest_name),
            )
