# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A guest's snapshots as facts: the tree, the current one, and the snapshots that keep it from migrating.

Migration. libvirt's QEMU driver refuses to migrate a guest to another host while it has any snapshot
metadata on the source (``cannot migrate domain with N snapshots``, checked in
``qemuMigrationSrcIsAllowed``), internal or external: the metadata lives in the source host's libvirt and
does not move. Internal snapshots live inside the disk images and their metadata cannot be recreated on
the destination: delete them before migrating. External snapshots are overlay files; on shared storage
they are reachable from the destination, so deleting their metadata only
(``VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY``) before the migration and redefining it on the destination
(``VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE``) afterwards keeps them. :func:`migration_blockers` lists them.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError, libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, lookup
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, etree, parse_xml

# The last line of the description of every snapshot the snapshot module created (what ``keep`` may remove).
MANAGED_MARK = "[managed by lockstep.virt.snapshot]"

SNAPSHOT_INFO_ARGUMENT_SPEC = {"domain": {"type": "str", "required": True}}


# --------------------------------------------------------------------------- reading
def _iso(epoch):
    if epoch is None:
        return None
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_description(text):
    """(the user's description, whether the module's mark ends it)."""
    text = text or ""
    if text.rstrip().endswith(MANAGED_MARK):
        return text.rstrip()[: -len(MANAGED_MARK)].rstrip("\n") or None, True
    return text or None, False


def marked_description(description):
    return "{}\n{}".format(description, MANAGED_MARK) if description else MANAGED_MARK


def snapshot_xml(snap):
    with libvirt_errors("cannot read snapshot {}".format(snap.getName())):
        return parse_xml(snap.getXMLDesc(0), "domainsnapshot", "libvirt's snapshot XML")


def describe_snapshot(snap, current=None):
    """{name, parent, created, state, description, managed, current, external, memory, disks} of a snapshot."""
    root = snapshot_xml(snap)
    desc, managed = split_description(root.findtext("description"))
    parent = root.find("parent")
    memory = root.find("memory")
    disks = []
    for d in elements(root.find("disks") if root.find("disks") is not None else etree.Element("x"), "disk"):
        src = d.find("source")
        disks.append(
            {
                "name": d.get("name"),
                "snapshot": d.get("snapshot") or "internal",
                "file": src.get("file") if src is not None else None,
            }
        )
    return {
        "name": snap.getName(),
        "parent": parent.findtext("name") if parent is not None else None,
        "created": _iso(root.findtext("creationTime")),
        "state": root.findtext("state"),
        "description": desc,
        "managed": managed,
        "current": (snap.getName() == current) if current is not None else bool(snap.isCurrent()),
        "external": any(d["snapshot"] == "external" for d in disks)
        or (memory is not None and memory.get("snapshot") == "external"),
        "memory": memory.get("snapshot") if memory is not None else "no",
        "disks": disks,
        "_created_epoch": int(root.findtext("creationTime") or 0),
    }


def current_name(dom):
    try:
        return dom.snapshotCurrent(0).getName() if dom.hasCurrentSnapshot(0) else None
    except libvirt.libvirtError:
        return None


def list_snapshots(dom):
    """A guest's snapshots, parents before children (depth first, children by creation time)."""
    with libvirt_errors("cannot list the snapshots of {}".format(dom.name())):
        snaps = dom.listAllSnapshots(0)
    current = current_name(dom)
    items = [describe_snapshot(s, current or "") for s in snaps]
    by_parent = {}
    for it in items:
        by_parent.setdefault(it["parent"], []).append(it)
    names = set(it["name"] for it in items)
    out = []

    def walk(parent, depth):
        for it in sorted(by_parent.get(parent, []), key=lambda x: (x["_created_epoch"], x["name"])):
            it["depth"] = depth
            it["children"] = [c["name"] for c in sorted(by_parent.get(it["name"], []), key=lambda x: x["name"])]
            out.append(it)
            walk(it["name"], depth + 1)

    walk(None, 0)
    for orphan_parent in sorted(p for p in by_parent if p is not None and p not in names):
        walk(orphan_parent, 0)
    for it in out:
        del it["_created_epoch"]
    return out


def snapshot_info(conn, domain):
    dom = lookup(conn, DOMAIN, domain)
    if dom is None:
        raise VirtError("domain {} is not defined on {}".format(domain, conn.hostname))
    snaps = list_snapshots(dom)
    return {
        "changed": False,
        "snapshots": snaps,
        "current": next((s["name"] for s in snaps if s["current"]), None),
        "migration_blockers": migration_blockers(dom, snaps),
    }


def migration_blockers(dom, snapshots=None):
    """The snapshots that keep ``dom`` from migrating to another host, each {name, external, reason}.

    libvirt's QEMU driver refuses a migration to another host while the guest has any snapshot metadata
    (internal or external) on the source. Internal snapshots must be deleted; the metadata of external
    ones (overlays on shared storage) can be deleted with metadata only on the source and redefined on the
    destination. See the module docstring.
    """
    snaps = snapshots if snapshots is not None else list_snapshots(dom)
    out = []
    for s in snaps:
        if s["external"]:
            reason = (
                "external snapshot: its overlays stay usable on shared storage, but libvirt refuses to "
                "migrate while its metadata is on this host (delete the metadata only, redefine it on the "
                "destination)"
            )
        else:
            reason = "internal snapshot: kept inside the disk images with metadata on this host only; delete it"
        out.append({"name": s["name"], "external": s["external"], "reason": reason})
    return out
