"""The volume and volume_info modules, run in-process against libvirt's test:///default driver; images
imported from a URL are served by a real HTTP server on 127.0.0.1.

The test driver cannot resize, wipe or upload; those paths run on the lab (tests/integration)."""

import hashlib
import json
import os

import pytest
from ansible.module_utils import basic

from ansible_collections.lockstep.virt.plugins.module_utils._virt import images
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers import volume as volume_manager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.volume import validate_volume_name
from ansible_collections.lockstep.virt.plugins.modules import volume as volume_module
from ansible_collections.lockstep.virt.plugins.modules import volume_info as info_module
from ansible_collections.lockstep.virt.tests.unit.fakes.image_server import serving

URI = "test:///default"
POOL = "default-pool"
MiB = 1024 * 1024


def vol_args(name="v1", **kw):
    args = {"uri": URI, "pool": POOL, "name": name, "capacity": "16M", "format": "qcow2"}
    args.update(kw)
    return {k: v for k, v in args.items() if v is not None}


def names(hv):
    return sorted(hv.storagePoolLookupByName(POOL).listVolumes())


@pytest.mark.parametrize("name", ["a/b", "../x", "..", ".", "x\0y", "", "  ", "a\\b", "x" * 300])
def test_bad_names(name):
    with pytest.raises(ValidationError):
        validate_volume_name(name)


def test_create_idempotent(hv, run_module):
    r = run_module(volume_module.main, vol_args(), check_mode=True, diff=True)
    assert r["changed"] and r["actions"] == ["create"] and r["volume"]["capacity"] == 16 * MiB
    assert r["diff"]["before"] == "state: absent\n" and "capacity: 16777216 (16 MiB)" in r["diff"]["after"]
    assert names(hv) == []
    r = run_module(volume_module.main, vol_args(), diff=True)
    assert r["actions"] == ["create"] and r["volume"]["format"] == "qcow2"
    assert r["volume"]["path"] == "/default-pool/v1"
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = run_module(volume_module.main, vol_args(), check_mode=check, diff=diff)
        assert not r["changed"] and r["actions"] == [], (check, diff, r)
        if diff:
            assert r["diff"]["before"] == r["diff"]["after"]
    assert not run_module(volume_module.main, vol_args(capacity=None))["changed"]


def test_overlay_and_clone(hv, run_module):
    run_module(volume_module.main, vol_args("base.qcow2"))
    r = run_module(volume_module.main, vol_args("ov.qcow2", capacity=None, format=None, backing_volume="base.qcow2"))
    assert r.get("actions") == ["create_overlay"], r
    assert r["volume"]["backing"] == {"path": "/default-pool/base.qcow2", "format": "qcow2"}
    args = vol_args("ov.qcow2", capacity=None, format=None, backing_volume="base.qcow2")
    assert not run_module(volume_module.main, args)["changed"]
    r = run_module(volume_module.main, vol_args("ov.qcow2", capacity=None, format=None, backing_volume="ov.qcow2"))
    assert r["failed"] and "cannot change" in r["msg"]
    r = run_module(volume_module.main, vol_args("cl.qcow2", capacity=None, format=None, clone_from="base.qcow2"))
    assert r["actions"] == ["clone"] and r["volume"]["capacity"] == 16 * MiB and r["volume"]["format"] == "qcow2"
    args = vol_args("cl.qcow2", capacity=None, format=None, clone_from="base.qcow2")
    assert not run_module(volume_module.main, args)["changed"]
    info = run_module(info_module.main, {"uri": URI, "pool": POOL, "name": "ov.qcow2"}, check_mode=True)
    (v,) = info["volumes"]
    assert v["backing_chain"] == [
        {"path": "/default-pool/base.qcow2", "format": "qcow2", "volume": "base.qcow2", "pool": POOL}
    ]
    assert [x["name"] for x in run_module(info_module.main, {"uri": URI})["volumes"]] == [
        "base.qcow2",
        "cl.qcow2",
        "ov.qcow2",
    ]


def test_shrink_refused_and_grow_predicted(hv, run_module):
    run_module(volume_module.main, vol_args())
    r = run_module(volume_module.main, vol_args(capacity="8M"))
    assert r["failed"] and "allow_shrink" in r["msg"] and not r["changed"]
    r = run_module(volume_module.main, vol_args(capacity="8M", allow_shrink=True), check_mode=True)
    assert r["actions"] == ["shrink"] and r["volume"]["capacity"] == 8 * MiB
    r = run_module(volume_module.main, vol_args(capacity="32M"), check_mode=True, diff=True)
    assert r["changed"] and r["actions"] == ["resize"] and "(32 MiB)" in r["diff"]["after"]
    assert hv.storagePoolLookupByName(POOL).storageVolLookupByName("v1").info()[1] == 16 * MiB


@pytest.mark.parametrize(
    "args,needle",
    [
        ({"name": "../../etc/passwd"}, "path separator"),
        ({"name": "x..y"}, "'..'"),
        ({"name": "a/b"}, "path separator"),
        ({"name": "v2", "capacity": "lots"}, "capacity must be a size"),
        ({"name": "v2", "capacity": None}, "capacity is required"),
        ({"name": "v2", "backing_volume": "nope"}, "does not exist in pool"),
        ({"name": "v2", "clone_from": "/etc/passwd"}, "no storage volume known"),
        ({"name": "v2", "import_from": "/nonexistent/file"}, "not a regular file"),
        ({"name": "v2", "import_from": "relative"}, "absolute"),
        ({"name": "v2", "backing_volume": "v1", "format": "raw"}, "must be qcow2"),
        ({"name": "v2", "pool": "nopool"}, "does not exist"),
        ({"name": "v2", "format": "vmdk"}, "value of format must be one of"),
        ({"name": "v2", "colour": "red"}, "colour"),
    ],
)
def test_bad_input(hv, run_module, args, needle):
    run_module(volume_module.main, vol_args())
    before = names(hv)
    r = run_module(volume_module.main, vol_args(**args))
    assert r["failed"] and needle in r["msg"] and not r.get("changed"), r
    assert names(hv) == before


def test_format_change_refused(hv, run_module):
    run_module(volume_module.main, vol_args())
    r = run_module(volume_module.main, vol_args(format="raw"))
    assert r["failed"] and "format cannot change" in r["msg"]


def test_inactive_pool(hv, run_module):
    hv.storagePoolLookupByName(POOL).destroy()
    try:
        r = run_module(volume_module.main, vol_args())
        assert r["failed"] and "not active" in r["msg"]
    finally:
        hv.storagePoolLookupByName(POOL).create(0)


def test_absent(hv, run_module):
    run_module(volume_module.main, vol_args())
    r = run_module(volume_module.main, vol_args(state="absent", wipe=True), check_mode=True, diff=True)
    assert r["actions"] == ["wipe", "delete"] and r["diff"]["after"] == "state: absent\n" and names(hv) == ["v1"]
    r = run_module(volume_module.main, vol_args(state="absent"))
    assert r["actions"] == ["delete"] and names(hv) == [] and r["volume"] is None
    for check in (False, True):
        assert not run_module(volume_module.main, vol_args(state="absent"), check_mode=check)["changed"]


def test_import_of_an_overlay_is_refused(hv, run_module, tmp_path):
    import struct

    img = tmp_path / "overlay.qcow2"
    # a qcow2 header whose backing file offset is set: importing it would expose a host file to a guest
    img.write_bytes(b"QFI\xfb" + struct.pack(">I", 3) + struct.pack(">Q", 512) + b"\0" * 8 + struct.pack(">Q", MiB))
    r = run_module(volume_module.main, vol_args("imp", capacity=None, format=None, import_from=str(img)))
    assert r["failed"] and "backing file" in r["msg"] and names(hv) == []


@pytest.mark.parametrize(
    "capacity,allocation,expected_capacity,expected_allocation",
    [
        ("1GB", "1MB", 10**9, 10**6),
        ("1G", "1M", 1024**3, MiB),
        (4096000, "0", 4096000, 0),
        ("3 MiB", 512, 3 * MiB, 512),
    ],
)
def test_capacity_and_allocation_units(hv, run_module, capacity, allocation, expected_capacity, expected_allocation):
    r = run_module(volume_module.main, vol_args(capacity=capacity, allocation=allocation, format="raw"))
    assert r["changed"] and r["volume"]["capacity"] == expected_capacity, r
    info = hv.storagePoolLookupByName(POOL).storageVolLookupByName("v1").info()
    assert info[1] == expected_capacity and info[2] == expected_allocation


# --------------------------------------------------------------------------- import_from a URL
# (the test driver cannot upload: a fetched image reaching a volume is checked on the lab)
IMAGE = b"\1" * MiB
IMAGE_SHA256 = hashlib.sha256(IMAGE).hexdigest()


@pytest.fixture
def server(monkeypatch):
    yield from serving(monkeypatch, {"/disk.img": IMAGE})


def url_args(server, tmp_path, name="fetched.qcow2", **kw):
    args = {
        "capacity": None,
        "format": "qcow2",
        "import_from": server.url("/disk.img"),
        "checksum": "sha256:" + IMAGE_SHA256,
        "cache_dir": str(tmp_path / "cache"),
    }
    args.update(kw)
    return vol_args(name, **args)


@pytest.mark.parametrize(
    "args,needle",
    [
        ({"checksum": None}, "no checksum is given; an image that cannot be verified is not imported"),
        ({"checksum": "md5:d41d8cd98f00b204e9800998ecf8427e"}, "algorithm must be one of"),
        ({"checksum": "sha256:abc"}, "64 hexadecimal digits"),
        ({"import_from": "/srv/disk.img"}, "checksum goes with an http:// or https:// URL"),
        ({"import_from": "ftp://example.org/disk.img"}, "only http:// and https:// URLs"),
        ({"import_from": "https://example.org/"}, "does not name a file"),
        ({"timeout": 0}, "timeout must be"),
        ({"cache_dir": "relative/cache"}, "cache_dir must be an absolute path"),
    ],
)
def test_url_import_bad_input(hv, run_module, server, tmp_path, args, needle):
    r = run_module(volume_module.main, url_args(server, tmp_path, **args))
    assert r["failed"] and needle in r["msg"] and not r.get("changed"), r
    assert names(hv) == [] and server.requests == [] and not (tmp_path / "cache").exists()


def test_url_import_check_mode_reports_the_fetch_and_fetches_nothing(hv, run_module, server, tmp_path):
    r = run_module(volume_module.main, url_args(server, tmp_path), check_mode=True, diff=True)
    assert r["changed"] and r["actions"] == ["fetch", "import"], r
    assert r["image"] == {
        "url": server.url("/disk.img"),
        "checksum": "sha256:" + IMAGE_SHA256,
        "path": str(tmp_path / "cache" / ("sha256-" + IMAGE_SHA256)),
        "cached": False,
        "downloaded": 0,
    }
    assert "image: {} (sha256:{}; cached: no)".format(server.url("/disk.img"), IMAGE_SHA256) in r["diff"]["after"]
    assert server.requests == [] and names(hv) == [] and not (tmp_path / "cache").exists()
    # a checksum file is not read in check mode either
    sums = "sha256:" + server.url("/SHA256SUMS")
    r = run_module(volume_module.main, url_args(server, tmp_path, checksum=sums), check_mode=True)
    assert r["image"]["cached"] is None and r["image"]["checksum"] == sums and server.requests == []


def test_url_import_check_mode_with_the_image_cached(hv, run_module, server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ("sha256-" + IMAGE_SHA256)).write_bytes(IMAGE)
    r = run_module(volume_module.main, url_args(server, tmp_path), check_mode=True)
    assert r["actions"] == ["convert", "import"] and r["image"]["cached"] is True, r
    assert r["image"]["format"] == "raw" and r["volume"]["capacity"] == MiB and r["volume"]["format"] == "qcow2"
    r = run_module(volume_module.main, url_args(server, tmp_path, format="raw"), check_mode=True)
    assert r["actions"] == ["import"] and server.requests == []


def test_url_import_of_a_present_volume_makes_no_request(hv, run_module, server, tmp_path):
    run_module(volume_module.main, vol_args("fetched.qcow2"))
    for check, diff in ((False, False), (True, False), (False, True), (True, True)):
        r = run_module(volume_module.main, url_args(server, tmp_path), check_mode=check, diff=diff)
        assert not r["changed"] and r["actions"] == [] and "image" not in r, (check, diff, r)
    assert server.requests == [] and not (tmp_path / "cache").exists()


def test_url_import_with_a_wrong_checksum_fails_and_leaves_nothing(hv, run_module, server, tmp_path):
    wrong = hashlib.sha256(b"another image").hexdigest()
    r = run_module(volume_module.main, url_args(server, tmp_path, checksum="sha256:" + wrong))
    assert r["failed"] and not r["changed"] and "does not have the checksum given" in r["msg"], r
    assert server.requests == ["/disk.img"] and names(hv) == [] and os.listdir(tmp_path / "cache") == []


def test_url_password_never_shown(hv, run_module, server, tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(basic, "has_journal", False)
    monkeypatch.setattr(basic.AnsibleModule, "_log_to_syslog", lambda self, msg: lines.append(msg))
    url = server.url("/missing.img", "ops:Vx9%2Fq7@")
    for check in (True, False):
        r = run_module(volume_module.main, url_args(server, tmp_path, import_from=url), check_mode=check)
        assert "ops:********@127.0.0.1" in json.dumps(r), r
        everything = json.dumps(r) + "".join(lines)
        assert "Vx9" not in everything and "Invoked with" in "".join(lines)
    assert r["failed"] and "HTTP 404" in r["msg"] and names(hv) == []


def test_url_import_failing_after_the_fetch_removes_the_converted_copy(hv, run_module, server, tmp_path, monkeypatch):
    # the test driver cannot upload: the import fails after the fetch and the conversion
    copies = []

    def convert(*args):
        copies.append(images.convert_image(*args))
        assert os.path.isfile(copies[-1])
        return copies[-1]

    monkeypatch.setattr(volume_manager, "convert_image", convert)
    r = run_module(volume_module.main, url_args(server, tmp_path))
    assert len(copies) == 1 and not os.path.exists(copies[0])
    assert r["failed"] and "the new volume was removed again" in r["msg"] and names(hv) == [], r
    assert r["image"]["cached"] is False and r["image"]["downloaded"] == MiB and r["image"]["format"] == "raw"
    assert server.requests == ["/disk.img"]
    assert os.listdir(tmp_path / "cache") == ["sha256-" + IMAGE_SHA256]  # the image stays cached; no copy left
