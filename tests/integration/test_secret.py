"""lockstep.virt.secret and secret_info on the lab's hosts; a pool that authenticates with one."""

import json
import os
import subprocess
import tempfile
import uuid

import pytest
import yaml
from labkit import REPO

MODULE = "lockstep.virt.secret"


@pytest.fixture
def usage_id(lab):
    name = "it-" + uuid.uuid4().hex[:8]
    yield name
    for host in lab.hosts:
        listing = lab.virsh(host, "secret-list", check=False).stdout
        for line in listing.splitlines():
            if name in line:
                lab.virsh(host, "secret-undefine", line.split()[0], check=False)


def secret_uuid(lab, host, usage_id):
    for line in lab.virsh(host, "secret-list").stdout.splitlines():
        if usage_id in line:
            return line.split()[0]
    return None


@pytest.mark.parametrize("private", [True, False])
def test_value_set_once_compared_with_libvirts(lab, usage_id, private):
    hv1 = lab.hosts[0]
    value = "v-" + uuid.uuid4().hex
    args = {"usage": "ceph", "usage_id": usage_id, "value": value, "private": private}
    r = lab.module(hv1, MODULE, args, check=True, diff=True)
    assert r["changed"] and r["actions"] == ["define", "set_value"], r
    assert secret_uuid(lab, hv1, usage_id) is None
    r = lab.module(hv1, MODULE, args, diff=True)
    assert r["actions"] == ["define", "set_value"] and r["secret"]["private"] is private, r
    uid = secret_uuid(lab, hv1, usage_id)
    assert uid == r["secret"]["uuid"]
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = lab.module(hv1, MODULE, args, check=check, diff=diff)
        assert not r["changed"] and r["value_compared"] is True, (check, diff, r)
    # changed behind the module's back: found by comparing with libvirt's value
    res = lab.exec(
        hv1,
        "sh",
        "-c",
        "printf other > /tmp/{0} && virsh secret-set-value {1} --file /tmp/{0} --plain && rm /tmp/{0}".format(
            usage_id, uid
        ),
    )
    assert res.returncode == 0
    r = lab.module(hv1, MODULE, args)
    assert r["actions"] == ["set_value"] and r["value_changed"], r
    if not private:
        got = lab.virsh(hv1, "secret-get-value", "--plain", uid).stdout
        assert got == value
    info = lab.module(hv1, "lockstep.virt.secret_info", {"usage": "ceph", "usage_id": usage_id}, check=True)
    assert [s["uuid"] for s in info["secrets"]] == [uid] and value not in json.dumps(info)
    r = lab.module(hv1, MODULE, {"usage": "ceph", "usage_id": usage_id, "state": "absent"})
    assert r["actions"] == ["undefine"] and secret_uuid(lab, hv1, usage_id) is None


def test_value_nowhere_in_verbose_diff_output(lab, usage_id):
    """The whole output of a real run at -vvv in diff mode (define, no-op, change, removal) lacks the value."""
    hv1 = lab.hosts[0]
    value, other = "leak-" + uuid.uuid4().hex, "leak2-" + uuid.uuid4().hex
    base = {"usage": "ceph", "usage_id": usage_id, "description": "it", "private": False}
    tasks = [
        {"name": "define", MODULE: dict(base, value=value)},
        {"name": "again", MODULE: dict(base, value=value)},
        {"name": "change", MODULE: dict(base, value=other)},
        {"name": "info", "lockstep.virt.secret_info": {}},
        {"name": "absent", MODULE: dict(base, state="absent")},
    ]
    play = [{"hosts": hv1, "gather_facts": False, "tasks": tasks}]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "play.yml")
        with open(path, "w") as fh:
            yaml.safe_dump(play, fh)
        env = lab._env(os.devnull)
        res = subprocess.run(
            ["ansible-playbook", "-vvv", "--diff", "-i", lab.inventory, path],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=600,
            check=False,
        )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "changed=3" in out  # define, change, absent ran for real
    assert value not in out and other not in out


def test_bad_input_changes_nothing(lab, usage_id):
    hv1 = lab.hosts[0]
    r = lab.module_fails(hv1, MODULE, {"usage": "volume", "usage_id": "relative.img", "value": "x"})
    assert "absolute path" in r["msg"]
    r = lab.module_fails(hv1, MODULE, {"usage": "ceph", "usage_id": usage_id, "value": "%", "value_encoding": "base64"})
    assert "base64" in r["msg"] and secret_uuid(lab, hv1, usage_id) is None


def test_iscsi_pool_authenticates_with_the_secret(lab, usage_id):
    hv1 = lab.hosts[0]
    r = lab.module(hv1, MODULE, {"usage": "iscsi", "usage_id": usage_id, "value": "chap-pw"})
    assert r["changed"], r
    pool = {
        "name": usage_id,
        "state": "present",
        "build": False,
        "spec": {
            "type": "iscsi",
            "path": "/dev/disk/by-path",
            "source": {
                "hosts": ["192.0.2.1"],
                "devices": ["iqn.2024-01.lab.example:" + usage_id],
                "auth": {"type": "chap", "username": "lab", "secret_usage": usage_id},
            },
        },
    }
    try:
        r = lab.module(hv1, "lockstep.virt.pool", pool)
        if r.get("failed") and "backend" in r.get("msg", ""):
            pytest.skip("libvirt on the lab has no iscsi storage backend: " + r["msg"])
        assert r["changed"], r
        xml = lab.virsh(hv1, "pool-dumpxml", usage_id).stdout
        assert "<auth type='chap' username='lab'>" in xml and "<secret usage='{}'/>".format(usage_id) in xml
        assert not lab.module(hv1, "lockstep.virt.pool", pool)["changed"]
    finally:
        lab.virsh(hv1, "pool-undefine", usage_id, check=False)
