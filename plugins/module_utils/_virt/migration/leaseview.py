# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A migrating guest's leases as seen from the source host, and how to say who holds them.

:class:`LeaseView` classifies each of the guest's lease resources by its ``holder``:

- ``source``: this host's lock manager holds it (virtlockd's lock, or a lease in this host's sanlock daemon);
- ``dest``: the destination holds it (sanlock only: the lease area names the holder's host);
- ``other``: another holder. With virtlockd the probe from the source host cannot tell which process that
  is, only that it is not the source's virtlockd; with sanlock it is a host that is neither;
- ``unknown``: the probe could not verify who holds it (never taken as released);
- null: not held.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    describe_holder,
    domain_lease_resources,
    probe_resources,
    public_lease,
    sanlock_probe_for,
    virtlockd_pids,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml


def _process_name(pid):
    try:
        with open("/proc/{}/comm".format(pid)) as fh:
            return fh.read().strip()
    except (OSError, TypeError):
        return None


class LeaseView:
    """A guest's leases as seen from the source host.

    Lease names come from the source's lock configuration: a lockspace shared between hosts has the
    same paths everywhere (it must, or the hosts would not protect each other). ``holder`` is
    ``source`` (the source's virtlockd), ``other`` (any other holder: after the destination resumed,
    its virtlockd) or None.
    """

    def __init__(self, lock_config, here_pids=None, resolve_volume=None, sanlock_probe=None):
        self.lock_config = lock_config
        self.sanlock = lock_config is not None and lock_config.manager == "sanlock"
        self.here_pids = (
            set(here_pids)
            if here_pids is not None
            else (virtlockd_pids() if lock_config is not None and lock_config.probeable and not self.sanlock else set())
        )
        self.resolve_volume = resolve_volume
        self.sanlock_probe = sanlock_probe
        if self.sanlock and sanlock_probe is None and lock_config.local:
            self.sanlock_probe = sanlock_probe_for(lock_config)
        # host names, as the hosts call themselves (libvirt's getHostname); the migration sets them
        self.source_host = None
        self.dest_host = None

    @property
    def probeable(self):
        return self.lock_config is not None and self.lock_config.probeable

    def expected(self, xml_text):
        root = parse_xml(xml_text, "domain", "libvirt's domain XML")
        return [r for r in domain_lease_resources(root, self.lock_config, self.resolve_volume) if r["resource"]]

    def probe(self, resources):
        out = []
        probed = probe_resources(
            resources, self.lock_config, here_pids=self.here_pids, sanlock_probe=self.sanlock_probe
        )
        for r in probed:
            r["holder"] = self.classify(r)
            out.append(r)
        return out

    def classify(self, r):
        """source / dest / other / unknown / None (not held) for one probed lease."""
        if r.get("held") is None:
            return "unknown" if r.get("resource") else None
        if r.get("held_here"):
            return "source"
        if not r.get("held"):
            return None
        if r.get("sanlock"):
            host = r.get("holder_host")
            if host and self.dest_host and _same_host(host, self.dest_host):
                return "dest"
            if host and self.source_host and _same_host(host, self.source_host):
                return "source"  # held by the source host's daemon for a process not in its list: not released
            return "other"
        return "other"


def _same_host(a, b):
    """Host names compared as hosts name themselves: case-insensitive, short name against FQDN."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b or a.split(".")[0] == b.split(".")[0]


def not_released(r):
    """The source may still hold it: held by the source, or not verifiable."""
    return r.get("holder") in ("source", "unknown")


def held_by_dest(r):
    """The destination holds it, as far as the probe can tell: sanlock names the destination's host;
    virtlockd's lock seen from the source shows only a holder that is not the source's virtlockd."""
    if r.get("holder") == "dest":
        return True
    return r.get("holder") == "other" and not r.get("sanlock")


def held_elsewhere(r):
    """Held (or possibly held) by something other than the source."""
    return r.get("holder") in ("dest", "other", "unknown")


def lease_summary(probed):
    """Compact per-checkpoint form: [{resource, kind, held, holder, holder_pid, holder_process}]."""
    out = []
    for r in probed:
        out.append(
            {
                "resource": r["resource"],
                "kind": r["kind"],
                "held": r.get("held"),
                "holder": r.get("holder"),
                "holder_pid": r.get("holder_pid"),
                "holder_process": _process_name(r["holder_pid"]) if r.get("holder_pid") else None,
                "holder_host": r.get("holder_host"),
            }
        )
    return out


def public_leases(probed):
    out = []
    for r in probed:
        p = public_lease(r)
        p["holder"] = r.get("holder")
        out.append(p)
    return out


def holders(probed):
    """Distinct holders ("source", "dest", "other", "unknown") of the leases."""
    return sorted(set(r["holder"] for r in probed if r.get("holder")))


def describe(probed, source, dest):
    """Human text: who holds what, naming hosts."""
    parts = []
    for r in probed:
        who = describe_holder(r)
        if r.get("sanlock") and r.get("holder") in ("source", "dest", "other"):
            who = "{} ({})".format(describe_holder(r), r["holder"])
        elif r.get("holder") == "source":
            who = "held by {}'s virtlockd (pid {})".format(source, r.get("holder_pid"))
        elif r.get("holder") == "other":
            proc = _process_name(r.get("holder_pid"))
            who = "held by pid {}{}, not {}'s virtlockd".format(
                r.get("holder_pid"), " ({})".format(proc) if proc else "", source
            )
        name = r.get("key") or r.get("disk") or r["resource"]
        parts.append("{} {} ({}): {}".format(r["kind"], name, r["resource"], who))
    return "; ".join(parts) if parts else "no leases"
