"""lockstep.virt.pool and pool_info on the lab's hosts."""

import os
import shutil
import stat
import uuid

import pytest
from labkit import LAB_ROOT

MODULE = "lockstep.virt.pool"
SHARED_POOLS = os.path.join(LAB_ROOT, "shared", "pools")


@pytest.fixture
def pool(lab):
    """A fresh pool name and a path for it on the shared storage; removed from every host afterwards."""
    name = "it-" + uuid.uuid4().hex[:8]
    info = {"name": name, "path": os.path.join(SHARED_POOLS, name)}
    yield info
    for host in lab.hosts:
        lab.virsh(host, "pool-destroy", name, check=False)
        lab.virsh(host, "pool-undefine", name, check=False)
    if os.path.isdir(info["path"]):
        shutil.rmtree(info["path"])
    elif os.path.lexists(info["path"]):
        os.unlink(info["path"])


def args(pool, **kw):
    out = {
        "name": pool["name"],
        "state": "active",
        "spec": {"type": "dir", "path": pool["path"], "permissions": {"mode": "0750"}},
    }
    out.update(kw)
    return out


def test_built_only_on_first_creation_and_idempotent(lab, pool):
    hv1 = lab.hosts[0]
    r = lab.module(hv1, MODULE, args(pool, autostart=True), check=True, diff=True)
    assert r["changed"] and r["actions"] == ["define", "build", "autostart", "start"], r
    assert not os.path.exists(pool["path"])
    r = lab.module(hv1, MODULE, args(pool, autostart=True), diff=True)
    assert r["changed"] and r["actions"] == ["define", "build", "autostart", "start"], r
    assert os.path.isdir(pool["path"]) and stat.S_IMODE(os.stat(pool["path"]).st_mode) == 0o750
    assert r["pool"]["active"] and r["pool"]["capacity"] > 0
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, args(pool, autostart=True), check=check, diff=diff)
        assert not r["changed"] and r["actions"] == [], (check, diff, r)
    # an existing pool is never built again, even with its directory gone
    lab.module(hv1, MODULE, args(pool, state="inactive"))
    os.rmdir(pool["path"])
    r = lab.module(hv1, MODULE, args(pool, state="present"))
    assert not r["changed"] and "build" not in r["actions"]
    assert not os.path.exists(pool["path"])
    info = lab.module(hv1, "lockstep.virt.pool_info", {"name": pool["name"]}, check=True)
    (p,) = info["pools"]
    assert p["type"] == "dir" and p["path"] == pool["path"] and not p["active"] and p["autostart"]


def test_existing_directory_is_not_built_and_refresh(lab, pool):
    hv1 = lab.hosts[0]
    os.makedirs(pool["path"])
    r = lab.module(hv1, MODULE, args(pool, spec={"type": "dir", "path": pool["path"]}))
    assert r["actions"] == ["define", "start"], r
    open(os.path.join(pool["path"], "dropped.img"), "wb").close()
    r = lab.module(hv1, MODULE, args(pool, spec={"type": "dir", "path": pool["path"]}, refresh=True))
    assert not r["changed"] and r["refreshed"]
    info = lab.module(hv1, "lockstep.virt.pool_info", {"name": pool["name"]})
    assert info["pools"][0]["volumes"] == ["dropped.img"]
    r = lab.module_fails(hv1, MODULE, {"name": pool["name"], "state": "deleted"})
    assert "still holds 1 volume" in r["msg"] and not r.get("changed")
    assert os.path.exists(os.path.join(pool["path"], "dropped.img"))


def test_per_host_pools_and_deleted_everywhere(lab, pool):
    path = "/var/lib/libvirt/images/" + pool["name"]  # inside each host's own /var/lib/libvirt
    play = [
        {
            "hosts": "hypervisors",
            "gather_facts": False,
            "tasks": [{"name": "pool", MODULE: {"name": pool["name"], "state": "{{ want }}", "spec": {"path": path}}}],
        }
    ]
    run = lab.playbook(play, extra_vars={"want": "active"})
    for h in lab.hosts:
        assert run.task("pool", h)["actions"] == ["define", "build", "start"]
        lab.exec(h, "test", "-d", path)
    assert not os.path.exists(path)  # not on this machine
    run = lab.playbook(play, check=True, diff=True, extra_vars={"want": "deleted"})
    for h in lab.hosts:
        assert run.task("pool", h)["actions"] == ["stop", "delete", "undefine"]
        lab.exec(h, "test", "-d", path)
    run = lab.playbook(play, extra_vars={"want": "deleted"})
    for h in lab.hosts:
        assert run.task("pool", h)["actions"] == ["stop", "delete", "undefine"]
        assert lab.exec(h, "test", "-e", path, check=False).returncode != 0
    for want in ("deleted", "absent"):
        for check, diff in ((False, False), (True, True)):
            run = lab.playbook(play, check=check, diff=diff, extra_vars={"want": want})
            assert run.rc == 0 and not any(run.task("pool", h)["changed"] for h in lab.hosts)


HOSTILE = "<!DOCTYPE p [<!ENTITY x SYSTEM 'file:///etc/shadow'>]><pool type='dir'><name>{}</name>&x;</pool>"


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"xml": HOSTILE}, "external entity"),
        ({"xml": "<pool type='dir'><name>{}</name>"}, "not well-formed"),
        ({"spec": {"type": "dir", "path": "/srv/x", "size": "10G"}}, "size"),
        ("file", "is not a directory"),
    ],
)
def test_bad_input_changes_nothing(lab, pool, bad, needle):
    hv1 = lab.hosts[0]
    a = {"name": pool["name"], "state": "active"}
    if bad == "file":
        os.makedirs(SHARED_POOLS, exist_ok=True)
        with open(pool["path"], "w") as fh:
            fh.write("not a directory\n")
        a["spec"] = {"type": "dir", "path": pool["path"]}
    else:
        a.update({k: (v.format(pool["name"]) if isinstance(v, str) else v) for k, v in bad.items()})
    r = lab.module_fails(hv1, MODULE, a)
    assert needle in r["msg"] and not r.get("changed"), r
    assert lab.virsh(hv1, "pool-info", pool["name"], check=False).returncode != 0
    if bad == "file":
        assert open(pool["path"]).read() == "not a directory\n"
