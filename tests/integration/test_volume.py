"""lockstep.virt.volume and volume_info on the lab's hosts, and a guest booting from a volume."""

import os
import subprocess

import pytest
from labkit import SHARED_POOLS, image_info

MODULE = "lockstep.virt.volume"
MiB = 1024 * 1024


@pytest.fixture
def pool(active_pool):
    return active_pool


def vol(pool, name, **kw):
    out = {"pool": pool["name"], "name": name}
    out.update(kw)
    return out


def assert_idempotent(lab, host, module_args):
    for check, diff in ((False, False), (True, False), (False, True)):
        r = lab.module(host, MODULE, module_args, check=check, diff=diff)
        assert not r["changed"] and r["actions"] == [], (check, diff, r)


def test_grow_clone_overlay_import(lab, pool):
    hv1 = lab.hosts[0]
    base = vol(pool, "base.qcow2", capacity="16M", format="qcow2")
    r = lab.module(hv1, MODULE, base, check=True, diff=True)
    assert r["actions"] == ["create"] and r["volume"]["capacity"] == 16 * MiB
    assert not os.path.exists(os.path.join(pool["path"], "base.qcow2"))
    r = lab.module(hv1, MODULE, base)
    assert r["actions"] == ["create"] and r["volume"]["path"] == os.path.join(pool["path"], "base.qcow2"), r
    assert image_info(r["volume"]["path"])["virtual-size"] == 16 * MiB
    assert_idempotent(lab, hv1, base)

    grown = dict(base, capacity="32MiB")
    r = lab.module(hv1, MODULE, grown, check=True, diff=True)
    assert r["actions"] == ["resize"] and "(16 MiB)" in r["diff"]["before"] and "(32 MiB)" in r["diff"]["after"]
    assert image_info(os.path.join(pool["path"], "base.qcow2"))["virtual-size"] == 16 * MiB  # check mode
    r = lab.module(hv1, MODULE, grown)
    assert r["actions"] == ["resize"] and r["volume"]["capacity"] == 32 * MiB
    assert image_info(r["volume"]["path"])["virtual-size"] == 32 * MiB
    assert_idempotent(lab, hv1, grown)
    r = lab.module_fails(hv1, MODULE, base)
    assert "allow_shrink" in r["msg"] and not r.get("changed")
    assert image_info(os.path.join(pool["path"], "base.qcow2"))["virtual-size"] == 32 * MiB

    overlay = vol(pool, "overlay.qcow2", backing_volume="base.qcow2")
    r = lab.module(hv1, MODULE, overlay)
    assert r["actions"] == ["create_overlay"] and r["volume"]["format"] == "qcow2", r
    info = image_info(r["volume"]["path"])
    assert info["backing-filename"] == os.path.join(pool["path"], "base.qcow2") and info["virtual-size"] == 32 * MiB
    assert_idempotent(lab, hv1, overlay)

    clone = vol(pool, "clone.qcow2", clone_from="base.qcow2", capacity="48M")
    r = lab.module(hv1, MODULE, clone, check=True)
    assert r["actions"] == ["clone", "resize"] and r["volume"]["capacity"] == 48 * MiB
    r = lab.module(hv1, MODULE, clone)
    assert r["actions"] == ["clone", "resize"], r
    info = image_info(r["volume"]["path"])
    assert info["virtual-size"] == 48 * MiB and info["format"] == "qcow2" and "backing-filename" not in info
    assert_idempotent(lab, hv1, clone)

    src = os.path.join(lab.images_dir, pool["name"] + "-src.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", src, "8M"], check=True)
    try:
        imported = vol(pool, "imported.qcow2", import_from=src)
        r = lab.module(hv1, MODULE, imported)
        assert r["actions"] == ["import"] and r["volume"]["format"] == "qcow2", r
        assert r["volume"]["capacity"] == 8 * MiB and image_info(r["volume"]["path"])["virtual-size"] == 8 * MiB
        assert_idempotent(lab, hv1, imported)
    finally:
        os.unlink(src)

    info = lab.module(hv1, "lockstep.virt.volume_info", {"pool": pool["name"], "name": "overlay.qcow2"}, check=True)
    (v,) = info["volumes"]
    assert v["backing_chain"][0]["volume"] == "base.qcow2" and v["backing_chain"][0]["pool"] == pool["name"]


def test_wipe_and_absent_idempotent(lab, pool):
    hv1 = lab.hosts[0]
    lab.module(hv1, MODULE, vol(pool, "w.raw", capacity="1M", format="raw"))
    path = os.path.join(pool["path"], "w.raw")
    with open(path, "r+b") as fh:
        fh.write(b"secret" * 100)
    gone = vol(pool, "w.raw", state="absent", wipe=True)
    r = lab.module(hv1, MODULE, gone, check=True, diff=True)
    assert r["actions"] == ["wipe", "delete"] and os.path.exists(path)
    r = lab.module(hv1, MODULE, gone)
    assert r["actions"] == ["wipe", "delete"] and not os.path.exists(path), r
    for check, diff in ((False, False), (True, False), (False, True)):
        assert not lab.module(hv1, MODULE, gone, check=check, diff=diff)["changed"]


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"name": "../escape.qcow2", "capacity": "1M"}, "path separator"),
        ({"name": "a..b", "capacity": "1M"}, "'..'"),
        ({"name": "new.qcow2", "capacity": "1M", "colour": "red"}, "colour"),
        ({"name": "new.qcow2", "clone_from": "/etc/hostname"}, "no storage volume known"),
        ({"name": "new.qcow2", "capacity": "huge"}, "capacity must be a size"),
    ],
)
def test_bad_input_changes_nothing(lab, pool, bad, needle):
    hv1 = lab.hosts[0]
    r = lab.module_fails(hv1, MODULE, vol(pool, **bad))
    assert needle in r["msg"] and not r.get("changed"), r
    assert os.listdir(pool["path"]) == []
    assert not os.path.exists(os.path.join(SHARED_POOLS, "escape.qcow2"))


def test_guest_boots_from_a_volume(lab, pool, guest_name):
    hv1 = lab.hosts[0]
    lab.module(hv1, MODULE, vol(pool, "golden.qcow2", capacity="16M", format="qcow2"))
    r = lab.module(hv1, MODULE, vol(pool, guest_name + ".qcow2", backing_volume="golden.qcow2"))
    assert r["changed"], r
    spec = {
        "memory": 32,
        "vcpus": 1,
        "arch": "x86_64",
        "machine": "pc",
        "boot": ["hd"],
        "disks": [{"pool": pool["name"], "volume": guest_name + ".qcow2", "format": "qcow2"}],
        "graphics": {"type": "vnc", "listen": "127.0.0.1"},
    }
    r = lab.module(hv1, "lockstep.virt.domain", {"name": guest_name, "state": "running", "spec": spec})
    assert r["changed"] and r["domain"]["state"] == "running", r
    assert lab.domain_state(hv1, guest_name) == "running"
    assert "{}.qcow2".format(guest_name) in lab.virsh(hv1, "domblklist", guest_name).stdout
    lab.cleanup_domain(guest_name)
