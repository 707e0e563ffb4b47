# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The domain manager: read -> desired -> diff -> apply (unless check mode).

It never calls exit_json/fail_json: :meth:`DomainManager.run` returns the result dict or raises
VirtError (with partial results in ``err.result``). A single-object module and a batch module use
it the same way.
"""

from __future__ import annotations

import copy
import os

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import CheckpointRecorder
from ansible_collections.lockstep.virt.plugins.module_utils._virt.cloudinit import ensure_seed, remove_seed, seed_of
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    ValidationError,
    VirtError,
    error_code,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    domain_disks,
    public_lease,
    read_lock_config,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import (
    ACQUIRE_AFTER_CREATE,
    ACQUIRE_LIBVIRT,
    Lifecycle,
    is_active,
    state_name,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.live import apply_live_changes, diff_lines
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managed import mark_managed
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.base import Manager, diff_text, user_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup, read_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.references import check_domain_references
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.domain import (
    DOMAIN_SPEC_OPTIONS,
    build_domain_xml,
    normalize_domain_spec,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import (
    compare,
    elements,
    etree,
    to_text,
)

DOMAIN_STATES = ["present", "absent", "running", "paused", "shutdown", "destroyed"]
UNDEFINE_CHOICES = ["nvram", "managed_save", "snapshots_metadata", "checkpoints_metadata"]

LOCK_OPTIONS = {
    "acquire": {"type": "str", "choices": [ACQUIRE_AFTER_CREATE, ACQUIRE_LIBVIRT], "default": ACQUIRE_AFTER_CREATE},
    "required": {"type": "bool", "default": False},
    "acquire_timeout": {"type": "int", "default": 0},
    "verify": {"type": "bool", "default": True},
}

DOMAIN_ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "choices": DOMAIN_STATES, "default": "present"},
    "xml": {"type": "str"},
    "spec": {"type": "dict", "options": DOMAIN_SPEC_OPTIONS},
    "autostart": {"type": "bool"},
    "timeout": {"type": "int", "default": 60},
    "force": {"type": "bool", "default": False},
    "restart_on_change": {"type": "bool", "default": False},
    "remove_storage": {"type": "bool", "default": False},
    "undefine": {"type": "list", "elements": "str", "choices": UNDEFINE_CHOICES, "default": list(UNDEFINE_CHOICES)},
    "lock": {"type": "dict", "options": LOCK_OPTIONS, "default": {}, "apply_defaults": True},
}
DOMAIN_MUTUALLY_EXCLUSIVE = [("xml", "spec")]

ACTIVE_STATES = ("running", "blocked", "paused", "shutdown", "crashed", "pmsuspended")
# Parts of a live XML that differ from the definition without a pending change.
LIVE_IGNORE = ("cpu",)


def domain_summary(dom, state=None):
    """{name, uuid, id, state, persistent, autostart} of a libvirt domain."""
    with libvirt_errors("cannot read domain {}".format(dom.name())):
        dom_id = dom.ID()
        persistent = bool(dom.isPersistent())
        return {
            "name": dom.name(),
            "uuid": dom.UUIDString(),
            "id": dom_id if dom_id >= 0 else None,
            "state": state or state_name(dom),
            "persistent": persistent,
            "autostart": bool(dom.autostart()) if persistent else False,
        }


def desired_from_xml(name, text):
    """Parse user XML for domain ``name``: safe parse, <name> check, managed mark."""
    root = user_xml(name, text, "domain")
    mark_managed(root, "domain")
    return root


def prepare_for_define(desired, existing):
    """Copy of ``desired`` keeping what libvirt generated for ``existing``: its UUID and the MAC
    addresses of interfaces the desired XML gives none (so a redefinition does not renumber NICs)."""
    out = copy.deepcopy(desired)
    if existing is None:
        return out
    if not elements(out, "uuid"):
        old = elements(existing, "uuid")
        if old:
            el = etree.Element("uuid")
            el.text = old[0].text
            names = elements(out, "name")
            out.insert(out.index(names[0]) + 1 if names else 0, el)
    d_dev = elements(out, "devices")
    a_dev = elements(existing, "devices")
    if d_dev and a_dev:
        d_ifaces = elements(d_dev[0], "interface")
        a_ifaces = elements(a_dev[0], "interface")
        given = set(m.get("address", "").lower() for i in d_ifaces for m in elements(i, "mac"))
        spare = [
            m.get("address")
            for i in a_ifaces
            for m in elements(i, "mac")
            if m.get("address") and m.get("address").lower() not in given
        ]
        for iface in d_ifaces:
            if not elements(iface, "mac") and spare:
                mac = etree.Element("mac")
                mac.set("address", spare.pop(0))
                iface.insert(0, mac)
    return out


class DomainManager(Manager):
    """Bring one domain to the state described by the module parameters."""

    KIND = DOMAIN
    RESULT = {"pending_restart": False, "warnings": []}

    def __init__(
        self, conn, params, check_mode=False, diff_mode=False, lock_config=None, recorder=None, lifecycle=None
    ):
        super().__init__(conn, params, check_mode, diff_mode)
        self.lock = dict(LOCK_OPTIONS_DEFAULTS)
        self.lock.update((k, v) for k, v in (params.get("lock") or {}).items() if v is not None)
        self.lock_config = lock_config or read_lock_config(conn.profile, local=conn.local)
        self.recorder = recorder or CheckpointRecorder(host=conn.hostname)
        self.lifecycle = lifecycle or Lifecycle(conn, self.recorder, self.lock_config)

    # ------------------------------------------------------------------ helpers
    def _desired(self, existing):
        p = self.params
        if p.get("xml"):
            return desired_from_xml(self.name, p["xml"])
        if p.get("spec") is not None:
            uuid = None
            if existing is not None:
                found = elements(existing, "uuid")
                uuid = found[0].text.strip() if found else None
            return build_domain_xml(self.name, self._spec, uuid=uuid, lock_config=self.lock_config, normalized=True)
        return None

    def _finish(self, dom, predicted=None):
        r = self.result
        if dom is not None:
            r["domain"] = domain_summary(dom)
            if predicted is not None:  # check mode: what the domain would be
                r["domain"].update(predicted)
            if r["domain"]["state"] == "blocked":
                r["domain"]["state"] = "running"
            try:
                r["leases"] = [public_lease(x) for x in self.lifecycle.probe(dom, inactive=not is_active(dom))]
            except VirtError as err:
                r["warnings"].append("cannot probe leases: {}".format(err.msg))
                r["leases"] = []
        else:
            r.setdefault("domain", None)
            r.setdefault("leases", [])
        r["lock_checkpoints"] = self.recorder.as_list()
        for c in r["lock_checkpoints"]:
            if c["name"] == "leases_verified" and not c["ok"]:
                # lock.verify: never a silent ok; lock.required makes it a failure (rolled back)
                r["warnings"].append(
                    "{} runs, but its leases are not as they must be ({}); set lock.required: true to refuse "
                    "such a start".format(self.name, c["detail"])
                )
        if not r["warnings"]:
            del r["warnings"]
        return r

    def _fail(self, err):
        """Attach partial results, with the lock checkpoints so far, to ``err`` and return it."""
        super()._fail(err)
        err.result["lock_checkpoints"] = self.recorder.as_list()
        return err

    # ------------------------------------------------------------------ run
    def _run(self):
        p = self.params
        if p.get("xml") and p.get("spec") is not None:
            raise ValidationError("xml and spec are mutually exclusive")
        self._spec = normalize_domain_spec(p["spec"], validated=True) if p.get("spec") is not None else None
        if p.get("xml"):
            desired_from_xml(self.name, p["xml"])  # validate before touching anything
        dom = lookup(self.conn, DOMAIN, self.name)
        if p["state"] == "absent":
            return self._absent(dom)

        existing = read_xml(dom, DOMAIN) if dom is not None else None
        desired = self._desired(existing)
        if desired is not None:  # a missing pool, volume or network fails before anything changes
            check_domain_references(self.conn, self.name, desired, provided=self._seed_volume(desired))
        before_state = state_name(dom) if dom is not None else "absent"
        before_autostart = bool(dom.autostart()) if dom is not None and dom.isPersistent() else False
        before_xml = after_xml = ""
        defined_now = False
        if desired is not None:
            drift = compare(desired, existing)
            before_xml, after_xml = drift.before, drift.after
            ensure_seed(self, existing, desired)  # the cloud-init seed volume, before the definition names it
            if drift.changed:
                self.result["differences"] = drift.differences
                self._act("define" if dom is None else "redefine")
                if not self.check_mode:
                    text = to_text(prepare_for_define(desired, existing))
                    with libvirt_errors("cannot define domain {}".format(self.name)):
                        dom = self.conn.virt.defineXML(text)
                    self.recorder.record(
                        "defined", detail="new definition" if existing is None else "definition updated"
                    )
                    defined_now = True
                    self._create_lease_files(dom)
            elif dom is not None and not dom.isPersistent():
                self._act("define")
                if not self.check_mode:
                    with libvirt_errors("cannot define domain {}".format(self.name)):
                        dom = self.conn.virt.defineXML(to_text(prepare_for_define(desired, existing)))
        elif dom is None:
            raise VirtError(
                "domain {} is not defined on {}; give xml or spec to define it".format(self.name, self.conn.hostname)
            )

        predicted = {"state": before_state if dom is not None else "shutoff", "autostart": before_autostart}
        self._autostart(dom, predicted)
        self._state(dom, predicted)
        if p["state"] in ("present", "running", "paused") and desired is not None:
            self._pending_restart(dom, desired, defined_now, predicted)

        after_state = predicted["state"]
        self.result["diff"] = self._diff(
            diff_text(before_xml, before_state, before_autostart),
            diff_text(after_xml if desired is not None else before_xml, after_state, predicted["autostart"])
            + diff_lines(self.result),
            "desired",
        )
        if dom is None:  # check mode, new domain
            uuid = elements(desired, "uuid")
            self.result["domain"] = {
                "name": self.name,
                "uuid": uuid[0].text if uuid else None,
                "id": None,
                "state": after_state,
                "persistent": True,
                "autostart": predicted["autostart"],
            }
            return self._finish(None)
        return self._finish(dom, predicted if self.check_mode else None)

    def _create_lease_files(self, dom):
        try:
            self.lifecycle.prepare_vm_leases(self.lifecycle.expected_leases(dom, inactive=True))
        except VirtError as err:
            self.result["warnings"].append(err.msg)

    def _lock_kwargs(self):
        return {
            "required": self.lock["required"],
            "acquire_timeout": self.lock["acquire_timeout"],
            "verify": self.lock["verify"],
        }

    def _state(self, dom, predicted):
        want = self.params["state"]
        cur = predicted["state"]
        active = cur in ACTIVE_STATES
        lc = self.lifecycle
        if want == "present":
            return
        if want == "running":
            if cur in ("running", "blocked"):
                return
            predicted["state"] = "running"
            if cur == "paused":
                self._act("resume")
                if not self.check_mode:
                    lc.resume(dom, **self._lock_kwargs())
                return
            if cur == "pmsuspended":
                self._act("wakeup")
                if not self.check_mode:
                    with libvirt_errors("cannot wake up {}".format(self.name)):
                        dom.pMWakeup(0)
                return
            if active:  # crashed but still there
                self._act("destroy")
                if not self.check_mode:
                    lc.destroy(dom)
            self._act("start")
            if not self.check_mode:
                lc.start(dom, acquire=self.lock["acquire"], **self._lock_kwargs())
            return
        if want == "paused":
            if cur == "paused":
                return
            predicted["state"] = "paused"
            if cur in ("running", "blocked"):
                self._act("pause")
                if not self.check_mode:
                    lc.suspend(dom)
                return
            if active:
                self._act("destroy")
                if not self.check_mode:
                    lc.destroy(dom)
            self._act("start_paused")
            if not self.check_mode:
                lc.start(dom, paused=True, **self._lock_kwargs())
            return
        if want in ("shutdown", "destroyed"):
            if not active:
                return
            predicted["state"] = "shutoff"
            if want == "shutdown":
                self._act("shutdown")
                if not self.check_mode:
                    lc.shutdown(dom, timeout=self.params["timeout"], force=self.params["force"])
            else:
                self._act("destroy")
                if not self.check_mode:
                    lc.destroy(dom)

    def _pending_restart(self, dom, desired, defined_now, predicted):
        """A running guest whose definition differs from what it runs: restart it, or say so."""
        if dom is None or predicted["state"] not in ACTIVE_STATES or not is_active(dom):
            return
        # what the guest runs after the changes it takes live, seen through the desired definition
        drift = compare(desired, apply_live_changes(self, dom, desired, prepare_for_define), ignore=LIVE_IGNORE)
        if not drift.changed:
            return
        self.result["pending_differences"] = drift.differences
        if not self.params["restart_on_change"]:
            self.result["pending_restart"] = True
            self.recorder.record("pending_restart", detail="the new definition applies at the next boot")
            return
        self._act("restart")
        if self.check_mode:
            return
        target = "paused" if state_name(dom) == "paused" else "running"
        self.lifecycle.shutdown(dom, timeout=self.params["timeout"], force=self.params["force"])
        self.lifecycle.start(dom, acquire=self.lock["acquire"], paused=(target == "paused"), **self._lock_kwargs())

    # ------------------------------------------------------------------ absent
    def _seed_volume(self, desired):
        """The cloud-init seed volume this run builds before it defines the guest, as (pool, volume)."""
        if not (getattr(self, "_spec", None) or {}).get("cloud_init"):
            return ()
        _want, pool, volume = seed_of(desired)
        return ((pool, volume),) if volume else ()

    def _absent(self, dom):
        if dom is None:
            self.result["diff"] = {"before": "", "after": ""}
            return self._finish(None)
        existing = read_xml(dom, DOMAIN)
        persistent = bool(dom.isPersistent())
        state = state_name(dom)
        self.result["diff"] = self._diff(
            diff_text(to_text(existing), state, persistent and dom.autostart()), "", "absent"
        )
        storage = self._storage_of(existing) if self.params["remove_storage"] else []
        if is_active(dom):
            self._act("destroy")
            if not self.check_mode:
                self.lifecycle.destroy(dom)
        if persistent:
            self._act("undefine")
            if not self.check_mode:
                self._undefine(dom)
        remove_seed(self, existing)
        if storage:
            self._act("remove_storage")
            self.result["removed_storage"] = storage
            if not self.check_mode:
                self._remove_storage(storage)
        self.result["domain"] = None
        return self._finish(None)

    def _undefine(self, dom):
        names = [n.upper() for n in self.params["undefine"]]
        if "NVRAM" not in names:
            names.append("KEEP_NVRAM")
        flags = self.conn.profile.undefine_flags_value(names)
        with libvirt_errors("cannot undefine {}".format(self.name)):
            if flags:
                dom.undefineFlags(flags)
            else:
                dom.undefine()
        self.recorder.record("undefined", detail="flags: {}".format(", ".join(sorted(names)) or "none"))

    def _storage_of(self, root):
        out = []
        for d in domain_disks(root):
            if d["device"] != "disk" or d["readonly"] or d["shareable"]:
                continue
            if d["type"] == "volume":
                out.append({"pool": d["pool"], "volume": d["volume"], "path": None})
            elif d["type"] in ("file", "block") and d["path"]:
                out.append({"pool": None, "volume": None, "path": d["path"]})
        return out

    def _remove_storage(self, storage):
        for item in storage:
            vol = None
            try:
                if item["pool"]:
                    vol = self.conn.virt.storagePoolLookupByName(item["pool"]).storageVolLookupByName(item["volume"])
                else:
                    vol = self.conn.virt.storageVolLookupByPath(item["path"])
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (error_code("NO_STORAGE_VOL"), error_code("NO_STORAGE_POOL")):
                    raise VirtError(
                        "cannot look up the storage of {}: {}".format(self.name, exc.get_error_message())
                    ) from None
            if vol is not None:
                with libvirt_errors("cannot delete volume {}".format(item["volume"] or item["path"])):
                    vol.delete(0)
            elif item["path"] and self.conn.local and os.path.isfile(item["path"]):
                try:
                    os.unlink(item["path"])
                except OSError as exc:
                    raise VirtError("cannot remove {}: {}".format(item["path"], exc.strerror)) from None
            self.recorder.record("storage_removed", resources=[item["path"] or "{pool}/{volume}".format(**item)])


LOCK_OPTIONS_DEFAULTS = dict((k, v.get("default")) for k, v in LOCK_OPTIONS.items())

__all__ = [
    "DomainManager",
    "DOMAIN_ARGUMENT_SPEC",
    "DOMAIN_MUTUALLY_EXCLUSIVE",
    "domain_summary",
    "desired_from_xml",
    "prepare_for_define",
]
