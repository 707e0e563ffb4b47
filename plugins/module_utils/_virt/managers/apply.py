# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A whole host converged in one run: networks, storage pools, volumes and domains, each brought to its
state by its own manager (the same code as the single-object modules), over one connection and one
bulk read of the host (objects.HostCache).

Order: what is to be present, in dependency order (networks, pools, volumes, domains); then what is to
go - the items whose state removes them and, with ``prune``, the marked objects nobody listed - in the
reverse order (domains, volumes, pools, networks). An object that fails does not stop the others: what
depends on it (a volume in a failed pool, a domain naming a failed network, pool or volume) is skipped
with the reason, the rest is applied, and the run fails at the end naming every object that did not
reach its state.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    DependencyError,
    ValidationError,
    VirtError,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import read_lock_config
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managed import is_managed
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.domain import (
    DOMAIN_ARGUMENT_SPEC,
    DOMAIN_MUTUALLY_EXCLUSIVE,
    LOCK_OPTIONS,
    DomainManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.network import (
    NETWORK_ARGUMENT_SPEC,
    NETWORK_MUTUALLY_EXCLUSIVE,
    NetworkManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.pool import (
    POOL_ARGUMENT_SPEC,
    POOL_MUTUALLY_EXCLUSIVE,
    PoolManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.volume import (
    VOLUME_ARGUMENT_SPEC,
    VOLUME_MUTUALLY_EXCLUSIVE,
    VolumeManager,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import (
    DOMAIN,
    NETWORK,
    POOL,
    VOLUME,
    HostCache,
)

# (option, kind, manager, argument spec and mutually exclusive options of the single-object module),
# in the order they are applied
KINDS = (
    ("networks", NETWORK, NetworkManager, NETWORK_ARGUMENT_SPEC, NETWORK_MUTUALLY_EXCLUSIVE),
    ("pools", POOL, PoolManager, POOL_ARGUMENT_SPEC, POOL_MUTUALLY_EXCLUSIVE),
    ("volumes", VOLUME, VolumeManager, VOLUME_ARGUMENT_SPEC, VOLUME_MUTUALLY_EXCLUSIVE),
    ("domains", DOMAIN, DomainManager, DOMAIN_ARGUMENT_SPEC, DOMAIN_MUTUALLY_EXCLUSIVE),
)

# The items are validated here, each by its single-object module's own argument spec (less uri).
APPLY_ARGUMENT_SPEC = {
    "networks": {"type": "list", "elements": "dict"},
    "pools": {"type": "list", "elements": "dict"},
    "volumes": {"type": "list", "elements": "dict"},
    "domains": {"type": "list", "elements": "dict"},
    "prune": {"type": "bool", "default": False},
    "prune_pattern": {"type": "str"},
    "lock": {"type": "dict", "options": LOCK_OPTIONS, "default": {}, "apply_defaults": True},
}

MSG_OBJECTS = 10  # failed objects the message names (all are in the results)
SUMMARY_KEYS = ("created", "changed", "unchanged", "removed", "failed", "skipped")


def item_validator(spec, mutually_exclusive):
    return ArgumentSpecValidator(dict((k, v) for k, v in spec.items() if k != "uri"), mutually_exclusive)


def _label(kind, item):
    name = item.get("name") if isinstance(item, dict) else None
    if kind is VOLUME and name:
        return "{}/{}".format(item.get("pool"), name)
    return name


class ApplyManager:
    """Converge every object listed in ``params`` on the host of ``conn``; :meth:`run` returns the result
    or raises VirtError carrying it (``results``, ``summary``) when an object failed."""

    def __init__(self, conn, params, check_mode=False, diff_mode=False):
        self.conn, self.params = conn, params
        self.modes = {"check_mode": check_mode, "diff_mode": diff_mode}  # handed to every object's manager
        self.results, self.host, self._lock_config = [], None, None

    # ------------------------------------------------------------------ building managers
    def _lock_config_once(self):
        if self._lock_config is None:
            self._lock_config = read_lock_config(self.conn.profile, local=self.conn.local)
        return self._lock_config

    def _manager(self, kind, cls, params):
        kwargs = {"host": self.host, "brief": True}
        if kind is DOMAIN:
            kwargs["lock_config"] = self._lock_config_once()
        kwargs.update(self.modes)
        return cls(self.conn, params, **kwargs)

    def _items(self, option, kind, spec, mutually_exclusive):
        """The items of ``option``, each validated by the single-object module's argument spec; the errors."""
        validator = item_validator(spec, mutually_exclusive)
        items, errors, seen = [], [], set()
        for index, raw in enumerate(self.params.get(option) or []):
            where = "{}[{}]".format(option, index) + (" ({})".format(_label(kind, raw)) if _label(kind, raw) else "")
            if not isinstance(raw, dict):
                errors.append("{}: must be a dictionary".format(where))
                continue
            if kind is DOMAIN and raw.get("lock") is None:
                raw = dict(raw, lock=self.params["lock"])  # lock: for all, where an item gives none
            checked = validator.validate(raw)
            if checked.error_messages:
                for err in checked.errors:
                    unsupported = type(err).__name__ == "UnsupportedError"
                    errors.append("{}: {}{}".format(where, "unsupported option " if unsupported else "", err))
                continue
            item = checked.validated_parameters
            if _label(kind, item) in seen:
                errors.append("{}: {} is listed twice".format(where, _label(kind, item)))
                continue
            seen.add(_label(kind, item))
            items.append(item)
        return items, errors

    def _planned(self):
        """[(kind, manager)] of every listed item, validated (nothing changes when one is bad)."""
        out = []
        errors = []
        for option, kind, cls, spec, exclusive in KINDS:
            items, bad = self._items(option, kind, spec, exclusive)
            errors.extend(bad)
            for item in items:
                manager = self._manager(kind, cls, item)
                try:
                    manager.validate()
                except ValidationError as err:
                    errors.append("{} {}: {}".format(kind.noun, _label(kind, item), err.msg))
                out.append((kind, manager))
        if errors:
            raise ValidationError("nothing was changed: " + "; ".join(errors))
        return out

    # ------------------------------------------------------------------ run
    def run(self):
        self.host = HostCache(self.conn)
        planned = self._planned()
        removing = [(k, m) for k, m in planned if m.params.get("state") in m.REMOVE_STATES]
        for kind, manager in planned:
            if (kind, manager) not in removing:
                self._apply(kind, manager)
        if self.params["prune"]:
            removing += self._prunable(planned)
        order = [k[1] for k in reversed(KINDS)]
        for kind, manager in sorted(removing, key=lambda x: order.index(x[0])):
            self._apply(kind, manager)
        return self._report()

    def _apply(self, kind, manager):
        entry = {"kind": "pool" if kind is POOL else kind.noun, "name": manager.name}
        pool = manager.params.get("pool") if kind is VOLUME else None
        if pool is not None:
            entry["pool"] = pool
        try:
            entry.update(manager.run())
            entry.update(outcome=manager.outcome(), failed=False)
        except VirtError as err:
            entry.update(err.result)
            entry.update(failed=True, msg=err.msg, outcome="skipped" if isinstance(err, DependencyError) else "failed")
            self.host.fail(kind, manager.name, err.msg, pool)
        if kind is POOL and not self.modes["check_mode"] and self.host.lookup(POOL, manager.name) is not None:
            self.host.put(POOL, manager.name, self.host.lookup(POOL, manager.name))  # its volumes are listed anew
        if getattr(manager, "pruned", False):
            entry["pruned"] = True
        self.results.append(entry)

    def _prunable(self, planned):
        """Removal managers for every marked object of a listed kind that no item names and whose name matches
        ``prune_pattern`` when one is given (pools and volumes carry no mark - libvirt keeps no metadata for
        them - so they are never pruned)."""
        pattern = self.params.get("prune_pattern")
        out = []
        for option, kind, cls, spec, exclusive in KINDS:
            if self.params.get(option) is None or kind in (POOL, VOLUME):
                continue
            listed = set(m.name for k, m in planned if k is kind)
            for name in self.host.names(kind):
                obj = self.host.lookup(kind, name)
                if name in listed or (pattern is not None and not fnmatchcase(name, pattern)):
                    continue
                if obj is None or not is_managed(self.host.read_xml(obj, kind)):
                    continue
                raw = {"name": name, "state": "absent"}
                if kind is DOMAIN:
                    raw["lock"] = self.params["lock"]
                params = item_validator(spec, exclusive).validate(raw).validated_parameters
                manager = self._manager(kind, cls, params)
                manager.pruned = True
                out.append((kind, manager))
        return out

    def _report(self):
        summary = dict((k, 0) for k in SUMMARY_KEYS)
        for entry in self.results:
            summary[entry["outcome"]] += 1
        result = {
            "changed": any(e.get("changed") for e in self.results),
            "results": self.results,
            "summary": summary,
        }
        if self.modes["diff_mode"]:  # what Ansible shows with --diff: the objects that changed
            result["diff"] = [e["diff"] for e in self.results if e.get("changed") and e.get("diff")]
        bad = [e for e in self.results if e["failed"]]
        if bad:
            named = "; ".join("{} {}: {}".format(e["kind"], e["name"], e["msg"]) for e in bad[:MSG_OBJECTS])
            if len(bad) > MSG_OBJECTS:
                named += "; and {} more (see results)".format(len(bad) - MSG_OBJECTS)
            raise VirtError(
                "{} of {} objects did not reach their state: {}".format(len(bad), len(self.results), named),
                result=result,
            )
        return result


__all__ = ["APPLY_ARGUMENT_SPEC", "KINDS", "ApplyManager", "item_validator"]
