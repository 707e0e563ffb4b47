"""The secret and secret_info modules in-process, on test:///default with libvirt's secret calls added
(the test driver has no secret driver; see tests/unit/fakes/secrets.py)."""

import json

import libvirt
import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers import secret as secret_utils
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.pool import build_pool_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import to_text
from ansible_collections.lockstep.virt.plugins.modules import secret as secret_module
from ansible_collections.lockstep.virt.plugins.modules import secret_info as info_module
from ansible_collections.lockstep.virt.tests.unit.fakes.secrets import FakeConnection, SecretDriver

URI = "test:///default"
VALUE = "Sup3r-s3cret value"


@pytest.fixture
def driver(hv, monkeypatch, tmp_path):
    drv = SecretDriver(str(tmp_path))
    real_open, real_ro = libvirt.open, libvirt.openReadOnly
    monkeypatch.setattr(libvirt, "open", lambda uri: FakeConnection(real_open(uri), drv))
    monkeypatch.setattr(libvirt, "openReadOnly", lambda uri: FakeConnection(real_ro(uri), drv))
    monkeypatch.setattr(secret_utils, "SECRETS_DIR", str(tmp_path))
    return drv


def args(**kw):
    out = {"uri": URI, "usage": "ceph", "usage_id": "client.libvirt secret", "value": VALUE}
    out.update(kw)
    return dict((k, v) for k, v in out.items() if v is not None)


@pytest.mark.parametrize("private", [True, False])
def test_define_set_value_idempotent_value_never_returned(driver, run_module, private):
    r = run_module(secret_module.main, args(private=private), check_mode=True, diff=True)
    assert r["changed"] and r["actions"] == ["define", "set_value"] and not driver.secrets
    r = run_module(secret_module.main, args(private=private, description="ceph"), diff=True)
    assert r["actions"] == ["define", "set_value"] and r["secret"]["private"] is private
    assert driver.sets == 1
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = run_module(secret_module.main, args(private=private), check_mode=check, diff=diff)
        assert not r["changed"] and r["value_compared"] is True, (check, diff, r)
        assert VALUE not in json.dumps(r)
    assert driver.sets == 1
    r = run_module(secret_module.main, args(private=private, value="other"), diff=True)
    assert r["actions"] == ["set_value"] and r["value_changed"] and driver.sets == 2
    assert "other" not in json.dumps(r)
    (sec,) = driver.secrets.values()
    assert driver.values[sec.UUIDString()] == b"other"


def test_base64_and_redefine(driver, run_module):
    r = run_module(secret_module.main, args(value="YWJj", value_encoding="base64"))
    (sec,) = driver.secrets.values()
    assert driver.values[sec.UUIDString()] == b"abc"
    r = run_module(secret_module.main, args(value="abc"))
    assert not r["changed"]
    r = run_module(secret_module.main, args(value="abc", description="new", private=False))
    assert r["actions"] == ["redefine"] and set(r["differences"]) == {"/secret/@private", "/secret/description"}
    assert r["secret"]["uuid"] == sec.UUIDString() and r["secret"]["description"] == "new"
    # by uuid only: keeps its usage and description
    r = run_module(secret_module.main, {"uri": URI, "uuid": sec.UUIDString(), "private": False})
    assert not r["changed"] and r["secret"]["usage_id"] == "client.libvirt secret"


def test_private_ephemeral_cannot_be_compared(driver, run_module):
    r = run_module(secret_module.main, args(ephemeral=True))
    assert r["actions"] == ["define", "set_value"]
    r = run_module(secret_module.main, args(ephemeral=True))
    assert r["failed"] and "cannot be compared" in r["msg"] and VALUE not in json.dumps(r)
    r = run_module(secret_module.main, args(ephemeral=True, update_value="on_create"))
    assert not r["changed"] and r["value_compared"] is False
    r = run_module(secret_module.main, args(ephemeral=True, update_value="always"))
    assert r["actions"] == ["set_value"] and driver.sets == 2


def test_absent_and_info(driver, run_module):
    run_module(secret_module.main, args())
    run_module(secret_module.main, args(usage="volume", usage_id="/srv/vault.luks", value="pw"))
    r = run_module(info_module.main, {"uri": URI})
    assert [(s["usage"], s["usage_id"]) for s in r["secrets"]] == [
        ("ceph", "client.libvirt secret"),
        ("volume", "/srv/vault.luks"),
    ]
    assert VALUE not in json.dumps(r) and "pw" not in json.dumps(r).replace("private", "")
    r = run_module(info_module.main, {"uri": URI, "usage": "volume"})
    assert len(r["secrets"]) == 1
    gone = {"uri": URI, "usage": "volume", "usage_id": "/srv/vault.luks", "state": "absent"}
    for check in (True, False):
        r = run_module(secret_module.main, gone, check_mode=check)
        assert r["actions"] == ["undefine"]
    r = run_module(secret_module.main, gone)
    assert not r["changed"] and len(driver.secrets) == 1


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"usage_id": None}, "usage and usage_id go together"),
        ({"usage": None, "usage_id": None}, "named by uuid"),
        ({"uuid": "nope"}, "not a UUID"),
        ({"usage": "volume", "usage_id": "relative.img"}, "absolute path"),
        ({"value": "%%%", "value_encoding": "base64"}, "not valid base64"),
    ],
)
def test_bad_input(driver, run_module, kw, needle):
    r = run_module(secret_module.main, args(**kw))
    assert r["failed"] and needle in r["msg"] and not driver.secrets


def test_uuid_and_usage_must_agree(driver, run_module):
    run_module(secret_module.main, args())
    r = run_module(secret_module.main, args(usage_id="other"))
    other = r["secret"]["uuid"]
    r = run_module(secret_module.main, args(uuid=other))
    assert r["failed"] and "is secret" in r["msg"]


def test_pool_auth_xml():
    rbd = to_text(
        build_pool_xml(
            "r",
            {
                "type": "rbd",
                "source": {
                    "hosts": ["mon1"],
                    "name": "rbd",
                    "auth": {"type": "ceph", "username": "libvirt", "secret_usage": "client.libvirt secret"},
                },
            },
        )
    )
    assert '<auth type="ceph" username="libvirt">' in rbd and '<secret usage="client.libvirt secret"/>' in rbd
    uid = "6b0f3c1e-8f3a-4c39-9d2e-3b7c1a0e5f11"
    iscsi = to_text(
        build_pool_xml(
            "i",
            {
                "type": "iscsi",
                "path": "/dev/disk/by-path",
                "source": {
                    "hosts": ["san1"],
                    "devices": ["iqn.2024-01.lab:t1"],
                    "auth": {"type": "chap", "username": "u", "secret_uuid": uid},
                },
            },
        )
    )
    assert '<auth type="chap" username="u">' in iscsi and '<secret uuid="{}"/>'.format(uid) in iscsi
