# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A migrating guest's leases as seen from the source host, and how to say who holds them.

:class:`LeaseView` classifies each of the guest's lease resources by its ``holder``:

- ``source``: this host's lock manager holds it for the guest (virtlockd's lock, or a lease in this host's
  sanlock daemon);
- ``source_shared``: a shareable disk's shared lock that the source's virtlockd keeps for other guests there
  too, so the guest's own share cannot be seen in it (below);
- ``dest``: the destination holds it (sanlock only: the lease area names the holder's host);
- ``other``: another holder. With virtlockd the probe from the source host cannot tell which process that
  is, only that it is not the source's virtlockd; with sanlock it is a host that is neither;
- ``unknown``: the probe could not verify who holds it (never taken as released);
- null: not held.

A shareable disk is locked shared (F_RDLCK), and the source's virtlockd keeps that one lock while any guest
there sharing the disk runs. A shared lock is not an exclusive holder: it never keeps the destination from
taking its own share. The only question for the migrating guest is whether its own QEMU process still holds
its share. When no other guest on the source shares the disk, the source's lock can only be the guest's own
(``source``); when others do, the lock cannot tell (``source_shared``): the evidence is then libvirt's lock
release at the source's vCPU stop, which drops every lease of that QEMU process in one request
(``virLockManagerLockDaemonRelease``) and precedes the source's SUSPENDED event.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.leases import (
    describe_holder,
    domain_lease_resources,
    own_share,
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
    same paths everywhere (it must, or the hosts would not protect each other; preflight compares the
    destination's). ``sharers(path)`` names the other guests on the source sharing a disk; the migration
    sets ``source_host``/``dest_host`` (the hosts' own names) so that sanlock's holder host can be named.
    """

    def __init__(self, lock_config, here_pids=None, resolve_volume=None, sanlock_probe=None, sharers=None):
        self.lock_config = lock_config
        self.sanlock = lock_config is not None and lock_config.manager == "sanlock"
        self.here_pids = (
            set(here_pids)
            if here_pids is not None
            else (virtlockd_pids() if lock_config is not None and lock_config.probeable and not self.sanlock else set())
        )
        self.resolve_volume = resolve_volume
        self.sharers = sharers
        self.sanlock_probe = sanlock_probe
        if self.sanlock and sanlock_probe is None and lock_config.local:
            self.sanlock_probe = sanlock_probe_for(lock_config)
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
            resources,
            self.lock_config,
            here_pids=self.here_pids,
            sanlock_probe=self.sanlock_probe,
            sharers=self.sharers,
        )
        for r in probed:
            r["holder"] = self.classify(r)
            out.append(r)
        return out

    def classify(self, r):
        return classify(r, self.source_host, self.dest_host)


def classify(r, source_host=None, dest_host=None):
    """``holder`` of one probed lease (see the module's description); the host names tell sanlock's holders."""
    if r.get("held") is None:
        return "unknown" if r.get("resource") else None
    if not r.get("sanlock") and r.get("shared") and r.get("lock") == "shared":
        own = own_share(r)
        if own:
            return "source"
        if own is None:
            return "source_shared"
        return "other"
    if r.get("held_here"):
        return "source"
    if not r.get("held"):
        return None
    if r.get("sanlock"):
        host = r.get("holder_host")
        if host and dest_host and _same_host(host, dest_host):
            return "dest"
        if host and source_host and _same_host(host, source_host):
            return "source"  # held by the source host's daemon for a process not in its list: not released
    return "other"


def _same_host(a, b):
    """Host names compared as hosts name themselves: case-insensitive, short name against FQDN."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b or a.split(".")[0] == b.split(".")[0]


def not_released(r):
    """The source may still hold it for the guest: held by the source, or not verifiable."""
    return r.get("holder") in ("source", "unknown")


def source_keeps(r):
    """Consistent with the guest running on the source holding it (its share may be the one kept there)."""
    return r.get("holder") in ("source", "source_shared")


def dest_holds(r):
    """The destination holds it, as far as the probe can tell: sanlock names the destination's host;
    virtlockd's lock seen from the source shows only a holder that is not the source's virtlockd; a shareable
    disk is locked shared and not by the guest's own share on the source (the destination's share may hide
    behind the source's lock for its other guests: F_GETLK reports one holder)."""
    if r.get("holder") == "dest":
        return True
    if r.get("shared") and not r.get("sanlock"):
        return r.get("lock") == "shared" and r.get("holder") in ("other", "source_shared")
    return r.get("holder") == "other" and not r.get("sanlock")


def held_elsewhere(r):
    """Held (or possibly held) by something other than the source."""
    return r.get("holder") in ("dest", "other", "unknown")


def blocks_dest(r):
    """A holder that would keep the destination from taking the lease: any lock on a non-shareable resource
    held by neither the source nor, already, the destination for this guest; an exclusive one on a shareable
    disk."""
    if r.get("holder") != "other":
        return False
    return not r.get("shared") or r.get("lock") == "exclusive"


def shared_unattributed(leases):
    """The shareable disks whose shared lock on the source cannot be told from the guest's own share."""
    return [r for r in leases if r.get("holder") == "source_shared"]


def shared_check(leases, source):
    """What a checkpoint's ``check`` adds for shareable disks: the evidence the probe has and has not."""
    shared = [r for r in leases if r.get("shared") and r.get("resource")]
    if not shared:
        return ""
    parts = []
    for r in shared:
        name = r.get("disk") or r["resource"]
        if r.get("holder") == "source_shared":
            parts.append(
                "shareable disk {}: {}'s virtlockd keeps one shared lock for every guest there sharing it ({}), "
                "so the lock cannot show this guest's own share; the evidence is libvirt's release of every "
                "lease of the guest's QEMU process at its vCPU stop (one request, before the SUSPENDED event)".format(
                    name, source, ", ".join(r.get("sharers") or [])
                )
            )
        elif r.get("lock") == "shared":
            parts.append(
                "shareable disk {}: locked shared (F_RDLCK), which excludes no other share; F_GETLK names one "
                "holder and /proc shows whether {}'s virtlockd holds one".format(name, source)
            )
        else:
            parts.append("shareable disk {}: {}".format(name, "not held" if not r.get("held") else "locked exclusive"))
    return "; " + "; ".join(parts)


def lease_summary(probed):
    """Compact per-checkpoint form: [{resource, kind, held, holder, holder_pid, holder_process, holder_host,
    lock, sharers}]."""
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
                "lock": r.get("lock"),
                "sharers": list(r.get("sharers") or []),
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
    """Distinct holders ("source", "source_shared", "dest", "other", "unknown") of the leases."""
    return sorted(set(r["holder"] for r in probed if r.get("holder")))


def describe(probed, source, dest):
    """Human text: who holds what, naming hosts."""
    parts = []
    for r in probed:
        who = describe_holder(r)
        shared = "shared " if r.get("lock") == "shared" else ""
        if r.get("sanlock") and r.get("holder") in ("source", "dest", "other"):
            who = "{} ({})".format(describe_holder(r), r["holder"])
        elif r.get("holder") == "source":
            who = "{}held by {}'s virtlockd (pid {})".format(shared, source, r.get("holder_pid"))
        elif r.get("holder") == "source_shared":
            who = "shared lock kept by {}'s virtlockd for {} sharing it there; not an exclusive holder".format(
                source, ", ".join(r.get("sharers") or []) or "other guests"
            )
        elif r.get("holder") == "other":
            proc = _process_name(r.get("holder_pid"))
            who = "{}held by pid {}{}, not {}'s virtlockd".format(
                shared, r.get("holder_pid"), " ({})".format(proc) if proc else "", source
            )
        name = r.get("key") or r.get("disk") or r["resource"]
        parts.append("{} {} ({}): {}".format(r["kind"], name, r["resource"], who))
    return "; ".join(parts) if parts else "no leases"
