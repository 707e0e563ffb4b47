# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage pool manager: read -> desired -> diff -> apply (unless check mode).

A pool's storage is built (mkdir, mkfs, vgcreate) only when this run defines it and only when it needs
building; an existing pool is never rebuilt. Drift is the XML engine's intent-based compare; a change
to a running pool's definition is applied at its next start (``pending_restart``) unless
``restart_on_change``. It never calls exit_json/fail_json.
"""

from __future__ import annotations

import os

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    ValidationError,
    VirtError,
    error_code,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.base import Manager, diff_text, user_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import POOL, lookup, read_xml, select
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.pool import (
    DIRECTORY_TARGET_TYPES,
    POOL_SPEC_OPTIONS,
    build_pool_xml,
    normalize_pool_spec,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import (
    compare,
    elements,
    to_text,
)

POOL_STATES = ["present", "absent", "active", "inactive", "deleted"]

POOL_ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "choices": POOL_STATES, "default": "present"},
    "xml": {"type": "str"},
    "spec": {"type": "dict", "options": POOL_SPEC_OPTIONS},
    "autostart": {"type": "bool"},
    "build": {"type": "bool", "default": True},
    "refresh": {"type": "bool", "default": False},
    "restart_on_change": {"type": "bool", "default": False},
}
POOL_MUTUALLY_EXCLUSIVE = [("xml", "spec")]

# What libvirt reports about a pool's use, never part of a definition.
RUNTIME_TAGS = ("capacity", "allocation", "available")
KNOWN_XML_TYPES = ("dir", "fs", "netfs", "logical", "iscsi", "iscsi-direct", "rbd", "disk", "scsi", "mpath", "zfs")
_STATES = {0: "inactive", 1: "building", 2: "running", 3: "degraded", 4: "inaccessible"}


# --------------------------------------------------------------------------- reading
def pool_type(root):
    return root.get("type") or "dir"


def pool_target(root):
    for target in elements(root, "target"):
        for path in elements(target, "path"):
            return (path.text or "").strip() or None
    return None


def desired_pool_from_xml(name, text):
    """Parse user XML for pool ``name``: safe parse, <name> check, runtime values dropped."""
    root = user_xml(name, text, "pool")
    for tag in RUNTIME_TAGS:
        for el in elements(root, tag):
            root.remove(el)
    if pool_type(root) not in (
        "dir",
        "fs",
        "netfs",
        "logical",
        "iscsi",
        "iscsi-direct",
        "rbd",
        "disk",
        "scsi",
        "mpath",
    ):
        raise ValidationError("xml: unknown storage pool type {!r}".format(pool_type(root)))
    return root


def _with_uuid(desired, existing):
    import copy

    out = copy.deepcopy(desired)
    if existing is not None and not elements(out, "uuid"):
        old = elements(existing, "uuid")
        if old:
            names = elements(out, "name")
            out.insert(out.index(names[0]) + 1 if names else 0, copy.deepcopy(old[0]))
    return out


# --------------------------------------------------------------------------- facts
def pool_summary(pool):
    with libvirt_errors("cannot read storage pool {}".format(pool.name())):
        state, capacity, allocation, available = pool.info()
        persistent = bool(pool.isPersistent())
        root = read_xml(pool, POOL, inactive=False)
        return {
            "name": pool.name(),
            "uuid": pool.UUIDString(),
            "state": _STATES.get(state, str(state)),
            "active": bool(pool.isActive()),
            "persistent": persistent,
            "autostart": bool(pool.autostart()) if persistent else False,
            "type": pool_type(root),
            "path": pool_target(root),
            "capacity": capacity,
            "allocation": allocation,
            "available": available,
        }


def pool_facts(pool):
    out = pool_summary(pool)
    root = read_xml(pool, POOL, inactive=True)
    source = {"hosts": [], "devices": [], "dir": None, "name": None, "format": None}
    for src in elements(root, "source"):
        for h in elements(src, "host"):
            source["hosts"].append(h.get("name") + (":" + h.get("port") if h.get("port") else ""))
        source["devices"] = [d.get("path") for d in elements(src, "device")]
        for d in elements(src, "dir"):
            source["dir"] = d.get("path")
        for n in elements(src, "name"):
            source["name"] = (n.text or "").strip()
        for f in elements(src, "format"):
            source["format"] = f.get("type")
    out["source"] = source
    volumes = []
    if out["active"]:
        with libvirt_errors("cannot list the volumes of {}".format(pool.name())):
            volumes = sorted(v.name() for v in pool.listAllVolumes(0))
    out["volumes"] = volumes
    out["xml"] = to_text(root)
    return out


def list_pools(conn, name=None):
    return [pool_facts(pool) for pool in select(conn, POOL, name)]


# --------------------------------------------------------------------------- manager
class PoolManager(Manager):
    """Bring one storage pool to the state described by the module parameters."""

    KIND = POOL
    RESULT = {"pending_restart": False, "refreshed": False}

    def _desired(self):
        p = self.params
        if p.get("xml") and p.get("spec") is not None:
            raise ValidationError("xml and spec are mutually exclusive")
        if p.get("xml"):
            return desired_pool_from_xml(self.name, p["xml"])
        if p.get("spec") is not None:
            return build_pool_xml(self.name, normalize_pool_spec(p["spec"], validated=True), normalized=True)
        return None

    def _check_target(self, root):
        """Refuse a directory target that exists and is not a directory (checked where the files are)."""
        path = pool_target(root)
        if path is None or pool_type(root) not in DIRECTORY_TARGET_TYPES or not self.conn.local:
            return
        if os.path.lexists(path) and not os.path.isdir(path):
            raise ValidationError("the target path {} of pool {} exists and is not a directory".format(path, self.name))

    def _run(self):
        p = self.params
        desired = self._desired()
        pool = lookup(self.conn, POOL, self.name)
        if p["state"] in ("absent", "deleted"):
            return self._absent(pool, delete=p["state"] == "deleted")
        if pool is None and desired is None:
            raise VirtError(
                "storage pool {} is not defined on {}; give xml or spec to define it".format(
                    self.name, self.conn.hostname
                )
            )
        if desired is not None:
            self._check_target(desired)
        existing = read_xml(pool, POOL) if pool is not None else None
        active = bool(pool.isActive()) if pool is not None else False
        persistent = bool(pool.isPersistent()) if pool is not None else False
        before_state = "absent" if pool is None else ("active" if active else "inactive")
        before_autostart = bool(pool.autostart()) if persistent else False
        before_xml = after_xml = to_text(existing) if existing is not None else ""
        defined_now = False

        if desired is not None:
            drift = compare(desired, existing)
            before_xml, after_xml = drift.before, drift.after
            if pool is not None and pool_type(desired) != pool_type(existing):
                raise ValidationError(
                    "storage pool {} is of type {}; its type cannot change to {} (remove it first)".format(
                        self.name, pool_type(existing), pool_type(desired)
                    )
                )
            if drift.changed:
                self.result["differences"] = drift.differences
            if pool is None:
                self._act("define")
                if not self.check_mode:
                    with libvirt_errors("cannot define storage pool {}".format(self.name)):
                        pool = self.conn.virt.storagePoolDefineXML(to_text(desired), 0)
                    defined_now = True
            elif drift.changed or not persistent:
                self._act("redefine")
                if not self.check_mode:
                    with libvirt_errors("cannot define storage pool {}".format(self.name)):
                        pool = self.conn.virt.storagePoolDefineXML(to_text(_with_uuid(desired, existing)), 0)

        predicted = {"state": "inactive" if before_state == "absent" else before_state, "autostart": before_autostart}
        try:
            if before_state == "absent":
                self._build(pool, desired)
            self._autostart(pool, predicted)
            self._state(pool, predicted)
        except VirtError as err:
            if defined_now:
                self._rollback(pool, err)
            raise
        if desired is not None and before_state == "active" and predicted["state"] == "active":
            self._pending_restart(pool, desired)
        if p["refresh"] and predicted["state"] == "active" and not self.check_mode:
            with libvirt_errors("cannot refresh storage pool {}".format(self.name)):
                pool.refresh(0)
            self.result["refreshed"] = True

        self.result["diff"] = self._diff(
            diff_text(before_xml, before_state, before_autostart),
            diff_text(after_xml, predicted["state"], predicted["autostart"]),
            "desired",
        )
        if pool is None:
            self.result["pool"] = {
                "name": self.name,
                "uuid": None,
                "state": "running" if predicted["state"] == "active" else "inactive",
                "active": predicted["state"] == "active",
                "persistent": True,
                "autostart": predicted["autostart"],
                "type": pool_type(desired),
                "path": pool_target(desired),
                "capacity": None,
                "allocation": None,
                "available": None,
            }
        else:
            self.result["pool"] = pool_summary(pool)
            if self.check_mode:
                self.result["pool"].update(active=predicted["state"] == "active", autostart=predicted["autostart"])
        return self.result

    # ------------------------------------------------------------------ steps
    def _needs_build(self, root):
        kind = pool_type(root)
        path = pool_target(root)
        if kind in ("dir", "netfs"):
            return not (self.conn.local and path and os.path.isdir(path))
        if kind == "fs":
            return True
        if kind == "logical":
            return any(elements(src, "device") for src in elements(root, "source"))
        return False

    def _build(self, pool, desired):
        if not self.params["build"] or desired is None or not self._needs_build(desired):
            return
        self._act("build")
        if self.check_mode:
            return
        flags = 0
        if pool_type(desired) in ("fs", "logical"):
            flags = libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE
        try:
            pool.build(flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == error_code("STORAGE_POOL_BUILT", 76):
                self.result["actions"].remove("build")  # already built: nothing was needed
                return
            raise VirtError(
                "cannot build storage pool {}: {}".format(self.name, exc.get_error_message()), code=exc.get_error_code()
            ) from None

    def _rollback(self, pool, err):
        """Undefine a pool this run defined, after a later step failed: nothing is left changed."""
        try:
            if pool.isActive():
                pool.destroy()
            pool.undefine()
            err.msg += " (the new definition of {} was removed again)".format(self.name)
            err.args = (err.msg,)
            self.result["actions"] = []
            self.result["changed"] = False
        except libvirt.libvirtError:  # pragma: no cover - best effort
            pass

    def _state(self, pool, predicted):
        want = self.params["state"]
        if want == "active" and predicted["state"] != "active":
            self._act("start")
            predicted["state"] = "active"
            if not self.check_mode:
                with libvirt_errors("cannot start storage pool {}".format(self.name)):
                    pool.create(0)
        elif want == "inactive" and predicted["state"] == "active":
            self._act("stop")
            predicted["state"] = "inactive"
            if not self.check_mode:
                with libvirt_errors("cannot stop storage pool {}".format(self.name)):
                    pool.destroy()

    def _pending_restart(self, pool, desired):
        if self.check_mode and "redefine" in self.result["actions"]:
            pending = True
        else:
            # libvirt reports the live directory's own permissions; a start does not change them
            pending = compare(desired, read_xml(pool, POOL, inactive=False), ignore=("permissions",)).changed

        def restart():
            pool.destroy()
            pool.create(0)

        self._restart_if_pending(pending, restart)

    def _absent(self, pool, delete):
        if pool is None:
            self.result["diff"] = {"before": "", "after": ""}
            self.result["pool"] = None
            return self.result
        root = read_xml(pool, POOL)
        persistent = bool(pool.isPersistent())
        active = bool(pool.isActive())
        self.result["diff"] = self._diff(
            diff_text(to_text(root), "active" if active else "inactive", persistent and pool.autostart()),
            "",
            "deleted" if delete else "absent",
        )
        if delete:
            self._refuse_non_empty(pool, root, active)
        if active:
            self._act("stop")
            if not self.check_mode:
                with libvirt_errors("cannot stop storage pool {}".format(self.name)):
                    pool.destroy()
        path = pool_target(root)
        if delete and not (
            pool_type(root) in DIRECTORY_TARGET_TYPES and self.conn.local and path and not os.path.lexists(path)
        ):
            self._act("delete")
            if not self.check_mode:
                with libvirt_errors("cannot delete the storage of pool {}".format(self.name)):
                    pool.delete(0)
        if persistent:
            self._act("undefine")
            if not self.check_mode:
                with libvirt_errors("cannot undefine storage pool {}".format(self.name)):
                    pool.undefine()
        self.result["pool"] = None
        return self.result

    def _refuse_non_empty(self, pool, root, active):
        names = []
        if active:
            with libvirt_errors("cannot list the volumes of {}".format(self.name)):
                names = sorted(v.name() for v in pool.listAllVolumes(0))
        path = pool_target(root)
        if not names and pool_type(root) in DIRECTORY_TARGET_TYPES and self.conn.local and path and os.path.isdir(path):
            names = sorted(os.listdir(path))
        if names:
            raise ValidationError(
                "storage pool {} still holds {} volume(s) ({}); remove them (lockstep.virt.volume state=absent) "
                "before state=deleted".format(self.name, len(names), ", ".join(names[:10]))
            )
