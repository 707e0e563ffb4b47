# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The domain manager: the converge sequence of managers.base.DefinedManager, filled in for domains.

It never calls exit_json/fail_json: :meth:`DomainManager.run` returns the result dict or raises
VirtError (with partial results in ``err.result``). A single-object module and a batch module use
it the same way.
"""

from __future__ import annotations

import os

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.addresses import (
    guest_addresses,
    wait_for_addresses,
)
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
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.base import (
    DEFINITION_MUTUALLY_EXCLUSIVE,
    DefinedManager,
    definition_argument_spec,
    keep_generated,
    user_xml,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN
from ansible_collections.lockstep.virt.plugins.module_utils._virt.references import check_domain_references
from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.domain_info import domain_summary
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.domain import (
    DOMAIN_SPEC_OPTIONS,
    build_domain_xml,
    normalize_domain_spec,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import as_running, compare, elements, etree

DOMAIN_STATES = ["present", "absent", "running", "paused", "shutdown", "destroyed"]
UNDEFINE_CHOICES = ["nvram", "managed_save", "snapshots_metadata", "checkpoints_metadata"]

LOCK_OPTIONS = {
    "acquire": {"type": "str", "choices": [ACQUIRE_AFTER_CREATE, ACQUIRE_LIBVIRT], "default": ACQUIRE_AFTER_CREATE},
    "required": {"type": "bool", "default": False},
    "acquire_timeout": {"type": "int", "default": 0},
    "verify": {"type": "bool", "default": True},
}

DOMAIN_ARGUMENT_SPEC = definition_argument_spec(
    DOMAIN_STATES,
    DOMAIN_SPEC_OPTIONS,
    timeout={"type": "int", "default": 60},
    force={"type": "bool", "default": False},
    remove_storage={"type": "bool", "default": False},
    undefine={"type": "list", "elements": "str", "choices": UNDEFINE_CHOICES, "default": list(UNDEFINE_CHOICES)},
    lock={"type": "dict", "options": LOCK_OPTIONS, "default": {}, "apply_defaults": True},
    wait_for={"type": "str", "choices": ["address"]},
    wait_timeout={"type": "int", "default": 300},
)
DOMAIN_MUTUALLY_EXCLUSIVE = DEFINITION_MUTUALLY_EXCLUSIVE

ACTIVE_STATES = ("running", "blocked", "paused", "shutdown", "crashed", "pmsuspended")
# Parts of a live XML that differ from the definition without a pending change.
LIVE_IGNORE = ("cpu",)


def desired_from_xml(name, text):
    """Parse user XML for domain ``name``: safe parse, <name> check, managed mark."""
    root = user_xml(name, text, "domain")
    mark_managed(root, "domain")
    return root


def prepare_for_define(desired, existing):
    """Copy of ``desired`` keeping what libvirt generated for ``existing``: its UUID and the MAC
    addresses of interfaces the desired XML gives none (so a redefinition does not renumber NICs)."""
    out = keep_generated(desired, existing)
    if existing is None:
        return out
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


class DomainManager(DefinedManager):
    """Bring one domain to the state described by the module parameters: the converge sequence of
    :class:`DefinedManager`, with a domain's states (lease-checked starts through Lifecycle), its
    references and cloud-init seed checked before it is defined, and its live changes."""

    KIND = DOMAIN
    RESULT = {"pending_restart": False, "warnings": []}
    SUMMARY_KEY = "domain"
    NEW_STATE = "shutoff"
    STOP_ACTION = "destroy"
    VALIDATE_FLAG = "VIR_DOMAIN_DEFINE_VALIDATE"

    def __init__(
        self,
        conn,
        params,
        check_mode=False,
        diff_mode=False,
        lock_config=None,
        recorder=None,
        lifecycle=None,
        host=None,
        brief=False,
    ):
        super().__init__(conn, params, check_mode, diff_mode, host=host, brief=brief)
        self.lock = dict(LOCK_OPTIONS_DEFAULTS)
        self.lock.update((k, v) for k, v in (params.get("lock") or {}).items() if v is not None)
        self.lock_config = lock_config or read_lock_config(conn.profile, local=conn.local)
        self.recorder = recorder or CheckpointRecorder(host=conn.hostname)
        self.lifecycle = lifecycle or Lifecycle(
            conn, self.recorder, self.lock_config, resolve_volume=self.host.volume_path
        )
        self._spec = None

    # ------------------------------------------------------------------ the kind's steps
    def _validate(self):
        super()._validate()
        p = self.params
        if p.get("wait_for") and p["state"] != "running":
            raise ValidationError("wait_for: {} needs state: running (got {})".format(p["wait_for"], p["state"]))
        if (p.get("wait_timeout") or 0) < 0:
            raise ValidationError("wait_timeout must be 0 or more seconds, got {}".format(p["wait_timeout"]))

    def _after(self, obj, predicted):
        """``wait_for: address``: the guest's addresses (agent, then DHCP lease), waited for up to
        ``wait_timeout``; never a change. In check mode they are read once, without waiting or failing."""
        if self.params.get("wait_for") != "address":
            return
        if self.check_mode:
            runs = obj is not None and self.existed and is_active(obj)
            self.result["addresses"] = guest_addresses(obj)[0] if runs else []
            return
        lc = self.lifecycle
        self.result["addresses"] = wait_for_addresses(obj, self.params["wait_timeout"], sleep=lc.sleep, clock=lc.clock)

    def _from_xml(self, text):
        return desired_from_xml(self.name, text)

    def _from_spec(self, spec):
        self._spec = normalize_domain_spec(spec, validated=True)
        return None  # built once the existing definition (its UUID) is known

    def _desired(self, existing):
        if self._built is not None:
            return self._built
        if self._spec is not None:
            uuid = None
            if existing is not None:
                found = elements(existing, "uuid")
                uuid = found[0].text.strip() if found else None
            return build_domain_xml(self.name, self._spec, uuid=uuid, lock_config=self.lock_config, normalized=True)
        return None

    def _check_desired(self, desired, existing):
        # a missing pool, volume or network fails before anything changes
        check_domain_references(self.conn, self.name, desired, provided=self._seed_volume(desired), host=self.host)
        ensure_seed(self, existing, desired)  # the cloud-init seed volume, before the definition names it

    def _define_xml(self, text, flags=0):
        return self.conn.virt.defineXMLFlags(text, flags)

    def _keep_generated(self, desired, existing):
        return prepare_for_define(desired, existing)

    def _defined(self, obj, existing):
        self.recorder.record("defined", detail="new definition" if existing is None else "definition updated")
        try:
            self.lifecycle.prepare_vm_leases(self.lifecycle.expected_leases(obj, inactive=True))
        except VirtError as err:
            self.result["warnings"].append(err.msg)

    def _is_active(self, obj):
        return is_active(obj)

    def _state_name(self, obj, active):
        return state_name(obj)

    def _runs(self, obj, before, predicted):
        return predicted["state"] in ACTIVE_STATES and is_active(obj)

    def _running_differences(self, obj, desired):
        # what the guest runs after the changes it takes live, seen through the desired definition
        live = apply_live_changes(self, obj, desired, prepare_for_define)
        drift = compare(as_running(desired, live), live, ignore=LIVE_IGNORE, texts=False)
        return drift.differences if drift.changed else []

    def _note_pending(self):
        self.recorder.record("pending_restart", detail="the new definition applies at the next boot")

    def _restart(self, obj):
        paused = state_name(obj) == "paused"
        self.lifecycle.shutdown(obj, timeout=self.params["timeout"], force=self.params["force"])
        self.lifecycle.start(obj, acquire=self.lock["acquire"], paused=paused, **self._lock_kwargs())

    def _stop(self, obj):
        self.lifecycle.destroy(obj)

    def _diff_extra(self):
        return diff_lines(self.result)

    def _summary(self, obj, predicted, desired):
        if obj is None:  # check mode, new domain
            uuid = elements(desired, "uuid")
            return {
                "name": self.name,
                "uuid": uuid[0].text if uuid else None,
                "id": None,
                "state": predicted["state"],
                "persistent": True,
                "autostart": predicted["autostart"],
            }
        out = domain_summary(obj)
        if self.check_mode:  # what the domain would be
            out.update(predicted)
        if out["state"] == "blocked":
            out["state"] = "running"
        return out

    def _finish(self, obj, predicted, desired):
        super()._finish(obj, predicted, desired)
        r = self.result
        if not self.brief:
            r["leases"] = []
            if obj is not None and predicted is not None:
                try:
                    r["leases"] = [public_lease(x) for x in self.lifecycle.probe(obj, inactive=not is_active(obj))]
                except VirtError as err:
                    r["warnings"].append("cannot probe leases: {}".format(err.msg))
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

    def report(self, dom):
        """The guest as it is now, as the domain module reports it: ``domain``, ``leases``,
        ``lock_checkpoints`` (and ``warnings``) in the result."""
        return self._finish(dom, {} if dom is not None else None, None)

    def with_result(self, err):
        """Attach partial results, with the lock checkpoints so far, to ``err`` and return it."""
        super().with_result(err)
        err.result["lock_checkpoints"] = self.recorder.as_list()
        return err

    def _lock_kwargs(self):
        return {
            "required": self.lock["required"],
            "acquire_timeout": self.lock["acquire_timeout"],
            "verify": self.lock["verify"],
        }

    def _state(self, obj, predicted):
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
                    lc.resume(obj, **self._lock_kwargs())
                return
            if cur == "pmsuspended":
                self._act("wakeup")
                if not self.check_mode:
                    with libvirt_errors("cannot wake up {}".format(self.name)):
                        obj.pMWakeup(0)
                return
            if active:  # crashed but still there
                self._act("destroy")
                if not self.check_mode:
                    lc.destroy(obj)
            self._act("start")
            if not self.check_mode:
                lc.start(obj, acquire=self.lock["acquire"], **self._lock_kwargs())
            return
        if want == "paused":
            if cur == "paused":
                return
            predicted["state"] = "paused"
            if cur in ("running", "blocked"):
                self._act("pause")
                if not self.check_mode:
                    lc.suspend(obj)
                return
            if active:
                self._act("destroy")
                if not self.check_mode:
                    lc.destroy(obj)
            self._act("start_paused")
            if not self.check_mode:
                lc.start(obj, paused=True, **self._lock_kwargs())
            return
        if want in ("shutdown", "destroyed"):
            if not active:
                return
            predicted["state"] = "shutoff"
            if want == "shutdown":
                self._act("shutdown")
                if not self.check_mode:
                    lc.shutdown(obj, timeout=self.params["timeout"], force=self.params["force"])
            else:
                self._act("destroy")
                if not self.check_mode:
                    lc.destroy(obj)

    # ------------------------------------------------------------------ absent
    def _seed_volume(self, desired):
        """The cloud-init seed volume this run builds before it defines the guest, as (pool, volume)."""
        if not (self._spec or {}).get("cloud_init"):
            return ()
        _want, pool, volume = seed_of(desired)
        return ((pool, volume),) if volume else ()

    def _before_remove(self, obj, existing, before):
        self._storage = self._storage_of(existing) if self.params["remove_storage"] else []

    def _after_remove(self, obj, existing):
        remove_seed(self, existing)
        if self._storage:
            self._act("remove_storage")
            self.result["removed_storage"] = self._storage
            if not self.check_mode:
                self._remove_storage(self._storage)

    def _undefine(self, obj):
        names = [n.upper() for n in self.params["undefine"]]
        if "NVRAM" not in names:
            names.append("KEEP_NVRAM")
        flags = self.conn.profile.undefine_flags_value(names)
        with libvirt_errors("cannot undefine {}".format(self.name)):
            if flags:
                obj.undefineFlags(flags)
            else:
                obj.undefine()
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
            if item["pool"]:
                vol = self.host.volume(item["pool"], item["volume"])
            else:
                try:
                    vol = self.conn.virt.storageVolLookupByPath(item["path"])
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != error_code("NO_STORAGE_VOL"):
                        raise VirtError(
                            "cannot look up the storage of {}: {}".format(self.name, exc.get_error_message())
                        ) from None
                    vol = None
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
    "desired_from_xml",
    "prepare_for_define",
]
