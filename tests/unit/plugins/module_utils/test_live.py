"""Live changes of a running guest: the plan from live and desired XML, and the domain module applying
memory and vCPU changes on test:///default (which has no device hotplug nor block resize)."""

from ansible_collections.lockstep.virt.plugins.module_utils._virt.live import live_actions
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import parse_xml
from ansible_collections.lockstep.virt.plugins.modules import domain as domain_module

URI = "test:///default"
GIB = 1 << 30


def dom_xml(disks="", nics="", memory=65536, current=65536, vcpus="<vcpu>2</vcpu>"):
    return parse_xml(
        "<domain type='qemu'><name>g</name><memory unit='KiB'>{}</memory>"
        "<currentMemory unit='KiB'>{}</currentMemory>{}<devices>{}{}</devices></domain>".format(
            memory, current, vcpus, disks, nics
        ),
        "domain",
    )


def disk(dev, bus="virtio", device="disk", alias=True):
    return (
        "<disk type='file' device='{d}'><source file='/img/{t}.qcow2'/><target dev='{t}' bus='{b}'/>{a}</disk>".format(
            d=device, t=dev, b=bus, a="<alias name='virtio-disk0'/><address type='pci' slot='0x07'/>" if alias else ""
        )
    )


def nic(mac, model="virtio"):
    return "<interface type='network'><mac address='{}'/><source network='n'/><model type='{}'/></interface>".format(
        mac, model
    )


def texts(actions):
    return [a["text"] for a in actions]


def test_disks_hotplug_unplug_only_on_live_buses():
    live = dom_xml(disks=disk("vda") + disk("sdb", bus="sata") + disk("vdc"))
    want = dom_xml(disks=disk("vda", alias=False) + disk("vdd", alias=False) + disk("sde", bus="sata"))
    actions, projected, warnings = live_actions(live, want)
    assert texts(actions) == ["hotplug disk vdd", "unplug disk vdc"] and not warnings
    hot = actions[0]["xml"]
    assert '<target dev="vdd" bus="virtio"/>' in hot and "alias" not in hot
    devs = [t.get("dev") for t in projected.iter("target")]
    assert devs == ["vda", "sdb", "vdd"]  # the sata disks wait for the next boot


def test_interfaces_by_mac_virtio_only():
    live = dom_xml(nics=nic("52:54:00:00:00:01") + nic("52:54:00:00:00:02", model="e1000"))
    want = dom_xml(nics=nic("52:54:00:00:00:03") + nic("52:54:00:00:00:04", model="e1000"))
    actions, _projected, _w = live_actions(live, want)
    assert texts(actions) == ["hotplug interface 52:54:00:00:00:03", "unplug interface 52:54:00:00:00:01"]


def test_resize_grows_never_shrinks():
    live = dom_xml(disks=disk("vda") + disk("vdb"))
    sizes = {"vda": 2 * GIB, "vdb": GIB, "vdz": GIB}
    have = {"vda": GIB, "vdb": 2 * GIB}
    actions, _p, warnings = live_actions(live, live, sizes, have.get)
    assert texts(actions) == ["resize vda 1 GiB -> 2 GiB"] and actions[0]["bytes"] == 2 * GIB
    assert warnings == ["disk vdb is 2 GiB, larger than its size 1 GiB: disks are never shrunk"]
    assert live_actions(live, live, {"vda": GIB}, have.get)[0] == []


def test_memory_and_vcpus_within_the_maximums():
    live = dom_xml(current=65536, vcpus="<vcpu current='1'>4</vcpu>")
    want = dom_xml(current=32768, vcpus="<vcpu current='3'>4</vcpu>")
    actions, projected, _w = live_actions(live, want)
    assert texts(actions) == ["memory 64 MiB -> 32 MiB", "vcpus 1 -> 3"]
    assert projected.findtext("currentMemory") == "32768" and projected.find("vcpu").get("current") == "3"
    # beyond the running maximums: nothing live
    assert live_actions(live, dom_xml(memory=131072, current=131072, vcpus="<vcpu>8</vcpu>"))[0] == []


XML = (
    "<domain type='test'><name>lv</name><memory unit='KiB'>1048576</memory>"
    "<currentMemory unit='KiB'>{mem}</currentMemory><vcpu current='{cur}'>4</vcpu>"
    "<os><type>hvm</type></os></domain>"
)


def test_domain_applies_memory_and_vcpus_live(hv, run_module):
    args = {"uri": URI, "name": "lv", "state": "running", "xml": XML.format(mem=1048576, cur=1)}
    r = run_module(domain_module.main, args)
    assert r["domain"]["state"] == "running", r
    args["xml"] = XML.format(mem=524288, cur=2)
    r = run_module(domain_module.main, args, check_mode=True, diff=True)
    assert r["live_changes"] == ["memory 1 GiB -> 512 MiB", "vcpus 1 -> 2"] and not r["pending_restart"], r
    assert "live: vcpus 1 -> 2" in r["diff"]["after"]
    assert hv.lookupByName("lv").vcpusFlags(1) == 1  # VIR_DOMAIN_AFFECT_LIVE: check mode changed nothing
    r = run_module(domain_module.main, args, diff=True)
    assert r["actions"] == ["redefine", "set_memory", "set_vcpus"] and not r["pending_restart"], r
    assert "live_change" in [c["name"] for c in r["lock_checkpoints"]]
    dom = hv.lookupByName("lv")
    assert dom.vcpusFlags(1) == 2 and dom.info()[2] == 524288
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = run_module(domain_module.main, args, check_mode=check, diff=diff)
        assert not r["changed"] and not r["pending_restart"], (check, diff, r)
    # beyond the maximum: the definition changes, the running guest waits for its next boot
    args["xml"] = XML.format(mem=524288, cur=2).replace(">4</vcpu>", ">6</vcpu>")
    r = run_module(domain_module.main, args)
    assert r["pending_restart"] and r["pending_differences"] and "live_changes" not in r, r


def test_balloon_target_asked_before_is_not_asked_again():
    md = "<metadata><b:balloon xmlns:b='https://lockstep.virt/ns/live/1' target-kib='24576'/></metadata>"
    live = dom_xml(current=32768)
    live.insert(1, parse_xml(md, "metadata"))
    actions, projected, warnings = live_actions(live, dom_xml(current=24576))
    assert actions == [] and projected.findtext("currentMemory") == "24576"
    assert warnings == ["the guest uses 32 MiB of its balloon target 24 MiB (does it run a balloon driver?)"]
    assert texts(live_actions(live, dom_xml(current=32768))[0]) == ["memory 24 MiB -> 32 MiB"]
