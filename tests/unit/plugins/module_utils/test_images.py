"""Images fetched over HTTP for a volume import (plugins/module_utils/_virt/images.py): checksums and checksum
files, the cache, partial and wrong downloads. The downloads go to a real HTTP server on 127.0.0.1 that
counts the requests it answers."""

import hashlib
import os
import stat
import subprocess

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt import images
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError, VirtError
from ansible_collections.lockstep.virt.tests.unit.fakes.image_server import serving

IMAGE = os.urandom(3 * 1024 * 1024 + 17)  # more than one chunk, not a multiple of it
SHA256 = hashlib.sha256(IMAGE).hexdigest()
SHA512 = hashlib.sha512(IMAGE).hexdigest()


@pytest.fixture
def server(monkeypatch):
    yield from serving(monkeypatch, {"/images/disk.img": IMAGE})


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache" / "images")


def files(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


# --------------------------------------------------------------------------- checksums
@pytest.mark.parametrize(
    "text,expected",
    [
        ("sha256:" + SHA256, images.Checksum("sha256", SHA256, None)),
        ("SHA256:" + SHA256.upper(), images.Checksum("sha256", SHA256, None)),
        ("sha512:" + SHA512, images.Checksum("sha512", SHA512, None)),
        ("sha256:https://example.org/SHA256SUMS", images.Checksum("sha256", None, "https://example.org/SHA256SUMS")),
    ],
)
def test_parse_checksum(text, expected):
    assert images.parse_checksum(text) == expected


@pytest.mark.parametrize(
    "text,needle",
    [
        (SHA256, "<algorithm>:<hex digest>"),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", "algorithm must be one of sha256, sha512"),
        ("sha256:" + SHA256[:-1], "64 hexadecimal digits"),
        ("sha512:" + SHA256, "128 hexadecimal digits"),
        ("sha256:" + "g" * 64, "64 hexadecimal digits"),
        ("sha256:ftp://example.org/SUMS", "64 hexadecimal digits"),
        ("sha256:https:///SUMS", "not an http:// or https:// URL with a host"),
    ],
)
def test_bad_checksums_are_refused(text, needle):
    with pytest.raises(ValidationError) as exc:
        images.parse_checksum(text)
    assert needle in exc.value.msg


SUMS = """\
{other}  debian-12-genericcloud-amd64.raw
{mine}  debian-12-genericcloud-amd64.qcow2
"""


@pytest.mark.parametrize(
    "text",
    [
        SUMS.format(other="0" * 64, mine=SHA256),
        SUMS.format(other="0" * 64, mine=SHA256).replace("  debian-12-genericcloud-amd64.qcow2", " *disk.qcow2x")
        + SHA256
        + " *debian-12-genericcloud-amd64.qcow2\n",
        "{}  ./debian-12-genericcloud-amd64.qcow2\n".format(SHA256),
        "{}  images/debian-12-genericcloud-amd64.qcow2\n".format(SHA256),
        # BSD form (Fedora's CHECKSUM files), beside a line of another algorithm
        "SHA512 (debian-12-genericcloud-amd64.qcow2) = {}\nSHA256 (debian-12-genericcloud-amd64.qcow2) = {}\n".format(
            SHA512, SHA256
        ),
        # GNU form, a sha512 line for the same name first (another length: passed over)
        "{}  debian-12-genericcloud-amd64.qcow2\n{}  debian-12-genericcloud-amd64.qcow2\n".format(SHA512, SHA256),
        SHA256 + "\n",  # the file's only word
    ],
)
def test_checksum_file_line_naming_the_image(text):
    assert images.checksum_from_file(text, "sha256", "debian-12-genericcloud-amd64.qcow2") == SHA256


def test_checksum_file_without_the_image():
    with pytest.raises(VirtError) as exc:
        images.checksum_from_file(SUMS.format(other="0" * 64, mine=SHA256), "sha256", "other.qcow2", "SHA256SUMS")
    assert exc.value.msg == "SHA256SUMS has no sha256 checksum for other.qcow2"
    with pytest.raises(VirtError):
        images.checksum_from_file("not-a-digest\n", "sha256", "x")


def test_redact_url():
    assert images.redact_url("https://u:p%40ss@example.org/a.img") == "https://u:********@example.org/a.img"
    assert images.redact_url("https://u@example.org/a.img") == "https://u@example.org/a.img"
    assert images.redact_url("https://example.org/a@b.img") == "https://example.org/a@b.img"
    assert images.is_url("HTTPS://example.org/a.img") and not images.is_url("/srv/a.img")


# --------------------------------------------------------------------------- fetch, cache
def test_fetch_then_cache_hit_makes_no_request(server, cache):
    checksum = images.parse_checksum("sha256:" + SHA256)
    got = images.fetch_image(server.url("/images/disk.img"), checksum, cache)
    path = os.path.join(cache, "sha256-" + SHA256)
    assert got == {
        "url": server.url("/images/disk.img"),
        "checksum": "sha256:" + SHA256,
        "path": path,
        "cached": False,
        "downloaded": len(IMAGE),
    }
    assert server.requests == ["/images/disk.img"]
    assert open(path, "rb").read() == IMAGE and files(cache) == ["sha256-" + SHA256]
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700 and stat.S_IMODE(os.stat(path).st_mode) == 0o600

    again = images.fetch_image(server.url("/images/disk.img"), checksum, cache)
    assert again == dict(got, cached=True, downloaded=0)
    assert server.requests == ["/images/disk.img"]
    # no server at all: a cached image needs none
    server.stop()
    assert images.fetch_image(server.url("/images/disk.img"), checksum, cache)["cached"] is True


def test_a_cached_file_that_lost_its_checksum_is_fetched_again(server, cache):
    checksum = images.parse_checksum("sha512:" + SHA512)
    os.makedirs(cache)
    with open(os.path.join(cache, "sha512-" + SHA512), "wb") as fh:
        fh.write(IMAGE[:-1] + b"!")
    got = images.fetch_image(server.url("/images/disk.img"), checksum, cache)
    assert got["cached"] is False and server.requests == ["/images/disk.img"]
    assert open(got["path"], "rb").read() == IMAGE


def test_wrong_checksum_leaves_no_file(server, cache):
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(VirtError) as exc:
        images.fetch_image(server.url("/images/disk.img"), images.parse_checksum("sha256:" + wrong), cache)
    assert "does not have the checksum given: expected sha256:{}, got sha256:{}".format(wrong, SHA256) in exc.value.msg
    assert "nothing was imported" in exc.value.msg
    assert files(cache) == [] and server.requests == ["/images/disk.img"]


def test_a_partial_download_leaves_no_file(server, cache):
    server.truncate["/images/disk.img"] = 1024 * 1024 + 5
    checksum = images.parse_checksum("sha256:" + SHA256)
    with pytest.raises(VirtError) as exc:
        images.fetch_image(server.url("/images/disk.img"), checksum, cache)
    assert "ended after {} of {} bytes".format(1024 * 1024 + 5, len(IMAGE)) in exc.value.msg, exc.value.msg
    assert files(cache) == []
    # a partial file an interrupted run left behind is written over, and never taken for the image
    with open(os.path.join(cache, "sha256-{}.part".format(SHA256)), "wb") as fh:
        fh.write(IMAGE[:1000])
    assert images.plan_fetch(server.url("/images/disk.img"), checksum, cache)["cached"] is False
    del server.truncate["/images/disk.img"]
    got = images.fetch_image(server.url("/images/disk.img"), checksum, cache)
    assert got["cached"] is False and files(cache) == ["sha256-" + SHA256]
    assert open(got["path"], "rb").read() == IMAGE


def test_http_errors_name_the_url_without_its_password(server, cache):
    checksum = images.parse_checksum("sha256:" + SHA256)
    with pytest.raises(VirtError) as exc:
        images.fetch_image(server.url("/images/missing.img", "ops:s3cr%2Ft@"), checksum, cache)
    assert "HTTP 404" in exc.value.msg and "ops:********@127.0.0.1" in exc.value.msg, exc.value.msg
    assert "s3cr" not in exc.value.msg and files(cache) == []


def test_basic_auth_from_the_url(server, cache):
    server.auth = ("ops", "s3cr/t")
    checksum = images.parse_checksum("sha256:" + SHA256)
    got = images.fetch_image(server.url("/images/disk.img", "ops:s3cr%2Ft@"), checksum, cache)
    assert got["url"] == server.url("/images/disk.img", "ops:********@") and got["cached"] is False
    assert open(got["path"], "rb").read() == IMAGE


def test_checksum_file(server, cache):
    server.files["/images/SHA256SUMS"] = (
        SUMS.format(other="0" * 64, mine=SHA256).replace("debian-12-genericcloud-amd64.qcow2", "disk.img").encode()
    )
    checksum = images.parse_checksum("sha256:" + server.url("/images/SHA256SUMS"))
    plan = images.plan_fetch(server.url("/images/disk.img"), checksum, cache)
    assert plan["cached"] is None and plan["checksum"] == "sha256:" + server.url("/images/SHA256SUMS")
    assert server.requests == [] and not os.path.exists(cache)
    got = images.fetch_image(server.url("/images/disk.img"), checksum, cache)
    assert got["checksum"] == "sha256:" + SHA256 and got["cached"] is False
    assert server.requests == ["/images/SHA256SUMS", "/images/disk.img"]
    # cached: only the checksum file is read
    assert images.fetch_image(server.url("/images/disk.img"), checksum, cache)["cached"] is True
    assert server.requests == ["/images/SHA256SUMS", "/images/disk.img", "/images/SHA256SUMS"]
    # a checksum file that does not name the image: nothing is fetched
    with pytest.raises(VirtError) as exc:
        images.fetch_image(server.url("/images/other.img"), checksum, cache)
    assert "has no sha256 checksum for other.img" in exc.value.msg and server.requests[-1] == "/images/SHA256SUMS"


def test_plan_fetch_makes_no_request_and_writes_nothing(server, cache):
    checksum = images.parse_checksum("sha256:" + SHA256)
    plan = images.plan_fetch(server.url("/images/disk.img"), checksum, cache)
    assert plan == {
        "url": server.url("/images/disk.img"),
        "checksum": "sha256:" + SHA256,
        "path": os.path.join(cache, "sha256-" + SHA256),
        "cached": False,
        "downloaded": 0,
    }
    assert server.requests == [] and not os.path.exists(cache)
    images.fetch_image(server.url("/images/disk.img"), checksum, cache)
    assert images.plan_fetch(server.url("/images/disk.img"), checksum, cache)["cached"] is True


def test_cache_dir_must_be_absolute():
    with pytest.raises(ValidationError):
        images.ImageCache("var/cache/images")


def test_convert_raw_to_qcow2(tmp_path):
    raw = tmp_path / "sha256-x"
    raw.write_bytes(b"\1" * 1024 * 1024)
    tmp = images.convert_image(str(raw), "raw", "qcow2")
    try:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".qcow2.tmp")
        assert images.file_format(tmp) == ("qcow2", 1024 * 1024, False)
        out = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), tmp], check=False)
        assert out.returncode == 0
    finally:
        os.unlink(tmp)
    with pytest.raises(VirtError) as exc:
        images.convert_image(str(raw), "qcow2", "raw")  # not a qcow2 image: qemu-img says so
    assert "qemu-img could not convert" in exc.value.msg and sorted(os.listdir(tmp_path)) == ["sha256-x"]
