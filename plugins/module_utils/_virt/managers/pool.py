# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage pool manager: the converge sequence of managers.base.DefinedManager, filled in for pools.

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
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.base import (
    DEFINITION_MUTUALLY_EXCLUSIVE,
    DefinedManager,
    FromSpec,
    definition_argument_spec,
    user_xml,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import POOL, read_xml, select
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

POOL_ARGUMENT_SPEC = definition_argument_spec(
    POOL_STATES,
    POOL_SPEC_OPTIONS,
    build={"type": "bool", "default": True},
    refresh={"type": "bool", "default": False},
)
POOL_MUTUALLY_EXCLUSIVE = DEFINITION_MUTUALLY_EXCLUSIVE

# What libvirt reports about a pool's use, never part of a definition.
RUNTIME_TAGS = ("capacity", "allocation", "available")
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
class PoolManager(DefinedManager):
    """Bring one storage pool to the state described by the module parameters: the converge sequence of
    :class:`DefinedManager`, with its storage built on first definition (undone when a later step fails)."""

    KIND = POOL
    VALIDATE_FLAG = "VIR_STORAGE_POOL_DEFINE_VALIDATE"
    RESULT = {"pending_restart": False, "refreshed": False}
    SUMMARY_KEY = "pool"
    FROM_XML = staticmethod(desired_pool_from_xml)
    FROM_SPEC = FromSpec(build_pool_xml, normalize_pool_spec)
    REMOVE_STATES = ("absent", "deleted")

    def _check_desired(self, desired, existing):
        self._check_target(desired)
        if existing is not None and pool_type(desired) != pool_type(existing):
            raise ValidationError(
                "storage pool {} is of type {}; its type cannot change to {} (remove it first)".format(
                    self.name, pool_type(existing), pool_type(desired)
                )
            )

    def _check_target(self, root):
        """Refuse a directory target that exists and is not a directory (checked where the files are)."""
        path = pool_target(root)
        if path is None or pool_type(root) not in DIRECTORY_TARGET_TYPES or not self.conn.local:
            return
        if os.path.lexists(path) and not os.path.isdir(path):
            raise ValidationError("the target path {} of pool {} exists and is not a directory".format(path, self.name))

    def _define_xml(self, text, flags=0):
        return self.conn.virt.storagePoolDefineXML(text, flags)

    def _prepare(self, obj, desired, before):
        if before["state"] == "absent":
            self._build(obj, desired)

    def _start(self, obj):
        obj.create(0)

    def _live_differences(self, obj, desired):
        # libvirt reports the live directory's own permissions; a start does not change them
        drift = compare(desired, read_xml(obj, POOL, inactive=False), ignore=("permissions",), texts=False)
        return drift.differences

    def _after(self, obj, predicted):
        if self.params["refresh"] and predicted["state"] == "active" and not self.check_mode:
            with libvirt_errors("cannot refresh storage pool {}".format(self.name)):
                obj.refresh(0)
            self.result["refreshed"] = True

    def _summary(self, obj, predicted, desired):
        if obj is None:  # check mode, new pool
            return {
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
        out = pool_summary(obj)
        if self.check_mode:
            out.update(active=predicted["state"] == "active", autostart=predicted["autostart"])
        return out

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

    def _rollback(self, obj, err):
        """Undefine a pool this run defined, after a later step failed: nothing is left changed."""
        try:
            if obj.isActive():
                obj.destroy()
            obj.undefine()
            err.msg += " (the new definition of {} was removed again)".format(self.name)
            err.args = (err.msg,)
            self.result["actions"] = []
            self.result["changed"] = False
        except libvirt.libvirtError:  # pragma: no cover - best effort
            pass

    def _removed_as(self):
        return self.params["state"]

    def _before_remove(self, obj, existing, before):
        if self.params["state"] == "deleted":
            self._refuse_non_empty(obj, existing, before["active"])

    def _after_stop(self, obj, existing):
        path = pool_target(existing)
        if self.params["state"] == "deleted" and not (
            pool_type(existing) in DIRECTORY_TARGET_TYPES and self.conn.local and path and not os.path.lexists(path)
        ):
            self._act("delete")
            if not self.check_mode:
                with libvirt_errors("cannot delete the storage of pool {}".format(self.name)):
                    obj.delete(0)

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
