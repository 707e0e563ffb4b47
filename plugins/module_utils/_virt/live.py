# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Changes a running guest takes without a restart: planned from what runs (its live XML) and what it
should run (its definition), then applied with libvirt's LIVE flag only - the persistent definition is
already the new one when they run.

What changes live:

* a disk (``device='disk'`` on a ``virtio`` or ``scsi`` bus) added or removed: hot-plugged / unplugged;
* an interface of model ``virtio`` added or removed (matched by MAC address): hot-plugged / unplugged;
* a disk whose ``spec.disks[].size`` is larger than what the guest sees: grown with ``virDomainBlockResize``
  (never shrunk);
* the current memory (``<currentMemory>``, the balloon) within the running maximum (``<memory>``);
* the current vCPU count (``<vcpu current=...>``) within the running maximum.

Everything else (a changed disk source, other buses and models, the maximums) is left to the next start:
the caller compares what runs after these actions with the definition and reports the rest.

An unplug needs the guest's cooperation (it must release the PCI device); when the device is still there
after ``UNPLUG_WAIT`` seconds it is still running and so still a difference.
"""

from __future__ import annotations

import copy
import time

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import DOMAIN, read_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.units import human_size, parse_size, to_bytes
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, holds_secrets, to_text

LIVE_DISK_BUSES = ("virtio", "scsi")
LIVE_NIC_MODELS = ("virtio",)
UNPLUG_WAIT = 10.0
# The running guest's metadata (never its definition) holds the balloon target set here.
LIVE_NS = "https://lockstep.virt/ns/live/1"
# What libvirt adds to a device of a running guest; a hot-plugged device gets its own.
_RUNTIME_CHILDREN = ("address", "alias")


def _devices(root):
    found = elements(root, "devices")
    return found[0] if found else None


def _disks(root):
    dev = _devices(root)
    out = {}
    for d in elements(dev, "disk") if dev is not None else []:
        target = elements(d, "target")
        if target and target[0].get("dev"):
            out[target[0].get("dev")] = d
    return out


def _disk_bus(d):
    target = elements(d, "target")
    return target[0].get("bus") if target else None


def _nics(root):
    dev = _devices(root)
    out = []
    for n in elements(dev, "interface") if dev is not None else []:
        mac = elements(n, "mac")
        model = elements(n, "model")
        out.append(
            {
                "el": n,
                "mac": mac[0].get("address").lower() if mac and mac[0].get("address") else None,
                "model": model[0].get("type") if model else None,
            }
        )
    return out


def _kib(root, tag):
    found = elements(root, tag)
    if not found or not (found[0].text or "").strip():
        return None
    return to_bytes(found[0].text.strip(), found[0].get("unit") or "KiB") // 1024


def _vcpus(root):
    found = elements(root, "vcpu")
    if not found:
        return None, None
    maximum = int(found[0].text.strip())
    return maximum, int(found[0].get("current") or maximum)


def _device_xml(el):
    out = copy.deepcopy(el)
    for child in list(out):
        if isinstance(child.tag, str) and child.tag in _RUNTIME_CHILDREN:
            out.remove(child)
    return to_text(out)


def balloon_target(live):
    """The balloon target (KiB) this module set on the running guest, from its live metadata; None if none."""
    md = elements(live, "metadata")
    found = md[0].find("{%s}balloon" % LIVE_NS) if md else None
    return int(found.get("target-kib")) if found is not None and found.get("target-kib") else None


def _set_current_memory(root, kib):
    el = elements(root, "currentMemory")[0]
    el.text = str(kib)
    el.set("unit", "KiB")


def as_requested(live):
    """``live`` with its current memory at the balloon target this module set (the guest's own pace
    of ballooning is not a pending change)."""
    target = balloon_target(live)
    if target is not None and elements(live, "currentMemory"):
        live = copy.deepcopy(live)
        _set_current_memory(live, target)
    return live


def live_actions(live, target, sizes=None, capacity=None):
    """The live actions taking ``live`` towards ``target``, and what would run after them.

    ``sizes``: {disk target: bytes wanted}; ``capacity(dev)``: bytes the guest sees now for a disk (None when
    unknown). Returns ``(actions, projected, warnings)``; each action is ``{kind, text, ...}``.
    """
    actions, warnings = [], []
    projected = copy.deepcopy(live)
    pdev = _devices(projected)
    live_disks, want_disks = _disks(live), _disks(target)
    for dev, d in want_disks.items():
        if dev in live_disks or d.get("device", "disk") != "disk" or _disk_bus(d) not in LIVE_DISK_BUSES:
            continue
        actions.append({"kind": "hotplug", "text": "hotplug disk {}".format(dev), "xml": _device_xml(d)})
        pdev.append(copy.deepcopy(d))
    pdisks = _disks(projected)
    for dev, d in live_disks.items():
        if dev in want_disks or d.get("device", "disk") != "disk" or _disk_bus(d) not in LIVE_DISK_BUSES:
            continue
        actions.append({"kind": "unplug", "text": "unplug disk {}".format(dev), "xml": _device_xml(d), "dev": dev})
        pdev.remove(pdisks[dev])
    live_nics, want_nics = _nics(live), _nics(target)
    live_macs = set(n["mac"] for n in live_nics)
    want_macs = set(n["mac"] for n in want_nics if n["mac"])
    for n in want_nics:
        if (n["mac"] and n["mac"] in live_macs) or n["model"] not in LIVE_NIC_MODELS:
            continue
        label = n["mac"] or "(new MAC)"
        actions.append({"kind": "hotplug", "text": "hotplug interface {}".format(label), "xml": _device_xml(n["el"])})
        pdev.append(copy.deepcopy(n["el"]))
    for n, pn in zip(live_nics, _nics(projected)):
        if n["mac"] in want_macs or n["model"] not in LIVE_NIC_MODELS:
            continue
        actions.append(
            {
                "kind": "unplug",
                "text": "unplug interface {}".format(n["mac"]),
                "xml": _device_xml(n["el"]),
                "mac": n["mac"],
            }
        )
        pdev.remove(pn["el"])
    for dev, size in sorted((sizes or {}).items()):
        if dev not in live_disks or capacity is None:
            continue
        have = capacity(dev)
        if have is None or have == size:
            continue
        if size < have:
            warnings.append(
                "disk {} is {}, larger than its size {}: disks are never shrunk".format(
                    dev, human_size(have), human_size(size)
                )
            )
            continue
        actions.append(
            {
                "kind": "resize",
                "text": "resize {} {} -> {}".format(dev, human_size(have), human_size(size)),
                "dev": dev,
                "bytes": size,
            }
        )
    max_live = _kib(live, "memory")
    cur_live, cur_want = _kib(live, "currentMemory"), _kib(target, "currentMemory")
    asked = balloon_target(live) or cur_live  # what the balloon is set to
    if cur_want and cur_live and cur_want == asked and cur_live != cur_want:
        # set before: the guest has not given the memory back (yet)
        warnings.append(
            "the guest uses {} of its balloon target {} (does it run a balloon driver?)".format(
                human_size(cur_live * 1024), human_size(cur_want * 1024)
            )
        )
        _set_current_memory(projected, cur_want)
    elif cur_want and asked and cur_want != asked and cur_want <= (max_live or 0):
        actions.append(
            {
                "kind": "memory",
                "text": "memory {} -> {}".format(human_size(asked * 1024), human_size(cur_want * 1024)),
                "kib": cur_want,
            }
        )
        _set_current_memory(projected, cur_want)
    vmax_live, vcur_live = _vcpus(live)
    vcur_want = _vcpus(target)[1]
    if vcur_want and vcur_live and vcur_want != vcur_live and vcur_want <= (vmax_live or 0):
        actions.append({"kind": "vcpus", "text": "vcpus {} -> {}".format(vcur_live, vcur_want), "count": vcur_want})
        el = elements(projected, "vcpu")[0]
        if vcur_want == vmax_live:
            el.attrib.pop("current", None)
        else:
            el.set("current", str(vcur_want))
    return actions, projected, warnings


def _apply(dom, action):
    live = getattr(libvirt, "VIR_DOMAIN_AFFECT_LIVE", 1)
    kind = action["kind"]
    with libvirt_errors("cannot {} of {}".format(action["text"], dom.name())):
        if kind == "hotplug":
            dom.attachDeviceFlags(action["xml"], live)
        elif kind == "unplug":
            dom.detachDeviceFlags(action["xml"], live)
        elif kind == "resize":
            dom.blockResize(action["dev"], action["bytes"], getattr(libvirt, "VIR_DOMAIN_BLOCK_RESIZE_BYTES", 1))
        elif kind == "memory":
            dom.setMemoryFlags(action["kib"], live)
            # QEMU keeps the target to itself; libvirt shows what the guest gave back: record what was asked
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                "<balloon target-kib='{}'/>".format(action["kib"]),
                "lsvlive",
                LIVE_NS,
                live,
            )
        elif kind == "vcpus":
            dom.setVcpusFlags(action["count"], live)


def _unplugged(dom, action, wait, sleep=time.sleep, clock=time.monotonic):
    """Whether the device left the running guest within ``wait`` seconds."""
    deadline = clock() + wait
    while True:
        live = read_xml(dom, DOMAIN, inactive=False)
        if "dev" in action:
            gone = action["dev"] not in _disks(live)
        else:
            gone = action["mac"] not in set(n["mac"] for n in _nics(live))
        if gone or clock() >= deadline:
            return gone
        sleep(0.25)


def capacity_reader(dom):
    def capacity(dev):
        try:
            return int(dom.blockInfo(dev, 0)[0])
        except libvirt.libvirtError:
            return None

    return capacity


def spec_sizes(spec):
    """{disk target: bytes} of the ``spec.disks[].size`` given."""
    if not spec:
        return {}
    return dict(
        (d["target"], parse_size(d["size"], "spec.disks[{}].size".format(i)))
        for i, d in enumerate(spec.get("disks") or [])
        if d.get("size") is not None
    )


def apply_live_changes(manager, dom, desired, prepare_for_define):
    """Plan and (unless check mode) apply the live changes of ``dom`` towards its definition; record them
    on ``manager`` (a DomainManager: actions, ``live_changes``, checkpoints, warnings); in check mode the
    definition is predicted with ``prepare_for_define(desired, existing)``. Returns what runs
    afterwards (predicted in check mode), for the caller's pending-restart comparison."""
    secure = holds_secrets(desired)  # a console password is compared only when read with the secure flag
    live = read_xml(dom, DOMAIN, inactive=False, secure=secure)
    # the definition as libvirt holds it (in check mode: as it would, MAC addresses kept)
    defined = read_xml(dom, DOMAIN, secure=secure)
    target = prepare_for_define(desired, defined) if manager.check_mode else defined
    actions, projected, warnings = live_actions(
        live, target, spec_sizes(getattr(manager, "_spec", None)), capacity_reader(dom)
    )
    manager.result["warnings"].extend(warnings)
    if not actions:
        return projected
    manager.result["live_changes"] = [a["text"] for a in actions]
    for a in actions:
        manager._act(a["kind"] if a["kind"] in ("hotplug", "unplug", "resize") else "set_" + a["kind"])
    if manager.check_mode:
        return projected
    for a in actions:
        _apply(dom, a)
        if a["kind"] == "unplug" and not _unplugged(dom, a, UNPLUG_WAIT):
            manager.result["warnings"].append(
                "{}: the guest has not released the device after {:.0f}s".format(a["text"], UNPLUG_WAIT)
            )
        manager.recorder.record("live_change", detail=a["text"])
    if any(a["kind"] in ("hotplug", "unplug") and "disk" in a["text"] for a in actions):
        manager.lifecycle.verify(dom, manager.lock["required"])  # lockd leases hot-plugged disks too
    return as_requested(read_xml(dom, DOMAIN, inactive=False, secure=secure))


def diff_lines(result):
    """The live actions as lines of the diff's after side."""
    return "".join("live: {}\n".format(t) for t in result.get("live_changes") or [])


__all__ = ["apply_live_changes", "diff_lines", "live_actions", "spec_sizes"]
