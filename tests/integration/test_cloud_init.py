"""spec.cloud_init on the lab: the seed image built on hv1 into the guest's pool, read back with pycdlib,
rebuilt only when its content changes, seen by QEMU as a read-only CD-ROM, removed with the guest."""

import io
import json
import os
import shutil
import subprocess
import uuid

import pytest
from labkit import LAB_ROOT

pycdlib = pytest.importorskip("pycdlib")
MODULE = "lockstep.virt.domain"


@pytest.fixture
def pool(lab):
    name = "it-ci-" + uuid.uuid4().hex[:6]
    path = os.path.join(LAB_ROOT, "shared", "pools", name)
    r = lab.module(lab.hosts[0], "lockstep.virt.pool", {"name": name, "state": "active", "spec": {"path": path}})
    assert r["changed"], r
    yield {"name": name, "path": path}
    lab.virsh(lab.hosts[0], "pool-destroy", name, check=False)
    lab.virsh(lab.hosts[0], "pool-undefine", name, check=False)
    shutil.rmtree(path, ignore_errors=True)


def read_seed(path):
    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        out = {}
        for name in ("user-data", "meta-data", "network-config"):
            buf = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(buf, rr_path="/" + name)
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:  # no such file
                continue
            out[name] = buf.getvalue().decode()
        return iso.pvd.volume_identifier.decode().strip(), out
    finally:
        iso.close()


def test_seed_built_read_back_rebuilt_on_change_and_removed(lab, pool, guest_name):
    hv1 = lab.hosts[0]
    disk = os.path.join(pool["path"], guest_name + ".qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True)
    lab.virsh(hv1, "pool-refresh", pool["name"])
    user_data = "#cloud-config\nhostname: {}\n".format(guest_name)
    spec = {
        "type": "qemu",
        "memory": 32,
        "boot": ["hd"],
        "disks": [{"pool": pool["name"], "volume": guest_name + ".qcow2", "format": "qcow2"}],
        "cloud_init": {"user_data": user_data, "network_config": {"version": 2, "ethernets": {}}},
    }
    args = {"name": guest_name, "state": "running", "spec": spec}
    seed_path = os.path.join(pool["path"], guest_name + "-cidata.iso")
    r = lab.module(hv1, MODULE, args, check=True, diff=True)
    assert r["actions"] == ["build_seed", "define", "start"] and not os.path.exists(seed_path), r
    r = lab.module(hv1, MODULE, args, diff=True)
    assert r["actions"] == ["build_seed", "define", "start"], r
    assert r["cloud_init_seed"]["path"] == seed_path and r["domain"]["state"] == "running"
    label, files = read_seed(seed_path)
    assert label == "cidata" and files["user-data"] == user_data
    assert json.loads(files["meta-data"]) == {"instance-id": guest_name, "local-hostname": guest_name}
    assert json.loads(files["network-config"]) == {"version": 2, "ethernets": {}}
    # QEMU has it as a read-only CD-ROM with the seed inserted
    blocks = json.loads(lab.virsh(hv1, "qemu-monitor-command", guest_name, '{"execute":"query-block"}').stdout)
    cd = [b for b in blocks["return"] if b.get("inserted", {}).get("file") == seed_path]
    assert cd and cd[0]["inserted"]["ro"] is True and cd[0]["removable"] is True, blocks
    built = os.stat(seed_path).st_mtime_ns
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, args, check=check, diff=diff)
        assert not r["changed"] and r["actions"] == [], (check, diff, r)
    assert os.stat(seed_path).st_mtime_ns == built  # not rebuilt

    changed = dict(args, spec=dict(spec, cloud_init={"user_data": user_data + "packages: [htop]\n"}))
    r = lab.module(hv1, MODULE, changed)
    assert r["actions"] == ["build_seed", "redefine"] and r["pending_restart"], r
    label, files = read_seed(seed_path)
    assert files["user-data"].endswith("packages: [htop]\n") and "network-config" not in files
    assert not lab.module(hv1, MODULE, changed)["changed"]

    r = lab.module(hv1, MODULE, {"name": guest_name, "state": "absent"})
    assert "remove_seed" in r["actions"] and not os.path.exists(seed_path), r
    assert "{}-cidata.iso".format(guest_name) not in lab.virsh(hv1, "vol-list", pool["name"]).stdout
    os.unlink(disk)
