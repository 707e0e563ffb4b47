"""lockstep.virt.volume importing an image from an http:// URL on the lab: fetched on hv1 from an HTTP server
running inside hv1's own namespaces (bound to its 127.0.0.1) that logs every request it answers, checked
against its checksum, cached by checksum, converted with qemu-img, never fetched for a volume that exists."""

import ast
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
import uuid

import pytest
import yaml
from labkit import LAB, REPO, image_info

MODULE = "lockstep.virt.volume"
HV1 = "hv1"
MiB = 1024 * 1024
SERVER_SCRIPT = os.path.join(REPO, "tests", "integration", "request_counting_server.py")
EXAMPLE_BASE = "https://cloud.debian.org/images/cloud/bookworm/latest/"
EXAMPLE_IMAGE = "debian-12-genericcloud-amd64.qcow2"


class Served:
    """The HTTP server on hv1: its files (``www``), the requests it answered, and a cache dir for the module."""

    def __init__(self, root, pid, port):
        self.root, self.pid, self.port = root, pid, port
        self.www = os.path.join(root, "www")
        self.log = os.path.join(root, "requests.log")
        self.cache = os.path.join(root, "cache")

    def url(self, name, userinfo=""):
        return "http://{}127.0.0.1:{}/{}".format(userinfo, self.port, name)

    def requests(self):
        with open(self.log) as fh:
            return fh.read().split()

    def put(self, name, data):
        with open(os.path.join(self.www, name), "wb") as fh:
            fh.write(data)
        return hashlib.sha256(data).hexdigest()

    def cached(self):
        return sorted(os.listdir(self.cache)) if os.path.isdir(self.cache) else []


@pytest.fixture
def served(lab):
    """The server, started inside hv1's namespaces with the lab's exec helper, stopped by its pid afterwards."""
    root = os.path.join(lab.images_dir, "it-srv-" + uuid.uuid4().hex[:8])
    os.makedirs(os.path.join(root, "www"))
    ready = os.path.join(root, "ready.json")
    argv = [LAB, "exec", HV1, "--", "python3", SERVER_SCRIPT, os.path.join(root, "www"), root + "/requests.log", ready]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not os.path.exists(ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the HTTP server did not start on {}: {}".format(HV1, proc.communicate()[1]))
        time.sleep(0.1)
    with open(ready) as fh:
        info = json.load(fh)
    try:
        yield Served(root, info["pid"], info["port"])
    finally:
        os.kill(info["pid"], signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def vol(pool, served, name, url, checksum, **kw):
    out = {"pool": pool["name"], "name": name, "import_from": url, "checksum": checksum, "cache_dir": served.cache}
    out.update(kw)
    return out


def sha256_of(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def assert_unchanged(lab, args):
    for check, diff in ((False, False), (True, False), (False, True)):
        r = lab.module(HV1, MODULE, args, check=check, diff=diff)
        assert not r["changed"] and r["actions"] == [] and "image" not in r, (check, diff, r)


def test_fetched_once_cached_converted_and_idempotent(lab, active_pool, served):
    pool = active_pool
    digest = served.put("disk.raw", os.urandom(MiB))
    checksum = "sha256:" + digest
    first = vol(pool, served, "fetched.raw", served.url("disk.raw"), checksum)

    # check mode: says what it would fetch, fetches nothing, makes nothing
    r = lab.module(HV1, MODULE, first, check=True, diff=True)
    assert r["changed"] and r["actions"] == ["fetch", "import"], r
    assert r["image"]["cached"] is False and r["image"]["checksum"] == checksum and r["image"]["downloaded"] == 0
    assert "image: {} ({}; cached: no)".format(served.url("disk.raw"), checksum) in r["diff"]["after"]
    assert served.requests() == [] and os.listdir(pool["path"]) == [] and served.cached() == []

    r = lab.module(HV1, MODULE, first)
    assert r["changed"] and r["actions"] == ["fetch", "import"], r
    entry = os.path.join(served.cache, "sha256-" + digest)
    assert r["image"] == {
        "url": served.url("disk.raw"),
        "checksum": checksum,
        "path": entry,
        "cached": False,
        "downloaded": MiB,
        "format": "raw",
    }
    assert served.requests() == ["/disk.raw"]
    assert r["volume"]["format"] == "raw" and r["volume"]["capacity"] == MiB
    assert sha256_of(r["volume"]["path"]) == digest
    assert served.cached() == ["sha256-" + digest]
    assert stat.S_IMODE(os.stat(served.cache).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(entry).st_mode) == 0o600

    # the volume is there: no request at all, in any mode
    assert_unchanged(lab, first)
    assert served.requests() == ["/disk.raw"]

    # a new volume from the cached image: check mode says so, and nothing is fetched
    other = vol(pool, served, "other.raw", served.url("disk.raw"), checksum)
    r = lab.module(HV1, MODULE, other, check=True)
    assert r["actions"] == ["import"] and r["image"]["cached"] is True, r
    assert not os.path.exists(os.path.join(pool["path"], "other.raw"))

    # raw into a qcow2 volume: converted (from the cache), the temporary copy removed
    converted = vol(pool, served, "converted.qcow2", served.url("disk.raw"), checksum, format="qcow2")
    r = lab.module(HV1, MODULE, converted)
    assert r["changed"] and r["actions"] == ["convert", "import"] and r["image"]["cached"] is True, r
    info = image_info(r["volume"]["path"])
    assert info["format"] == "qcow2" and info["virtual-size"] == MiB and r["volume"]["format"] == "qcow2"
    same = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", entry, r["volume"]["path"]], check=False
    )
    assert same.returncode == 0
    assert served.cached() == ["sha256-" + digest]
    assert_unchanged(lab, converted)
    assert served.requests() == ["/disk.raw"]


def test_wrong_checksum_or_missing_image_leaves_nothing(lab, active_pool, served):
    pool = active_pool
    served.put("disk.raw", os.urandom(MiB))
    wrong = "sha256:" + hashlib.sha256(b"not this image").hexdigest()
    r = lab.module_fails(HV1, MODULE, vol(pool, served, "bad.raw", served.url("disk.raw"), wrong))
    assert "does not have the checksum given: expected {}".format(wrong) in r["msg"], r
    assert "nothing was imported" in r["msg"] and not r["changed"]
    assert served.requests() == ["/disk.raw"]
    assert os.listdir(pool["path"]) == [] and served.cached() == []

    # a URL with a password: masked in the result and message
    url = served.url("missing.raw", "ops:Kq7Zp3w@")
    r = lab.module_fails(HV1, MODULE, vol(pool, served, "bad.raw", url, wrong))
    assert "HTTP 404" in r["msg"] and "ops:********@127.0.0.1" in r["msg"], r
    assert "Kq7Zp3w" not in json.dumps(r) and os.listdir(pool["path"]) == [] and served.cached() == []

    # no checksum: refused before anything is fetched
    r = lab.module_fails(HV1, MODULE, vol(pool, served, "bad.raw", served.url("disk.raw"), None))
    assert "an image that cannot be verified is not imported" in r["msg"], r
    assert served.requests() == ["/disk.raw", "/missing.raw"] and os.listdir(pool["path"]) == []


def examples():
    """The module's EXAMPLES that import from a URL, read from the module file."""
    with open(os.path.join(REPO, "plugins", "modules", "volume.py")) as fh:
        tree = ast.parse(fh.read())
    text = next(n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "EXAMPLES")
    return [t for t in yaml.safe_load(text) if "import_from" in t.get(MODULE, {})]


def test_examples(lab, active_pool, served):
    """The import examples as pasted, but for the server (this test's own, serving a small qcow2 image and a
    SHA512SUMS file under the examples' file names), the pool and the cache directory."""
    src = os.path.join(served.root, "src.raw")
    with open(src, "wb") as fh:
        fh.write(os.urandom(MiB))
    image = os.path.join(served.www, EXAMPLE_IMAGE)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", src, image], check=True)
    with open(image, "rb") as fh:
        sha512 = hashlib.sha512(fh.read()).hexdigest()
    served.put("SHA512SUMS", "{}  other.qcow2\n{}  {}\n".format("0" * 128, sha512, EXAMPLE_IMAGE).encode())
    pasted = json.dumps(examples()).replace(EXAMPLE_BASE, served.url(""))
    tasks = json.loads(pasted.replace('"lab-images"', json.dumps(active_pool["name"])))
    assert [t[MODULE]["name"] for t in tasks] == ["debian-12.qcow2", "debian-12.raw"]
    play = [
        {
            "hosts": HV1,
            "gather_facts": False,
            "module_defaults": {MODULE: {"cache_dir": served.cache}},
            "tasks": tasks,
        }
    ]
    out = lab.playbook(play)
    assert out.rc == 0, out.stdout[-4000:]
    qcow2 = out.task(tasks[0]["name"], HV1)
    assert qcow2["actions"] == ["fetch", "import", "resize"] and qcow2["volume"]["format"] == "qcow2", qcow2
    assert qcow2["image"]["checksum"] == "sha512:" + sha512 and qcow2["volume"]["capacity"] == 4 * 1024 * MiB
    raw = out.task(tasks[1]["name"], HV1)
    assert raw["actions"] == ["convert", "import"] and raw["image"]["cached"] is True, raw
    assert image_info(raw["volume"]["path"])["format"] == "raw" and raw["volume"]["capacity"] == MiB
    assert served.requests() == ["/SHA512SUMS", "/" + EXAMPLE_IMAGE, "/SHA512SUMS"]
    again = lab.playbook(play)
    assert again.rc == 0 and not any(r["result"]["changed"] for r in again.results), again.stdout[-3000:]
    assert len(served.requests()) == 3
