"""The domain module, run in-process against libvirt's test:///default driver."""

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.modules import domain as domain_module
from ansible_collections.lockstep.virt.plugins.modules import domain_info as info_module

URI = "test:///default"

SPEC = {
    "memory": 32,
    "vcpus": 1,
    "boot": ["hd"],
    "disks": [{"path": "/var/lib/lockstep-lab/shared/images/g1.qcow2", "format": "qcow2"}],
    "interfaces": [{"network": "default"}],
    "serial_console": True,
    "guest_agent": True,
    "graphics": {"type": "vnc"},
    "metadata": {"owner": "unit"},
}

XML = """<domain type='qemu'>
  <name>x1</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/lockstep-lab/shared/images/x1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'><source network='default'/></interface>
  </devices>
</domain>"""


def dom_args(**kw):
    args = {"uri": URI, "name": "g1", "spec": SPEC}
    args.update(kw)
    return args


def run(run_module, args, **kw):
    return run_module(domain_module.main, args, **kw)


@pytest.mark.parametrize("check_mode,diff", [(False, False), (True, False), (False, True), (True, True)])
def test_define_then_unchanged_in_every_mode(hv, run_module, check_mode, diff):
    first = run(run_module, dom_args())
    assert first["changed"] is True and first["actions"] == ["define"]
    assert first["domain"]["state"] == "shutoff" and first["domain"]["persistent"] is True
    second = run(run_module, dom_args(), check_mode=check_mode, diff=diff)
    assert second["changed"] is False, second.get("differences")
    assert second["actions"] == []
    if diff:
        assert second["diff"]["before"] == second["diff"]["after"]
    else:  # the diff is built only when diff mode asks for it
        assert "diff" not in second
    assert second["domain"]["uuid"] == first["domain"]["uuid"]


def test_check_mode_predicts_and_changes_nothing(hv, run_module):
    res = run(run_module, dom_args(state="running"), check_mode=True)
    assert res["changed"] is True
    assert res["actions"] == ["define", "start"]
    assert res["domain"]["state"] == "running"
    assert "g1" not in [d.name() for d in hv.listAllDomains()]
    real = run(run_module, dom_args(state="running"))
    assert real["actions"] == ["define", "start"]
    assert real["domain"]["state"] == "running"
    assert hv.lookupByName("g1").isActive()


def test_xml_definition_is_idempotent(hv, run_module):
    args = {"uri": URI, "name": "x1", "xml": XML}
    assert run(run_module, args)["changed"] is True
    for check_mode, diff in ((False, False), (True, False), (False, True)):
        again = run(run_module, args, check_mode=check_mode, diff=diff)
        assert again["changed"] is False, again.get("differences")
    root = hv.lookupByName("x1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "https://lockstep.virt/ns/managed/1" in root


def test_redefinition_keeps_uuid_and_mac(hv, run_module):
    run(run_module, {"uri": URI, "name": "x1", "xml": XML})
    before = hv.lookupByName("x1")
    uuid, xml_before = before.UUIDString(), before.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    mac = xml_before.split("<mac address='")[1].split("'")[0]
    res = run(run_module, {"uri": URI, "name": "x1", "xml": XML.replace(">32<", ">64<")})
    assert res["changed"] is True and res["actions"] == ["redefine"]
    after = hv.lookupByName("x1")
    assert after.UUIDString() == uuid
    assert "<mac address='{}'/>".format(mac) in after.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "65536" in after.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_memory_change_is_diffed_and_applied_to_next_boot(hv, run_module):
    run(run_module, dom_args(state="running"))
    spec = dict(SPEC, memory=64)
    predicted = run(run_module, dom_args(spec=spec, state="running"), check_mode=True, diff=True)
    assert predicted["changed"] is True and predicted["actions"] == ["redefine"]
    assert "/domain/memory/text()" in predicted["differences"]
    assert "32768" in predicted["diff"]["before"] and "65536" in predicted["diff"]["after"]
    assert "32768" in hv.lookupByName("g1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    res = run(run_module, dom_args(spec=spec, state="running"), diff=True)
    assert res["changed"] is True
    assert res["pending_restart"] is True
    dom = hv.lookupByName("g1")
    assert "65536" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "32768" in dom.XMLDesc(0)
    again = run(run_module, dom_args(spec=spec, state="running"))
    assert again["changed"] is False and again["pending_restart"] is True


def test_restart_on_change_restarts_into_new_definition(hv, run_module):
    run(run_module, dom_args(state="running"))
    spec = dict(SPEC, memory=48)
    res = run(run_module, dom_args(spec=spec, state="running", restart_on_change=True))
    assert res["actions"] == ["redefine", "restart"]
    assert res["pending_restart"] is False
    names = [c["name"] for c in res["lock_checkpoints"]]
    assert names.index("shutdown_requested") < names.index("stopped") < names.index("created_paused")
    assert names[-1] == "running"
    assert "49152" in hv.lookupByName("g1").XMLDesc(0)
    again = run(run_module, dom_args(spec=spec, state="running", restart_on_change=True))
    assert again["changed"] is False and again["actions"] == []


def test_start_records_acquire_after_create_checkpoints(hv, run_module):
    res = run(run_module, dom_args(state="running"))
    cps = res["lock_checkpoints"]
    names = [c["name"] for c in cps]
    assert names == ["defined", "created_paused", "resumed", "leases_verified", "running"]
    assert [c["at"] for c in cps] == sorted(c["at"] for c in cps)
    for c in cps:
        assert set(c) == {"name", "host", "at", "ok", "source", "verified", "check", "resources", "detail"}
        assert c["at"].endswith("Z") and len(c["at"]) == len("2024-01-01T00:00:00.000Z")
    # the test driver has no lock manager: the disk is not leased, and that is said
    assert cps[3]["ok"] is False and "no lock manager" in cps[3]["detail"]
    assert cps[3]["source"] == "probe" and cps[4]["verified"] is True and "state read" in cps[4]["check"]
    assert "leases are not as they must be" in str(res["warnings"]), res.get("warnings")


def test_acquire_libvirt_starts_in_one_call(hv, run_module):
    res = run(run_module, dom_args(state="running", lock={"acquire": "libvirt"}))
    names = [c["name"] for c in res["lock_checkpoints"]]
    assert names == ["defined", "started", "leases_verified", "running"]


def test_required_fails_without_lock_manager_and_leaves_nothing_running(hv, run_module):
    res = run(run_module, dom_args(state="running", lock={"required": True}))
    assert res["failed"] is True
    assert "no lock manager" in res["msg"]
    assert not hv.lookupByName("g1").isActive()
    assert "created_paused" not in [c["name"] for c in res["lock_checkpoints"]]


def test_paused_running_shutdown_destroyed_transitions(hv, run_module):
    assert run(run_module, dom_args(state="paused"))["domain"]["state"] == "paused"
    assert run(run_module, dom_args(state="paused"))["changed"] is False
    res = run(run_module, dom_args(state="running"))
    assert res["actions"] == ["resume"] and res["domain"]["state"] == "running"
    res = run(run_module, dom_args(state="paused"))
    assert res["actions"] == ["pause"]
    run(run_module, dom_args(state="running"))
    res = run(run_module, dom_args(state="shutdown", timeout=5))
    assert res["actions"] == ["shutdown"] and res["domain"]["state"] == "shutoff"
    assert [c["name"] for c in res["lock_checkpoints"]] == ["shutdown_requested", "stopped"]
    assert run(run_module, dom_args(state="shutdown"))["changed"] is False
    run(run_module, dom_args(state="running"))
    res = run(run_module, dom_args(state="destroyed"))
    assert res["actions"] == ["destroy"] and res["domain"]["state"] == "shutoff"
    assert run(run_module, dom_args(state="destroyed"))["changed"] is False


def test_autostart_is_idempotent(hv, run_module):
    res = run(run_module, dom_args(autostart=True))
    assert res["domain"]["autostart"] is True and "autostart" in res["actions"]
    assert run(run_module, dom_args(autostart=True), check_mode=True)["changed"] is False
    res = run(run_module, dom_args(autostart=False), check_mode=True)
    assert res["changed"] is True and res["domain"]["autostart"] is False
    assert hv.lookupByName("g1").autostart() == 1


def test_absent_removes_and_is_then_unchanged(hv, run_module):
    run(run_module, dom_args(state="running"))
    predicted = run(run_module, {"uri": URI, "name": "g1", "state": "absent"}, check_mode=True)
    assert predicted["changed"] is True and predicted["actions"] == ["destroy", "undefine"]
    assert hv.lookupByName("g1").isActive()
    res = run(run_module, {"uri": URI, "name": "g1", "state": "absent"})
    assert res["changed"] is True and res["domain"] is None
    assert "g1" not in [d.name() for d in hv.listAllDomains()]
    again = run(run_module, {"uri": URI, "name": "g1", "state": "absent"})
    assert again["changed"] is False
    again = run(run_module, {"uri": URI, "name": "g1", "state": "absent"}, check_mode=True, diff=True)
    assert again["changed"] is False


def test_absent_with_managed_save_and_snapshots(hv, run_module):
    run(run_module, dom_args(state="running"))
    dom = hv.lookupByName("g1")
    dom.snapshotCreateXML("<domainsnapshot><name>s1</name></domainsnapshot>")
    dom.managedSave()
    assert dom.hasManagedSaveImage()
    res = run(run_module, {"uri": URI, "name": "g1", "state": "absent"})
    assert res["changed"] is True
    assert "g1" not in [d.name() for d in hv.listAllDomains()]


def test_remove_storage_deletes_pool_volume(hv, run_module):
    pool = hv.storagePoolLookupByName("default-pool")
    pool.createXML("<volume><name>g1.img</name><capacity unit='MiB'>1</capacity></volume>")
    spec = dict(SPEC, disks=[{"pool": "default-pool", "volume": "g1.img"}])
    run(run_module, dom_args(spec=spec))
    assert run(run_module, dom_args(spec=spec))["changed"] is False
    res = run(run_module, {"uri": URI, "name": "g1", "state": "absent", "remove_storage": True})
    assert res["removed_storage"] == [{"pool": "default-pool", "volume": "g1.img", "path": None}]
    assert "g1.img" not in pool.listVolumes()


def test_absent_keeps_storage_by_default(hv, run_module):
    pool = hv.storagePoolLookupByName("default-pool")
    pool.createXML("<volume><name>keep.img</name><capacity unit='MiB'>1</capacity></volume>")
    defined = run(run_module, dom_args(spec=dict(SPEC, disks=[{"pool": "default-pool", "volume": "keep.img"}])))
    assert defined["changed"] is True and not defined.get("failed"), defined
    assert "g1" in [d.name() for d in hv.listAllDomains()]
    removed = run(run_module, {"uri": URI, "name": "g1", "state": "absent"})
    assert removed["changed"] is True and not removed.get("failed"), removed
    assert not removed.get("removed_storage"), removed
    assert "g1" not in [d.name() for d in hv.listAllDomains()]
    assert "keep.img" in pool.listVolumes()


def test_removed_device_is_a_change(hv, run_module):
    run(run_module, dom_args())
    spec = dict(SPEC, interfaces=[])
    res = run(run_module, dom_args(spec=spec), check_mode=True)
    assert res["changed"] is True
    assert any("interface" in d for d in res["differences"])
    run(run_module, dom_args(spec=spec))
    assert "<interface" not in hv.lookupByName("g1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert run(run_module, dom_args(spec=spec))["changed"] is False


def test_spec_without_uuid_keeps_existing_uuid_for_lease_key(hv, run_module):
    spec = dict(SPEC, lease={"path": "/nonexistent/shared", "lockspace": "lockd"})
    first = run(run_module, dom_args(spec=spec))
    uuid = first["domain"]["uuid"]
    xml = hv.lookupByName("g1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<key>{}</key>".format(uuid) in xml
    second = run(run_module, dom_args(spec=spec))
    assert second["changed"] is False
    lease = [x for x in second["leases"] if x["kind"] == "lease"][0]
    assert lease["resource"] == "/nonexistent/shared/lockd/" + uuid
    assert lease["key"] == uuid and lease["held"] is False


def test_domain_info_reports_domains(hv, run_module):
    run(run_module, dom_args(state="running"))
    run(run_module, {"uri": URI, "name": "x1", "xml": XML})
    res = run_module(info_module.main, {"uri": URI})
    names = [d["name"] for d in res["domains"]]
    assert names == sorted(["g1", "test", "x1"]) and res["count"] == 3 and res["changed"] is False
    g1 = [d for d in res["domains"] if d["name"] == "g1"][0]
    assert g1["state"] == "running" and g1["managed"] is True
    assert g1["memory_mib"] == 32 and g1["vcpus"] == 1
    assert g1["disks"][0]["path"] == SPEC["disks"][0]["path"] and g1["disks"][0]["target"] == "vda"
    assert g1["interfaces"][0]["network"] == "default" and g1["interfaces"][0]["mac"]
    assert g1["metadata"] == {"owner": "unit"}
    test = [d for d in res["domains"] if d["name"] == "test"][0]
    assert test["managed"] is False
    only = run_module(info_module.main, {"uri": URI, "pattern": "x*", "inactive_xml": True}, check_mode=True)
    assert [d["name"] for d in only["domains"]] == ["x1"] and "<name>x1</name>" in only["domains"][0]["inactive_xml"]
    running = run_module(info_module.main, {"uri": URI, "state": ["shutoff"]})
    assert [d["name"] for d in running["domains"]] == ["x1"]
    managed = run_module(info_module.main, {"uri": URI, "managed": True})
    assert [d["name"] for d in managed["domains"]] == ["g1", "x1"]
    missing = run_module(info_module.main, {"uri": URI, "name": "nope"})
    assert missing["domains"] == [] and missing["count"] == 0


BAD_INPUT = [
    ({"xml": "<domain><name>g1</name"}, "not well-formed"),
    ({"xml": XML}, "differs from name"),
    (
        {
            "xml": '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            "<domain type='qemu'><name>g1</name><description>&e;</description></domain>"
        },
        "external entity",
    ),
    ({"spec": dict(SPEC, colour="blue")}, "colour"),
    ({"spec": dict(SPEC, memory=-5)}, "between 1 MiB"),
    ({"spec": dict(SPEC, memory="900TiB")}, "between 1 MiB"),
    ({"spec": dict(SPEC, memory="lots")}, "must be a size such as"),
    ({"spec": dict(SPEC, memory="2GB")}, "not a whole number of MiB"),
    ({"xml": XML.replace("x1", "g1"), "spec": SPEC}, "mutually exclusive"),
    ({"uri": "qemu+tcp://127.0.0.1:1/system"}, "cannot connect"),  # a closed loopback port: no ssh, no DNS
    ({"uri": "qemu:///system"}, "cannot connect"),
    ({"spec": dict(SPEC, disks=[{"path": "relative.img"}])}, "absolute"),
    ({"spec": dict(SPEC, interfaces=[{"network": "a", "bridge": "b"}])}, "exactly one of network or bridge"),
]


@pytest.mark.parametrize("override,message", BAD_INPUT, ids=[m for _o, m in BAD_INPUT])
def test_bad_input_fails_cleanly_and_changes_nothing(hv, run_module, override, message):
    before = sorted(d.name() for d in hv.listAllDomains())
    args = {"uri": URI, "name": "g1", "state": "running"}
    args.update(override)
    res = run(run_module, args)
    assert res["failed"] is True and res["_rc"] == 1
    assert message in res["msg"], res["msg"]
    assert "exception" not in res or "Traceback" not in res.get("msg", "")
    assert sorted(d.name() for d in hv.listAllDomains()) == before


def test_libvirt_error_carries_code_and_domain(hv, run_module):
    res = run(run_module, {"uri": URI, "name": "ghost", "state": "running"})
    assert res["failed"] is True and "not defined" in res["msg"]
    res = run(run_module, {"uri": "qemu:///system", "name": "g1"})
    assert res["libvirt_error"]["code"] == libvirt.VIR_ERR_SYSTEM_ERROR
    assert res["libvirt_error"]["domain"] == libvirt.VIR_FROM_RPC


def test_uri_defaults_to_libvirt_default_uri(hv, run_module, monkeypatch):
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", URI)
    res = run_module(info_module.main, {"name": "test"})
    assert res["count"] == 1 and res["domains"][0]["state"] == "running"
    res = run(run_module, {"name": "envguest", "spec": {"memory": 16}})
    assert res["changed"] is True and "envguest" in [d.name() for d in hv.listAllDomains()]
