# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The handoff marker: a metadata element the migration writes into the guest before the send (it travels
with the guest) and clears when the handoff is complete. A guest that carries it is in an unfinished
handoff - typically paused on the destination after an interrupted run - which ``domain_info`` and
``lease_info`` report and a re-run of ``migrate`` finishes.
"""

from __future__ import annotations

import re

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt

METADATA_NS = "https://github.com/lockstep/virt/handoff"
METADATA_KEY = "lockstep-handoff"
_ATTR = re.compile(r"(\w+)=['\"]([^'\"]*)['\"]")


def marker_xml(dest, resume):
    return "<handoff dest='{}' resume='{}'/>".format(dest, "yes" if resume else "no")


def read_marker(dom):
    """The marker in the guest's live metadata: {'dest', 'resume'} or None."""
    if libvirt is None:
        return None
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except Exception:
        return None
    if not text or "<handoff" not in text:
        return None
    attrs = dict(_ATTR.findall(text))
    return {"dest": attrs.get("dest"), "resume": attrs.get("resume")}


def handoff_status(dom, state):
    """What domain_info/lease_info report for a guest in an unfinished handoff, or None."""
    marker = read_marker(dom)
    if marker is None:
        return None
    if state == "paused":
        detail = (
            "paused after an incoming migration whose lease handoff was not finished; run the same "
            "lockstep.virt.migrate task again to finish it"
        )
    else:
        detail = "an interrupted migration left its handoff marker; the next lockstep.virt.migrate run clears it"
    return {"pending": state == "paused", "resume": marker.get("resume") != "no", "detail": detail}
