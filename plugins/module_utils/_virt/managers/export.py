# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's networks, storage pools, volumes and domains as the options of ``lockstep.virt.apply``, chosen so
that ``apply`` with them changes nothing on that host and recreates them on an empty one. Nothing on the
host is changed.

Each object is read once (objects.HostCache). A network, pool or domain is exported as a ``spec`` when the
spec read back from its definition (reporters/export.py) is one its manager - the very code ``apply`` runs -
finds nothing to change with, in check mode, on this host; otherwise as its inactive XML. That is why this
lives with the managers and not with the reporters: the test that decides between the two forms is the
managers' own comparison, not a second copy of it. Passwords are never exported (dropped, with a warning
naming the object); transient objects are skipped (``apply`` would make them persistent), with the reason.
"""

from __future__ import annotations

import copy

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError, VirtError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import read_lock_config
from ansible_collections.lockstep.virt.plugins.module_utils._virt.lifecycle import state_name
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.apply import KINDS, item_validator
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.pool import RUNTIME_TAGS
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.volume import volume_facts
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, POOL, VOLUME, HostCache
from ansible_collections.lockstep.virt.plugins.module_utils._virt.reporters.export import (
    EXPORT_KINDS,
    SPEC_OF,
    NoSpec,
    drop_secrets,
    names_filter,
    selected,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.volume import VOLUME_FORMATS
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, to_text

EXPORT_ARGUMENT_SPEC = {
    "include": {"type": "list", "elements": "str", "choices": list(EXPORT_KINDS), "default": list(EXPORT_KINDS)},
    "names": {"type": "raw"},
    "prefer": {"type": "str", "choices": ["spec", "xml"], "default": "spec"},
}

# A domain's state as apply's item takes it; a network's or pool's is active or inactive.
DOMAIN_STATES = {"running": "running", "blocked": "running", "paused": "paused"}
MAX_PATHS = 5  # differences a reason names


def _short(paths):
    paths = list(paths or [])
    return ", ".join(paths[:MAX_PATHS]) + (" ..." if len(paths) > MAX_PATHS else "")


class ExportManager:
    """Read the objects of the kinds ``include`` names (filtered by ``names``) and return them as ``apply``'s
    options (``apply``), how each was exported (``objects``) and what was left out (``skipped``)."""

    def __init__(self, conn, params, check_mode=False, diff_mode=False):
        self.conn, self.params = conn, params
        self.host = None
        self.objects, self.skipped, self.warnings = [], [], []
        self._lock_config = None

    def run(self):
        patterns = names_filter(self.params.get("names"))
        include = self.params["include"]
        self.host = HostCache(self.conn)
        out = {}
        for option, kind, cls, spec, exclusive in KINDS:
            if option not in include:
                continue
            checker = (cls, item_validator(spec, exclusive))
            if kind is VOLUME:
                out[option] = self._volumes(patterns[option], checker)
            else:
                out[option] = [
                    item
                    for item in (
                        self._defined(option, kind, name, checker)
                        for name in self.host.names(kind)
                        if selected(patterns[option], name)
                    )
                    if item is not None
                ]
        result = {"changed": False, "apply": out, "objects": self.objects, "skipped": self.skipped}
        if self.warnings:
            result["warnings"] = self.warnings
        return result

    # ------------------------------------------------------------------ the check
    def _unchanged(self, kind, checker, item):
        """(True, None) when the kind's manager, in check mode on this host, changes nothing with ``item``;
        otherwise (False, why)."""
        cls, validator = checker
        checked = validator.validate(item)
        if checked.error_messages:
            return False, "; ".join(checked.error_messages)
        kwargs = {"host": self.host, "brief": True, "check_mode": True}
        if kind is DOMAIN:
            if self._lock_config is None:
                self._lock_config = read_lock_config(self.conn.profile, local=self.conn.local)
            kwargs["lock_config"] = self._lock_config
        try:
            result = cls(self.conn, checked.validated_parameters, **kwargs).run()
        except VirtError as err:
            return False, err.msg
        if result["changed"]:
            why = _short(result.get("differences")) or ", ".join(result["actions"])
            return False, "apply would {}: {}".format("/".join(result["actions"]), why)
        return True, None

    # ------------------------------------------------------------------ networks, pools, domains
    def _defined(self, option, kind, name, checker):
        noun = "pool" if kind is POOL else kind.noun
        obj = self.host.lookup(kind, name)
        if obj is None:
            return None
        with_label = "{} {}".format(noun, name)
        try:
            persistent = bool(obj.isPersistent())
            active = bool(obj.isActive())
            autostart = bool(obj.autostart()) if persistent else False
            state = state_name(obj) if kind is DOMAIN else None
        except (libvirt.libvirtError, VirtError) as exc:  # the object went away while it was read
            self.skipped.append({"kind": noun, "name": name, "reason": "cannot read it: {}".format(exc)})
            return None
        if not persistent:
            self.skipped.append(
                {
                    "kind": noun,
                    "name": name,
                    "reason": "transient (it has no definition; apply would make it persistent)",
                }
            )
            return None
        if kind is DOMAIN:
            item_state = DOMAIN_STATES.get(state, "shutdown")
        else:
            item_state = "active" if active else "inactive"
        root = copy.deepcopy(self.host.read_xml(obj, kind, secure=kind is DOMAIN))
        for tag in RUNTIME_TAGS if kind is POOL else ():  # how full the pool is: not part of a definition
            for el in elements(root, tag):
                root.remove(el)
        dropped = drop_secrets(root)
        if dropped:
            self.warnings.append(
                "{}: {} left out of the export (passwords are never exported); a host it is applied to gets "
                "none - set it there with lockstep.virt.domain".format(with_label, _short(dropped))
            )
        base = {"name": name, "state": item_state, "autostart": autostart}
        entry = {"kind": noun, "name": name}
        reason = "prefer: xml"
        if self.params["prefer"] == "spec":
            try:
                spec = SPEC_OF[option](root)
            except NoSpec as err:
                reason = "the spec cannot express {}".format(err)
            else:
                item = dict(base, spec=spec)
                same, why = self._unchanged(kind, checker, item)
                if same:
                    entry["source"] = "spec"
                    self.objects.append(entry)
                    return item
                reason = "from the spec, " + why
        item = dict(base, xml=to_text(root))
        entry.update(source="xml", reason=reason)
        same, why = self._unchanged(kind, checker, item)
        if not same:
            entry["unchanged"] = False
            self.warnings.append("{}: exported as XML, but {}".format(with_label, why))
        self.objects.append(entry)
        return item

    # ------------------------------------------------------------------ volumes
    def _volumes(self, patterns, checker):
        """Every selected volume of every active pool as the options of lockstep.virt.volume: capacity,
        format and backing volume, never its content; a backing volume before its overlays."""
        items = []
        for pool in self.host.names(POOL):
            paths = {}
            for name in self.host.names(VOLUME, pool):
                vol = self.host.volume(pool, name)
                try:
                    facts = volume_facts(vol, pool)
                except (VirtError, ValidationError) as err:
                    self.skipped.append({"kind": "volume", "pool": pool, "name": name, "reason": err.msg})
                    continue
                paths[facts["path"]] = name
                if selected(patterns, name):
                    items.append(facts)
            for facts in items:
                if facts["pool"] == pool and facts.get("backing"):
                    facts["backing_volume"] = paths.get(facts["backing"]["path"]) or facts["backing"]["path"]
        out = []
        for facts in _backing_first(items):
            item = {"pool": facts["pool"], "name": facts["name"], "capacity": facts["capacity"]}
            entry = {"kind": "volume", "pool": facts["pool"], "name": facts["name"], "source": "options"}
            if facts.get("format") in VOLUME_FORMATS:
                item["format"] = facts["format"]
            elif facts.get("format"):
                entry["reason"] = "format {} is not one lockstep.virt.volume creates: created as raw".format(
                    facts["format"]
                )
            if facts.get("backing_volume"):
                item["backing_volume"] = facts["backing_volume"]
            same, why = self._unchanged(VOLUME, checker, dict(item))
            if not same:
                entry["unchanged"] = False
                self.warnings.append("volume {}/{}: {}".format(facts["pool"], facts["name"], why))
            self.objects.append(entry)
            out.append(item)
        return out


def _backing_first(volumes):
    """``volumes`` ordered so that a backing volume of the same pool comes before its overlays."""
    done, out = set(), []
    pending = list(volumes)
    while pending:
        ready = [
            v
            for v in pending
            if not v.get("backing_volume")
            or (v["pool"], v["backing_volume"]) in done
            or (v["pool"], v["backing_volume"]) not in set((p["pool"], p["name"]) for p in pending)
        ]
        ready = ready or pending[:1]  # a cycle cannot be; never loop
        for v in ready:
            pending.remove(v)
            done.add((v["pool"], v["name"]))
            out.append(v)
    return out


__all__ = ["EXPORT_ARGUMENT_SPEC", "ExportManager"]
