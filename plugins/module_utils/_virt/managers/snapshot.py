# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Guest snapshots: create, delete, revert with the leases kept right, list as a tree, and find the
snapshots that keep a guest from migrating.

Reverting and the lock manager. A revert rewrites the guest's disks (an internal snapshot is applied
inside the images, an external one switches overlays), so it is refused, before anything changes, when
a lease of the snapshot's definition is held by anyone but this guest running here (the guest running on
another host of a shared lockspace, for one). A snapshot taken while the guest ran is reverted with
``VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED``: QEMU is loaded with the saved state and its vCPUs stopped, so it
holds no lease; it is then resumed by :meth:`Lifecycle.resume` - the same acquire-as-vCPUs-start, verify
and busy handling as a start with ``lock.acquire=after_create``. A resume refused because a lease became
busy in between leaves no guest running: one that was shut off before the revert is destroyed again
(paused, it held nothing), one that ran stays paused, and the module fails naming the lease.

The snapshots' facts (the tree, what blocks a migration) are read by :mod:`..reporters.snapshot_info`.
"""

from __future__ import annotations

import os

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    LeaseError,
    ValidationError,
    VirtError,
    error_code,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    describe_holder,
    domain_lease_resources,
    probe_resources,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import is_active, state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.base import Manager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.domain import (
    LOCK_OPTIONS,
    DomainManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup, read_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.snapshot_info import (
    current_name,
    describe_snapshot,
    list_snapshots,
    marked_description,
    snapshot_xml,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.common import sub
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, etree, parse_xml, to_text

SNAPSHOT_LOCK_OPTIONS = dict((k, v) for k, v in LOCK_OPTIONS.items() if k != "acquire")

SNAPSHOT_ARGUMENT_SPEC = {
    "domain": {"type": "str", "required": True},
    "name": {"type": "str"},
    "state": {"type": "str", "choices": ["present", "absent", "reverted"], "default": "present"},
    "description": {"type": "str"},
    "disk_only": {"type": "bool", "default": False},
    "memory": {"type": "bool"},
    "quiesce": {"type": "bool", "default": False},
    "keep": {"type": "int"},
    "lock": {"type": "dict", "options": SNAPSHOT_LOCK_OPTIONS, "default": {}, "apply_defaults": True},
}

GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


# --------------------------------------------------------------------------- the manager
class SnapshotManager(Manager):
    """Bring one snapshot of one guest to ``state``; prune the module's own snapshots beyond ``keep``."""

    KIND = DOMAIN
    RESULT = {"snapshot": None, "removed": []}

    def __init__(self, conn, params, check_mode=False, diff_mode=False):
        super().__init__(conn, dict(params, name=params["domain"]), check_mode, diff_mode)
        self.snap_name = params.get("name")
        self.label = "snapshot {} of {}".format(self.snap_name, params["domain"])
        # the domain manager's lock settings, recorder and lifecycle, for the leases
        self.domain = DomainManager(conn, {"name": params["domain"], "lock": params.get("lock") or {}}, check_mode)
        self.lifecycle = self.domain.lifecycle
        self.recorder = self.domain.recorder

    def with_result(self, err):
        super().with_result(err)
        err.result["lock_checkpoints"] = self.recorder.as_list()
        return err

    def _check(self):
        p = self.params
        if p.get("keep") is not None and p["keep"] < 1:
            raise ValidationError("keep must be 1 or more")
        if not self.snap_name and not (p["state"] == "present" and p.get("keep")):
            raise ValidationError("name is required (it may be left out only to prune with keep)")
        if p["disk_only"] and p.get("memory"):
            raise ValidationError("a disk_only snapshot has no memory state; leave memory out or disk_only false")
        if p["quiesce"] and not p["disk_only"]:
            raise ValidationError("quiesce is for disk_only snapshots (libvirt freezes file systems for those only)")

    def _lookup(self, dom, name):
        try:
            return dom.snapshotLookupByName(name, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == error_code("NO_DOMAIN_SNAPSHOT", 72):
                return None
            raise VirtError(
                "cannot look up {}: {}".format(self.label, exc.get_error_message()),
                code=exc.get_error_code(),
                libvirt_message=exc.get_error_message(),
            ) from None

    def _run(self):
        p = self.params
        self._check()
        dom = lookup(self.conn, DOMAIN, p["domain"])
        if dom is None:
            raise VirtError("domain {} is not defined on {}".format(p["domain"], self.conn.hostname))
        snap = self._lookup(dom, self.snap_name) if self.snap_name else None
        before = describe_snapshot(snap) if snap is not None else None
        if p["state"] == "absent":
            if snap is not None:
                self._act("delete")
                if not self.check_mode:
                    with libvirt_errors("cannot delete {}".format(self.label)):
                        snap.delete(0)
                    self.recorder.record("snapshot_deleted", detail=self.snap_name)
            after = None
        elif p["state"] == "reverted":
            if snap is None:
                raise VirtError("{} does not exist on {}".format(self.label, self.conn.hostname))
            self._revert(dom, snap, before)
            after = dict(before, current=True)
        else:
            after = before
            if self.snap_name:
                after = self._present(dom, snap, before)
            if p.get("keep"):
                self._prune(dom)
        if not self.check_mode and after is not None:
            snap = self._lookup(dom, self.snap_name)
            after = describe_snapshot(snap) if snap is not None else after
        self.result["snapshot"] = after
        self.result["diff"] = self._diff(_diff_text(before), _diff_text(after), p["state"])
        return self._finish(dom)

    def _finish(self, dom):
        """The guest, its leases and the checkpoints, as the domain module reports them."""
        done = self.domain.report(dom)
        self.result.update((k, done[k]) for k in ("domain", "leases", "lock_checkpoints", "warnings") if k in done)
        return self.result

    # ------------------------------------------------------------------ present
    def _present(self, dom, snap, before):
        p = self.params
        if snap is not None:
            want = p.get("description")
            if want is not None and want != before["description"]:
                self._act("redescribe")
                if not self.check_mode:
                    root = snapshot_xml(snap)
                    for d in elements(root, "description"):
                        root.remove(d)
                    desc = etree.Element("description")
                    desc.text = marked_description(want) if before["managed"] else want
                    root.insert(1, desc)
                    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
                    if before["current"]:
                        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
                    with libvirt_errors("cannot change the description of {}".format(self.label)):
                        dom.snapshotCreateXML(to_text(root), flags)
                return dict(before, description=want)
            return before
        running = is_active(dom) and state_name(dom) != "shutoff"
        if p.get("memory") and not running:
            raise ValidationError("memory: guest {} is not running, it has no memory state".format(p["domain"]))
        if p.get("memory") is False and running and not p["disk_only"]:
            raise ValidationError(
                "an internal snapshot of running guest {} always includes its memory; use disk_only for one "
                "without".format(p["domain"])
            )
        if p["quiesce"]:
            self._check_agent(dom)
        root = etree.Element("domainsnapshot")
        sub(root, "name", self.snap_name)
        sub(root, "description", marked_description(p.get("description")))
        flags = 0
        if p["disk_only"]:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        if p["quiesce"]:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        self._act("create")
        predicted = {
            "name": self.snap_name,
            "parent": current_name(dom),
            "created": None,
            "state": "disk-snapshot" if p["disk_only"] else state_name(dom),
            "description": p.get("description"),
            "managed": True,
            "current": True,
            "external": p["disk_only"],
            "memory": "internal" if running and not p["disk_only"] else "no",
            "disks": [],
        }
        if self.check_mode:
            return predicted
        held_before = running and self.lifecycle.lock_config.enabled
        with libvirt_errors("cannot create {}".format(self.label)):
            dom.snapshotCreateXML(to_text(root), flags)
        self.recorder.record(
            "snapshot_created",
            detail="{}{}".format(
                "external overlays" if p["disk_only"] else "internal", ", quiesced" if p["quiesce"] else ""
            ),
        )
        if p["disk_only"]:
            self._refresh_pools(dom)
        if held_before and state_name(dom) in ("running", "blocked"):
            # QEMU stopped the vCPUs for the snapshot; libvirt released the leases and took them back
            self.lifecycle.verify(dom, self.domain.lock["required"])
        return predicted

    def _check_agent(self, dom):
        if not is_active(dom):
            raise ValidationError("quiesce: guest {} is not running".format(self.params["domain"]))
        live = read_xml(dom, DOMAIN, inactive=False)
        for channel in elements(elements(live, "devices")[0], "channel") if elements(live, "devices") else []:
            target = channel.find("target")
            if target is not None and target.get("name") == GUEST_AGENT_CHANNEL:
                if target.get("state") not in (None, "connected"):
                    raise VirtError(
                        "quiesce needs the QEMU guest agent, and guest {}'s agent is {} (is qemu-guest-agent "
                        "running in the guest?); nothing was changed".format(self.params["domain"], target.get("state"))
                    )
                return
        raise VirtError(
            "quiesce needs the QEMU guest agent, and guest {} has no {} channel; nothing was changed".format(
                self.params["domain"], GUEST_AGENT_CHANNEL
            )
        )

    def _refresh_pools(self, dom):
        """External overlays are written beside the disks; a pool holding that directory lists them after
        a refresh (best effort: a pool that cannot refresh lists them at its next one)."""
        snaps = [s for s in list_snapshots(dom) if s["name"] == self.snap_name]
        dirs = set(os.path.dirname(d["file"]) for s in snaps for d in s["disks"] if d["file"])
        with libvirt_errors("cannot list storage pools"):
            pools = self.conn.virt.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
        for pool in pools:
            try:
                path = parse_xml(pool.XMLDesc(0), "pool").findtext("target/path")
                if path and os.path.normpath(path) in dirs:
                    pool.refresh(0)
            except (libvirt.libvirtError, VirtError):
                continue

    def _prune(self, dom):
        keep = self.params["keep"]
        mine = [s for s in list_snapshots(dom) if s["managed"]]
        mine.sort(key=lambda s: (s["created"] or "", s["name"]))
        extra = len(mine) - keep
        for s in mine:
            if extra <= 0:
                break
            if s["name"] == self.snap_name:
                continue
            extra -= 1
            self._act("prune")
            self.result["removed"].append(s["name"])
            if not self.check_mode:
                with libvirt_errors("cannot delete snapshot {} of {}".format(s["name"], self.params["domain"])):
                    dom.snapshotLookupByName(s["name"], 0).delete(0)
                self.recorder.record("snapshot_deleted", detail="{} (keep {})".format(s["name"], keep))

    # ------------------------------------------------------------------ reverted
    def _revert(self, dom, snap, before):
        # A revert always acts, like a restart: whether the guest changed since the snapshot (an upgrade in a
        # guest that kept running on its current snapshot) cannot be read from libvirt's metadata.
        was_active = is_active(dom)
        target = before["state"]
        self._refuse_busy(dom, snap, was_active)
        self._act("revert")
        if self.check_mode:
            return
        lc = self.lifecycle
        held = lc.probe(dom) if was_active else []
        if target in ("running", "paused"):
            with libvirt_errors("cannot revert {}".format(self.label)):
                dom.revertToSnapshot(snap, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED)
            self.recorder.record("reverted_paused", detail="saved state loaded, vCPUs not started: no lease held")
            if target == "paused":
                self.recorder.record("paused", detail="the snapshot was taken paused")
                return
            try:
                lc.resume(dom, **self.domain._lock_kwargs())
            except VirtError:
                if not was_active:
                    lc._destroy_quietly(dom, "destroyed_paused", "the revert is undone: it held no lease")
                raise
            return
        with libvirt_errors("cannot revert {}".format(self.label)):
            dom.revertToSnapshot(snap, 0)
        self.recorder.record("reverted", detail="the snapshot was taken shut off")
        if held:
            lc._released(dom, held)

    def _refuse_busy(self, dom, snap, was_active):
        """Refuse, before anything changes, a revert whose leases someone else holds."""
        root = snapshot_xml(snap)
        defined = root.find("domain")
        if defined is None:
            defined = read_xml(dom, DOMAIN)
        resources = domain_lease_resources(defined, self.lifecycle.lock_config, self.lifecycle._resolve_volume)
        busy = [
            r
            for r in probe_resources(resources, self.lifecycle.lock_config)
            if r.get("held") and not (was_active and r.get("held_here"))
        ]
        if not busy:
            return
        what = "; ".join("{} {}".format(r["resource"], describe_holder(r)) for r in busy)
        self.recorder.record("revert_refused", ok=False, resources=[r["resource"] for r in busy], detail=what)
        raise LeaseError(
            "cannot revert {}: its lease {} - reverting would rewrite disks in use; nothing was changed".format(
                self.label, what
            )
        )


def _diff_text(item):
    if item is None:
        return ""
    lines = ["{}: {}".format(k, item.get(k)) for k in ("name", "state", "description", "current", "external")]
    return "\n".join(lines) + "\n"


__all__ = ["SNAPSHOT_ARGUMENT_SPEC", "SnapshotManager"]
