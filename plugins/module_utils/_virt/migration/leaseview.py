# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A migrating guest's leases as seen from the source host, and how to say who holds them.

:class:`LeaseView` classifies each of the guest's lease resources as held by the ``source`` (this host's
virtlockd), by ``other`` (another holder: the destination's virtlockd once it resumed, or anything else
that holds the lock) or not held. From the source host the probe cannot tell which other process holds a
lease, only that it is not the source's virtlockd: the checkpoints say exactly that.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    describe_holder,
    domain_lease_resources,
    probe_resources,
    public_lease,
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

    def __init__(self, lock_config, here_pids=None, resolve_volume=None):
        self.lock_config = lock_config
        self.here_pids = (
            set(here_pids)
            if here_pids is not None
            else (virtlockd_pids() if lock_config is not None and lock_config.probeable else set())
        )
        self.resolve_volume = resolve_volume

    @property
    def probeable(self):
        return self.lock_config is not None and self.lock_config.probeable

    def expected(self, xml_text):
        root = parse_xml(xml_text, "domain", "libvirt's domain XML")
        return [r for r in domain_lease_resources(root, self.lock_config, self.resolve_volume) if r["resource"]]

    def probe(self, resources):
        out = []
        for r in probe_resources(resources, self.lock_config, here_pids=self.here_pids):
            if r.get("held_here"):
                r["holder"] = "source"
            elif r.get("held"):
                r["holder"] = "other"
            else:
                r["holder"] = None
            out.append(r)
        return out


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
    """Distinct holders ("source"/"other") of the held leases."""
    return sorted(set(r["holder"] for r in probed if r.get("holder")))


def describe(probed, source, dest):
    """Human text: who holds what, naming hosts."""
    parts = []
    for r in probed:
        who = describe_holder(r)
        if r.get("holder") == "source":
            who = "held by {}'s virtlockd (pid {})".format(source, r.get("holder_pid"))
        elif r.get("holder") == "other":
            proc = _process_name(r.get("holder_pid"))
            who = "held by pid {}{}, not {}'s virtlockd".format(
                r.get("holder_pid"), " ({})".format(proc) if proc else "", source
            )
        name = r.get("key") or r.get("disk") or r["resource"]
        parts.append("{} {} ({}): {}".format(r["kind"], name, r["resource"], who))
    return "; ".join(parts) if parts else "no leases"
