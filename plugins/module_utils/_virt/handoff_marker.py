# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The handoff marker: a guest in the middle of a migration says so in its own metadata.

Before sending, the module writes ``<lsvhandoff:handoff .../>`` into the source guest's metadata (live and
persistent), so it travels with the guest. After a complete handoff the module removes it on the
destination. A guest found paused with the marker is therefore one whose handoff did not finish (the
module's process killed, the controller interrupted, the SSH session dropped, a lease busy past
``lock.acquire_timeout``), and a re-run of the task reconciles it; a guest paused without it was paused by
someone, and is left alone. The marker names the run (host, boot id, pid) so that a second run can tell
whether the first one is still at work.
"""

from __future__ import annotations

import os

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.checkpoints import utc_now
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml

HANDOFF_NS = "https://lockstep.virt/ns/handoff/1"
HANDOFF_PREFIX = "lsvhandoff"
# persist: "1" when the send made the destination persistent (PERSIST_DEST), which reconcile takes as evidence
_FIELDS = ("source", "dest", "was", "host", "boot", "pid", "started", "persist")


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def new_marker(source, dest, was, host, persist=False):
    """A marker for a handoff of a guest that was ``was`` (running or paused) on ``source``; ``persist``:
    whether the send makes the destination persistent."""
    return {
        "source": source,
        "dest": dest,
        "was": was,
        "host": host,
        "boot": boot_id(),
        "pid": str(os.getpid()),
        "started": utc_now(),
        "persist": "1" if persist else "0",
    }


def _flags(dom, live=True):
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0
    try:
        if dom.isPersistent():
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    except Exception:
        pass
    return flags or libvirt.VIR_DOMAIN_AFFECT_CURRENT


def write_marker(dom, marker):
    attrs = " ".join('{}="{}"'.format(k, str(marker.get(k, "")).replace('"', "")) for k in _FIELDS)
    dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        "<handoff {}/>".format(attrs),
        HANDOFF_PREFIX,
        HANDOFF_NS,
        _flags(dom, live=bool(dom.isActive())),
    )


def clear_marker(dom):
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, HANDOFF_NS, _flags(dom, live=bool(dom.isActive())))


def marker_in(root):
    """The handoff marker in a domain's parsed XML, as a dict, or None."""
    for md in root.findall("metadata"):
        el = md.find("{%s}handoff" % HANDOFF_NS)
        if el is not None:
            return dict((k, el.get(k, "")) for k in _FIELDS)
    return None


def describe_handoff(state, marker):
    """How domain_info and lease_info say what a marker means for a guest in ``state``."""
    if marker is None:
        return None
    if state == "paused":
        return (
            "paused after an incoming migration from {} whose handoff did not finish (started {}); run the "
            "migrate task again to finish it".format(marker.get("source"), marker.get("started"))
        )
    return "carries the marker of a handoff from {} to {} started {}".format(
        marker.get("source"), marker.get("dest"), marker.get("started")
    )


def read_marker(dom):
    """The guest's handoff marker as a dict, or None (no marker, or it cannot be read)."""
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, HANDOFF_NS, libvirt.VIR_DOMAIN_AFFECT_CURRENT)
    except Exception:  # libvirtError VIR_ERR_NO_DOMAIN_METADATA: no marker
        return None
    try:
        root = parse_xml(text, None, "the handoff marker")
    except Exception:
        return None
    return dict((k, root.get(k, "")) for k in _FIELDS)


def owner_alive(marker, hostname):
    """True when the run that wrote ``marker`` is still alive on this host (same host and boot, pid alive)."""
    if not marker or marker.get("host") != hostname or marker.get("boot") != boot_id():
        return False
    try:
        pid = int(marker.get("pid") or 0)
    except ValueError:
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        with open("/proc/{}/cmdline".format(pid), "rb") as fh:
            return b"python" in fh.read().split(b"\0")[0]
    except OSError:
        return False
