"""The pool and pool_info modules, run in-process against libvirt's test:///default driver."""

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.pool import build_pool_xml, normalize_pool_spec
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import to_text
from ansible_collections.lockstep.virt.plugins.modules import pool as pool_module
from ansible_collections.lockstep.virt.plugins.modules import pool_info as info_module

URI = "test:///default"


def pool_args(path, **kw):
    args = {"uri": URI, "name": "p1", "spec": {"type": "dir", "path": str(path), "permissions": {"mode": "755"}}}
    args.update(kw)
    return args


def test_spec_xml():
    text = to_text(build_pool_xml("p1", {"path": "/srv/pools/p1/", "permissions": {"mode": "0750", "owner": 0}}))
    assert "<path>/srv/pools/p1</path>" in text and "<mode>0750</mode>" in text and "<owner>0</owner>" in text
    text = to_text(
        build_pool_xml("n", {"type": "netfs", "path": "/mnt/n", "source": {"hosts": ["nfs1:2049"], "dir": "/export"}})
    )
    assert '<host name="nfs1" port="2049"/>' in text and '<dir path="/export"/>' in text
    text = to_text(build_pool_xml("vg", {"type": "logical", "source": {"name": "vg0", "devices": ["/dev/sdb"]}}))
    assert "<path>/dev/vg0</path>" in text and '<device path="/dev/sdb"/>' in text
    text = to_text(
        build_pool_xml(
            "r",
            {
                "type": "rbd",
                "source": {
                    "hosts": ["mon1", "mon2:6789"],
                    "name": "rbd",
                    "auth": {"type": "ceph", "username": "libvirt", "secret_usage": "ceph-client"},
                },
            },
        )
    )
    assert "<target>" not in text and 'username="libvirt"' in text


@pytest.mark.parametrize(
    "spec,needle",
    [
        ({"path": "/x", "size": 1}, "unsupported keys"),
        ({"type": "dir"}, "spec.path is required"),
        ({"path": "relative/dir"}, "absolute"),
        ({"path": "/"}, "must not be /"),
        ({"path": "/x", "permissions": {"mode": "rwx"}}, "octal"),
        ({"type": "netfs", "path": "/mnt/x", "source": {"dir": "/e"}}, "hosts is required"),
        ({"type": "fs", "path": "/mnt/x", "source": {"devices": ["/dev/a", "/dev/b"]}}, "exactly one"),
        ({"type": "logical"}, "volume group"),
        ({"type": "rbd", "path": "/x", "source": {"hosts": ["m"], "name": "r"}}, "no spec.path"),
        ({"type": "zfs", "path": "/x"}, "value of type must be one of"),
    ],
)
def test_bad_spec(spec, needle):
    with pytest.raises(ValidationError) as exc:
        normalize_pool_spec(spec)
    assert needle in exc.value.msg


def test_create_builds_once_and_is_idempotent(hv, run_module, tmp_path):
    target = tmp_path / "p1"
    r = run_module(pool_module.main, pool_args(target, state="active", autostart=True), check_mode=True, diff=True)
    assert r["changed"] and r["actions"] == ["define", "build", "autostart", "start"]
    assert "p1" not in hv.listStoragePools() + hv.listDefinedStoragePools()
    r = run_module(pool_module.main, pool_args(target, state="active", autostart=True), diff=True)
    assert r["actions"] == ["define", "build", "autostart", "start"]
    assert r["pool"]["active"] and r["pool"]["path"] == str(target)
    assert "<mode>0755</mode>" in r["diff"]["after"]
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = run_module(pool_module.main, pool_args(target, state="active", autostart=True), check_mode=check, diff=diff)
        assert not r["changed"] and r["actions"] == [], (check, diff, r)
    # a defined pool is never built again, even when its directory is missing
    run_module(pool_module.main, pool_args(target, state="inactive"))
    r = run_module(pool_module.main, pool_args(target, state="present"))
    assert "build" not in r["actions"]


def test_existing_directory_is_not_built(hv, run_module, tmp_path):
    r = run_module(pool_module.main, pool_args(tmp_path, state="active"))
    assert r["actions"] == ["define", "start"]


def test_change_redefines_and_pending(hv, run_module, tmp_path):
    run_module(pool_module.main, pool_args(tmp_path, state="inactive"))
    args = pool_args(tmp_path, state="inactive")
    args["spec"]["permissions"]["mode"] = "0700"
    r = run_module(pool_module.main, args, diff=True)
    assert r["actions"] == ["redefine"] and "/pool/target/permissions/mode/text()" in r["differences"][0]
    assert not run_module(pool_module.main, args)["changed"]


def test_target_that_is_a_file_is_refused(hv, run_module, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = run_module(pool_module.main, pool_args(f, state="active"))
    assert r["failed"] and "is not a directory" in r["msg"] and not r["changed"]
    assert "p1" not in hv.listStoragePools() + hv.listDefinedStoragePools()


def test_hostile_and_bad_xml(hv, run_module):
    hostile = '<!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/shadow">]><pool type="dir"><name>p1</name>&x;</pool>'
    for bad, needle in (
        (hostile, "external entity"),
        ("<pool type='dir'><name>p1</name>", "not well-formed"),
        ("<network/>", "<pool> root"),
        ("<pool type='dir'><name>p2</name></pool>", "differs from name"),
        ("<pool type='weird'><name>p1</name></pool>", "unknown storage pool type"),
    ):
        r = run_module(pool_module.main, {"uri": URI, "name": "p1", "xml": bad})
        assert r["failed"] and needle in r["msg"] and not r["changed"], r


def test_xml_with_runtime_values_is_idempotent(hv, run_module, tmp_path):
    xml = (
        "<pool type='dir'><name>p1</name><capacity unit='bytes'>1</capacity>"
        "<target><path>{}</path></target></pool>".format(tmp_path)
    )
    assert run_module(pool_module.main, {"uri": URI, "name": "p1", "xml": xml, "state": "active"})["changed"]
    assert not run_module(pool_module.main, {"uri": URI, "name": "p1", "xml": xml, "state": "active"})["changed"]


def test_type_change_refused(hv, run_module, tmp_path):
    run_module(pool_module.main, pool_args(tmp_path))
    args = {"uri": URI, "name": "p1", "spec": {"type": "fs", "path": str(tmp_path), "source": {"devices": ["/dev/x"]}}}
    r = run_module(pool_module.main, args)
    assert r["failed"] and "type cannot change" in r["msg"]


def test_absent_and_deleted(hv, run_module, tmp_path):
    (tmp_path / "d").mkdir()  # the test driver builds nothing on disk
    run_module(pool_module.main, pool_args(tmp_path / "d", state="active"))
    hv.storagePoolLookupByName("p1").createXML(
        "<volume><name>v</name><capacity unit='bytes'>1024</capacity></volume>", 0
    )
    r = run_module(pool_module.main, {"uri": URI, "name": "p1", "state": "deleted"})
    assert r["failed"] and "still holds 1 volume" in r["msg"] and not r["changed"]
    hv.storagePoolLookupByName("p1").storageVolLookupByName("v").delete(0)
    r = run_module(pool_module.main, {"uri": URI, "name": "p1", "state": "deleted"}, check_mode=True, diff=True)
    assert r["actions"] == ["stop", "delete", "undefine"] and r["diff"]["after"] == ""
    r = run_module(pool_module.main, {"uri": URI, "name": "p1", "state": "deleted"})
    assert r["actions"] == ["stop", "delete", "undefine"]
    for state in ("deleted", "absent"):
        for check in (False, True):
            assert not run_module(pool_module.main, {"uri": URI, "name": "p1", "state": state}, check_mode=check)[
                "changed"
            ]
    run_module(pool_module.main, pool_args(tmp_path, state="active"))
    r = run_module(pool_module.main, {"uri": URI, "name": "p1", "state": "absent"})
    assert r["actions"] == ["stop", "undefine"]


def test_refresh_is_not_a_change(hv, run_module, tmp_path):
    run_module(pool_module.main, pool_args(tmp_path, state="active"))
    r = run_module(pool_module.main, {"uri": URI, "name": "p1", "state": "active", "refresh": True})
    assert not r["changed"] and r["refreshed"]


def test_missing_without_definition(hv, run_module):
    r = run_module(pool_module.main, {"uri": URI, "name": "nope", "state": "active"})
    assert r["failed"] and "give xml or spec" in r["msg"]


def test_info(hv, run_module, tmp_path):
    run_module(pool_module.main, pool_args(tmp_path, state="active"))
    hv.storagePoolLookupByName("p1").createXML("<volume><name>v</name><capacity>1024</capacity></volume>", 0)
    r = run_module(info_module.main, {"uri": URI, "name": "p1"}, check_mode=True)
    (p,) = r["pools"]
    assert p["type"] == "dir" and p["path"] == str(tmp_path) and p["active"] and p["volumes"] == ["v"]
    assert p["capacity"] > 0 and p["available"] <= p["capacity"]
    assert [x["name"] for x in run_module(info_module.main, {"uri": URI})["pools"]] == ["default-pool", "p1"]
    assert run_module(info_module.main, {"uri": URI, "name": "zz"})["pools"] == []


def test_deleted_with_its_directory_already_gone(hv, run_module, tmp_path):
    run_module(pool_module.main, pool_args(tmp_path / "gone", state="inactive"))
    r = run_module(pool_module.main, {"uri": URI, "name": "p1", "state": "deleted"})
    assert r["actions"] == ["undefine"] and "p1" not in hv.listDefinedStoragePools()
