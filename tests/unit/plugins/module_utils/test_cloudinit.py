"""cloud-init seeds: the files, the image xorriso builds (read back with pycdlib, another ISO 9660
implementation), the CD-ROM and hash in the domain XML, and bad input."""

import io
import shutil

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.cloudinit import (
    build_iso,
    seed_files,
    seed_hash,
    seed_of,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.domain import build_domain_xml
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import compare

pycdlib = pytest.importorskip("pycdlib")
UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"


def spec(**ci):
    return {"memory": 32, "disks": [{"pool": "images", "volume": "g.qcow2", "format": "qcow2"}], "cloud_init": ci}


def read_iso(data):
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        out = {}
        for name in ("user-data", "meta-data", "network-config"):
            buf = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(buf, rr_path="/" + name)
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                continue
            out[name] = buf.getvalue()
        return label, out
    finally:
        iso.close()


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso is not installed")
def test_iso_reads_back():
    files = seed_files(
        "g", {"user_data": "#cloud-config\npackages: [htop]\n", "network_config": {"version": 2, "ethernets": {}}}
    )
    label, got = read_iso(build_iso(files))
    assert label == "cidata"
    assert got == files
    assert got["user-data"] == b"#cloud-config\npackages: [htop]\n"
    assert b'"instance-id": "g"' in got["meta-data"] and b'"version": 2' in got["network-config"]


def test_files_and_hash():
    files = seed_files("g", {"user_data": {"packages": ["htop"]}})
    assert files["user-data"].startswith(b"#cloud-config\n{") and "network-config" not in files
    assert seed_hash(files) == seed_hash(dict(files))
    assert seed_hash(files) != seed_hash(seed_files("g", {"user_data": {"packages": ["vim"]}}))
    assert seed_hash(files) != seed_hash(seed_files("h", {"user_data": {"packages": ["htop"]}}))  # instance-id


def test_domain_xml_cdrom_and_hash():
    root = build_domain_xml("g", spec(user_data="#cloud-config\n"), uuid=UUID)
    cdroms = [d for d in root.iter("disk") if d.get("device") == "cdrom"]
    assert len(cdroms) == 1 and cdroms[0].find("readonly") is not None
    src = cdroms[0].find("source")
    assert (src.get("pool"), src.get("volume")) == ("images", "g-cidata.iso")
    assert cdroms[0].find("target").get("dev") == "hda" and cdroms[0].find("driver").get("type") == "raw"
    digest, pool, volume = seed_of(root)
    assert digest.startswith("sha256:") and (pool, volume) == ("images", "g-cidata.iso")
    same = build_domain_xml("g", spec(user_data="#cloud-config\n"), uuid=UUID)
    assert not compare(same, root).changed
    other = build_domain_xml("g", spec(user_data="#cloud-config\nx: 1\n"), uuid=UUID)
    assert compare(other, root).differences == ["/domain/metadata/managed/@cloud-init"]
    q35 = dict(spec(pool="seeds", volume="s.iso"), machine="q35")
    cd = [d for d in build_domain_xml("g", q35, uuid=UUID).iter("disk") if d.get("device") == "cdrom"][0]
    assert cd.find("target").get("bus") == "sata" and cd.find("source").get("pool") == "seeds"


@pytest.mark.parametrize(
    "s,needle",
    [
        ({"memory": 32, "cloud_init": {}}, "spec.cloud_init.pool is required"),
        (spec(volume="a/b"), "must be a volume name"),
        (spec(user_data=5), "must be text or a dictionary"),
        (spec(colour="x"), "unsupported keys"),
    ],
)
def test_bad_cloud_init(s, needle):
    with pytest.raises(ValidationError) as exc:
        build_domain_xml("g", s)
    assert needle in exc.value.msg
