# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cloud-init NoCloud seeds: the files of ``spec.cloud_init``, the ISO 9660 image holding them (volume
label ``cidata``), and the volume in the guest's pool it is uploaded to.

The image is built with xorriso (``xorriso -as mkisofs``) on the host the module runs on - the hypervisor.
xorriso is GNU's maintained ISO 9660 / Rock Ridge / Joliet writer and is packaged by every distribution
the collection supports (Debian and Ubuntu, the Red Hat family), so the ``hypervisor`` role installs it
from the distribution like libvirt itself; a Python library such as pycdlib would have to come from PyPI
on Red Hat hosts, beside the distribution's python3-libvirt. The image is uploaded through libvirt's
storage API (a volume upload stream), so it lands in any pool type, also over a remote URI.

Which content a guest's seed has is recorded as a SHA-256 in the collection's managed mark of the
guest's definition (``<lsv:managed cloud-init="sha256:..." cloud-init-volume="pool/volume"/>``): the seed
is rebuilt only when it differs, and removed with the guest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError, libvirt_errors
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managed import managed_tag, metadata_element
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import POOL, VOLUME, lookup, lookup_volume

CLOUD_INIT_OPTIONS = {
    "user_data": {"type": "raw"},
    "meta_data": {"type": "raw"},
    "network_config": {"type": "raw"},
    "pool": {"type": "str"},
    "volume": {"type": "str"},
}
HASH_ATTR = "cloud-init"
VOLUME_ATTR = "cloud-init-volume"
VOLUME_LABEL = "cidata"
_CHUNK = 256 * 1024


def _yaml(value, header=None):
    """A dict or list as YAML text (JSON is YAML; no PyYAML needed on the host); text as it is."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        text = json.dumps(value, indent=2, sort_keys=True) + "\n"
        return (header + "\n" + text) if header else text
    return str(value)


def seed_files(name, ci):
    """{file name: bytes} of the seed of guest ``name`` (``ci``: the normalized spec.cloud_init)."""
    meta = ci.get("meta_data")
    if meta is None:
        meta = {"instance-id": name, "local-hostname": name}
    files = {
        "meta-data": _yaml(meta),
        "user-data": _yaml(ci.get("user_data"), "#cloud-config") or "#cloud-config\n{}\n",
    }
    if ci.get("network_config") is not None:
        files["network-config"] = _yaml(ci["network_config"])
    return dict((k, v.encode("utf-8")) for k, v in files.items())


def seed_hash(files):
    digest = hashlib.sha256()
    for key in sorted(files):
        digest.update(key.encode() + b"\0" + hashlib.sha256(files[key]).digest())
    return "sha256:" + digest.hexdigest()


def mark_seed(root, digest, pool, volume):
    """Record the seed's hash and volume in the managed mark of domain XML ``root``."""
    mark = metadata_element(root).find(managed_tag())
    mark.set(HASH_ATTR, digest)
    mark.set(VOLUME_ATTR, "{}/{}".format(pool, volume))


def seed_of(root):
    """(hash, pool, volume) recorded in domain XML ``root``, or (None, None, None)."""
    md = metadata_element(root, create=False) if root is not None else None
    mark = md.find(managed_tag()) if md is not None else None
    if mark is None or not mark.get(VOLUME_ATTR):
        return None, None, None
    pool, _slash, volume = mark.get(VOLUME_ATTR).partition("/")
    return mark.get(HASH_ATTR), pool, volume


def build_iso(files, xorriso="xorriso"):
    """The ISO 9660 image (bytes, volume label cidata, Rock Ridge and Joliet names) holding ``files``."""
    exe = shutil.which(xorriso)
    if exe is None:
        raise VirtError(
            "spec.cloud_init needs xorriso on the hypervisor to build the seed image (the lockstep.virt.hypervisor "
            "role installs it; or install the xorriso package)"
        )
    with tempfile.TemporaryDirectory(prefix="lsv-cidata-") as tmp:
        src = os.path.join(tmp, "files")
        os.mkdir(src)
        for key, data in files.items():
            with open(os.path.join(src, key), "wb") as fh:
                fh.write(data)
        out = os.path.join(tmp, "seed.iso")
        argv = [exe, "-as", "mkisofs", "-quiet", "-output", out, "-volid", VOLUME_LABEL, "-joliet", "-rock", src]
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise VirtError("xorriso could not build the seed image: {}".format((res.stderr or res.stdout).strip()))
        with open(out, "rb") as fh:
            return fh.read()


def upload_volume(conn, pool_name, volume, data):
    """Create (or replace) raw volume ``volume`` in ``pool_name`` holding ``data``."""
    pool = lookup(conn, POOL, pool_name)
    if pool is None:
        raise VirtError("storage pool {} for the cloud-init seed does not exist on {}".format(pool_name, conn.hostname))
    old = lookup(pool, VOLUME, volume)
    with libvirt_errors("cannot write the cloud-init seed {}/{}".format(pool_name, volume)):
        if old is not None:
            old.delete(0)
        xml = (
            "<volume><name>{}</name><capacity unit='bytes'>{}</capacity>"
            "<target><format type='raw'/></target></volume>".format(volume, len(data))
        )
        vol = pool.createXML(xml, 0)
        stream = conn.virt.newStream(0)
        vol.upload(stream, 0, len(data), 0)
        for start in range(0, len(data), _CHUNK):
            stream.send(data[start : start + _CHUNK])
        stream.finish()
        return vol.path()


def delete_volume(conn, pool_name, volume):
    """Delete the seed volume; False when it (or its pool) is already gone."""
    vol = lookup_volume(conn, pool_name, volume)
    if vol is None:
        return False
    with libvirt_errors("cannot delete the cloud-init seed {}/{}".format(pool_name, volume)):
        vol.delete(0)
    return True


def ensure_seed(manager, existing, desired):
    """Build and upload the seed of ``desired`` (domain XML) when its content or volume differs from what
    ``existing`` records or the volume is missing; records the action on ``manager`` (a DomainManager)."""
    want, pool, volume = seed_of(desired)
    if want is None or not (getattr(manager, "_spec", None) or {}).get("cloud_init"):
        return
    have, old_pool, old_volume = seed_of(existing)
    present = manager.host.volume(pool, volume) is not None
    if present and have == want and (old_pool, old_volume) == (pool, volume):
        return
    manager._act("build_seed")
    if manager.check_mode:
        return
    files = seed_files(manager.name, manager._spec["cloud_init"])
    path = upload_volume(manager.conn, pool, volume, build_iso(files))
    manager.result["cloud_init_seed"] = {"pool": pool, "volume": volume, "path": path, "hash": want}
    if old_volume and (old_pool, old_volume) != (pool, volume):
        delete_volume(manager.conn, old_pool, old_volume)


def remove_seed(manager, existing):
    """Delete the seed recorded in ``existing`` (the guest is being removed)."""
    _hash, pool, volume = seed_of(existing)
    if not volume or manager.host.volume(pool, volume) is None:
        return
    manager._act("remove_seed")
    if not manager.check_mode:
        delete_volume(manager.conn, pool, volume)
        manager.recorder.record("storage_removed", resources=["{}/{}".format(pool, volume)], detail="cloud-init seed")


__all__ = [
    "CLOUD_INIT_OPTIONS",
    "build_iso",
    "ensure_seed",
    "mark_seed",
    "remove_seed",
    "seed_files",
    "seed_hash",
    "seed_of",
]
