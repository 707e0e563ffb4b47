# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage volume manager: read -> desired -> apply (unless check mode) -> diff (in diff mode).

A volume is created empty, as a copy-on-write overlay of a backing volume, as a clone of another
volume, or with the content of an image: a file on the host, or an image fetched from an http(s) URL into
the host's image cache and checked against its checksum (images.py), converted to the volume's format
when it is in another one. Growing ``capacity`` resizes it; shrinking is
refused unless ``allow_shrink``. Names that could leave the pool are refused, and before a volume
is resized, wiped or deleted its path is checked to lie inside its pool's directory.
It never calls exit_json/fail_json.
"""

from __future__ import annotations

import os

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import libvirt
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import (
    DependencyError,
    ValidationError,
    VirtError,
    libvirt_errors,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.images import (
    DEFAULT_CACHE_DIR,
    DEFAULT_TIMEOUT,
    ImageCache,
    convert_image,
    fetch_image,
    file_format,
    is_url,
    parse_checksum,
    plan_fetch,
    redact_url,
    validate_url,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.base import Manager
from ansible_collections.lockstep.virt.plugins.module_utils._virt.managers.pool import pool_target, pool_type
from ansible_collections.lockstep.virt.plugins.module_utils._virt.objects import POOL, VOLUME, lookup, read_xml, select
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.pool import DIRECTORY_TARGET_TYPES
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.volume import (
    VOLUME_FORMATS,
    build_volume_xml,
    validate_volume_name,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.units import human_size, parse_size
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, to_bytes, to_text

VOLUME_ARGUMENT_SPEC = {
    "pool": {"type": "str", "required": True},
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "capacity": {"type": "raw"},
    "allocation": {"type": "raw"},
    "format": {"type": "str", "choices": VOLUME_FORMATS},
    "backing_volume": {"type": "str"},
    "clone_from": {"type": "str"},
    "import_from": {"type": "str"},
    "checksum": {"type": "str"},
    "timeout": {"type": "int", "default": DEFAULT_TIMEOUT},
    "validate_certs": {"type": "bool", "default": True},
    "cache_dir": {"type": "path", "default": DEFAULT_CACHE_DIR},
    "wipe": {"type": "bool", "default": False},
    "allow_shrink": {"type": "bool", "default": False},
}
VOLUME_MUTUALLY_EXCLUSIVE = [("backing_volume", "clone_from", "import_from")]

SECTOR = 512
MAX_CHAIN = 32


# --------------------------------------------------------------------------- reading
def _size(el):
    if el is None or not (el.text or "").strip().isdigit():
        return None
    return to_bytes(el.text.strip(), el.get("unit") or "bytes")


def _first(root, *path):
    el = root
    for tag in path:
        found = elements(el, tag)
        if not found:
            return None
        el = found[0]
    return el


def volume_facts(vol, pool_name=None):
    """{name, pool, path, key, type, format, capacity, allocation, backing} of a volume."""
    root = read_xml(vol, VOLUME)
    if pool_name is None:
        with libvirt_errors("cannot read volume {}".format(vol.name())):
            pool_name = vol.storagePoolLookupByVolume().name()
    fmt = _first(root, "target", "format")
    backing = None
    store = _first(root, "backingStore")
    if store is not None and _first(store, "path") is not None:
        bfmt = _first(store, "format")
        backing = {
            "path": (_first(store, "path").text or "").strip(),
            "format": bfmt.get("type") if bfmt is not None else None,
        }
    path = _first(root, "target", "path")
    return {
        "name": vol.name(),
        "pool": pool_name,
        "path": (path.text or "").strip() if path is not None else None,
        "key": (_first(root, "key").text or "").strip() if _first(root, "key") is not None else None,
        "type": root.get("type"),
        "format": fmt.get("type") if fmt is not None else None,
        "capacity": _size(_first(root, "capacity")),
        "allocation": _size(_first(root, "allocation")),
        "backing": backing,
    }


def backing_chain(conn, facts):
    """The chain of backing files under a volume: [{path, format, volume, pool}], nearest first."""
    chain = []
    seen = set()
    current = facts.get("backing")
    while current and current.get("path") and len(chain) < MAX_CHAIN and current["path"] not in seen:
        seen.add(current["path"])
        entry = dict(current, volume=None, pool=None)
        chain.append(entry)
        try:
            vol = conn.virt.storageVolLookupByPath(current["path"])
        except libvirt.libvirtError:
            break
        nested = volume_facts(vol)
        entry.update(volume=nested["name"], pool=nested["pool"])
        current = nested.get("backing")
    return chain


def list_volumes(conn, pool_name=None, name=None):
    if name is not None:
        validate_volume_name(name)
    out = []
    pools = select(conn, POOL, pool_name)
    if pool_name is not None and not pools:
        raise VirtError("storage pool {} does not exist on {}".format(pool_name, conn.hostname))
    for pool in pools:
        if not pool.isActive():
            continue
        for vol in select(pool, VOLUME, name, "cannot list the volumes of {}".format(pool.name())):
            facts = volume_facts(vol, pool.name())
            facts["backing_chain"] = backing_chain(conn, facts)
            out.append(facts)
    return out


# --------------------------------------------------------------------------- manager
def _describe(facts, state):
    if facts is None:
        return "state: absent\n"
    lines = [
        "state: {}".format(state),
        "pool: {}".format(facts.get("pool")),
        "name: {}".format(facts.get("name")),
        "format: {}".format(facts.get("format")),
        "capacity: {} ({})".format(facts.get("capacity"), human_size(facts.get("capacity"))),
    ]
    if facts.get("backing"):
        lines.append("backing: {} ({})".format(facts["backing"]["path"], facts["backing"].get("format")))
    return "\n".join(lines) + "\n"


def _describe_image(image):
    if not image:
        return ""
    cached = {True: "yes", False: "no", None: "unknown until the checksum file is read"}[image["cached"]]
    return "image: {} ({}; cached: {})\n".format(image["url"], image["checksum"], cached)


def _same_capacity(actual, desired):
    """libvirt rounds qcow2 sizes up to whole sectors."""
    return actual == desired or (desired < actual < desired + SECTOR and actual % SECTOR == 0)


class VolumeManager(Manager):
    """Bring one storage volume to the state described by the module parameters."""

    KIND = VOLUME

    def __init__(self, conn, params, check_mode=False, diff_mode=False, host=None, brief=False):
        super().__init__(conn, params, check_mode, diff_mode, host=host, brief=brief)
        self.label = "volume {}/{}".format(params["pool"], self.name)
        self.upload_from = None  # the file an import uploads into the new volume
        self.converted = None  # a temporary copy of a fetched image in the volume's format, removed after

    def with_result(self, err):
        err = super().with_result(err)
        if self.result.get("image"):
            err.result["image"] = self.result["image"]  # what was fetched, also when the import failed after
        return err

    # ------------------------------------------------------------------ validation
    def _validate(self):
        p = self.params
        validate_volume_name(self.name)
        sources = [k for k in ("backing_volume", "clone_from", "import_from") if p.get(k)]
        if len(sources) > 1:
            raise ValidationError("{} are mutually exclusive".format(" and ".join(sources)))
        self.capacity = parse_size(p["capacity"], "capacity") if p.get("capacity") is not None else None
        self.allocation = parse_size(p["allocation"], "allocation") if p.get("allocation") is not None else None
        if self.capacity == 0 and p["state"] == "present":
            raise ValidationError("capacity must be larger than 0")
        if p.get("backing_volume") and p.get("format") == "raw":
            raise ValidationError("a volume with a backing volume (an overlay) must be qcow2, not raw")
        self._validate_import(p.get("import_from"))

    def _validate_import(self, source):
        """``import_from``: an absolute path on the host, or an http(s) URL with a checksum."""
        p = self.params
        self.url = self.checksum = self.import_path = None
        if source and is_url(source):
            validate_url(source)
            if not p.get("checksum"):
                raise ValidationError(
                    "import_from: {} is a URL and no checksum is given; an image that cannot be verified is not "
                    "imported (checksum: sha256:<hex>, sha512:<hex>, or sha256:<URL of a checksum file>)".format(
                        redact_url(source)
                    )
                )
            self.checksum = parse_checksum(p["checksum"])
            if p["timeout"] <= 0:
                raise ValidationError("timeout must be a number of seconds larger than 0")
            ImageCache(p["cache_dir"])
            self.url = source
            return
        if source and "://" in source:
            raise ValidationError(
                "import_from: only http:// and https:// URLs can be fetched, not {}".format(redact_url(source))
            )
        if p.get("checksum"):
            raise ValidationError("checksum goes with an http:// or https:// URL in import_from")
        if not source:
            return
        self.import_path = os.path.expanduser(os.path.expandvars(source))
        if not os.path.isabs(self.import_path):
            raise ValidationError("import_from must be an absolute path or a URL, got {!r}".format(source))

    def _pool(self):
        reason = self.host.failure(POOL, self.params["pool"])
        if reason:
            raise DependencyError(
                "{} was skipped: storage pool {} failed ({})".format(self.label, self.params["pool"], reason)
            )
        pool = self.host.lookup(POOL, self.params["pool"])
        if pool is None:
            raise VirtError("storage pool {} does not exist on {}".format(self.params["pool"], self.conn.hostname))
        if not pool.isActive():
            raise VirtError(
                "storage pool {} is not active; start it first (lockstep.virt.pool state=active)".format(
                    self.params["pool"]
                )
            )
        return pool

    def _source_volume(self, ref, what):
        """A volume named in the same pool, or the volume at an absolute path libvirt knows."""
        if ref.startswith("/"):
            try:
                return self.conn.virt.storageVolLookupByPath(ref)
            except libvirt.libvirtError:
                raise ValidationError("{}: no storage volume known to libvirt at {}".format(what, ref)) from None
        validate_volume_name(ref, what)
        vol = self.host.volume(self.params["pool"], ref)
        if vol is None:
            raise ValidationError("{}: volume {} does not exist in pool {}".format(what, ref, self.params["pool"]))
        return vol

    def _confine(self, facts):
        """Refuse to touch a volume whose path is not inside its pool's directory."""
        root = read_xml(self.pool, POOL, inactive=False)
        target = pool_target(root)
        if pool_type(root) not in DIRECTORY_TARGET_TYPES or not target or not facts.get("path"):
            return
        resolve = os.path.realpath if self.conn.local else os.path.normpath
        base = resolve(target)
        path = resolve(facts["path"])
        if os.path.dirname(path) != base:
            raise ValidationError(
                "volume {} resolves to {}, outside the directory {} of pool {}; it is left alone".format(
                    self.name, path, base, self.params["pool"]
                )
            )

    # ------------------------------------------------------------------ run
    def _run(self):
        self.pool = self._pool()
        vol = self.host.volume(self.params["pool"], self.name)
        self.existed = vol is not None
        before = volume_facts(vol, self.params["pool"]) if vol is not None else None
        if self.params["state"] == "absent":
            after = self._absent(vol, before)
        elif vol is None:
            after = self._create()
        else:
            after = self._update(vol, before)
        if not self.brief:
            self.result["volume"] = after
        if self.diff_mode:
            self.result["diff"] = self._diff(
                _describe(before, "present"),
                _describe(after, "present") + _describe_image(self.result.get("image")),
                "absent" if after is None else "desired",
            )
        return self.result

    def _absent(self, vol, facts):
        if vol is None:
            return None
        self._confine(facts)
        if self.params["wipe"]:
            self._act("wipe")
            if not self.check_mode:
                with libvirt_errors("cannot wipe volume {}".format(self.name)):
                    vol.wipe(0)
        self._act("delete")
        if not self.check_mode:
            with libvirt_errors("cannot delete volume {}".format(self.name)):
                vol.delete(0)
            self.host.drop(VOLUME, self.name, self.params["pool"])
        return None

    def _check_capacity(self, current, desired):
        """'grow', 'shrink' or None; shrinking without allow_shrink is refused."""
        if desired is None or _same_capacity(current, desired):
            return None
        if desired > current:
            return "grow"
        if not self.params["allow_shrink"]:
            raise ValidationError(
                "shrinking volume {} from {} to {} is refused (data past the new end would be lost); "
                "set allow_shrink: true to do it".format(self.name, human_size(current), human_size(desired))
            )
        return "shrink"

    def _resize(self, vol, how, desired):
        self._act("resize" if how == "grow" else "shrink")
        if self.check_mode:
            return
        flags = libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK if how == "shrink" else 0
        with libvirt_errors("cannot resize volume {}".format(self.name)):
            vol.resize(desired, flags)

    def _update(self, vol, facts):
        p = self.params
        if p.get("format") and facts["format"] and p["format"] != facts["format"]:
            raise ValidationError(
                "volume {} is {}; its format cannot change to {} (remove it first)".format(
                    self.name, facts["format"], p["format"]
                )
            )
        if p.get("backing_volume"):
            want = volume_facts(self._source_volume(p["backing_volume"], "backing_volume"))["path"]
            have = (facts.get("backing") or {}).get("path")
            if want != have:
                raise ValidationError(
                    "volume {} has backing file {}, not {}; it cannot change (remove the volume first)".format(
                        self.name, have or "(none)", want
                    )
                )
        how = self._check_capacity(facts["capacity"], self.capacity)
        if how:
            self._confine(facts)
            self._resize(vol, how, self.capacity)
            if self.check_mode:
                return dict(facts, capacity=self.capacity)
            return volume_facts(vol, p["pool"])
        return facts

    def _create(self):
        try:
            return self._create_volume()
        finally:
            if self.converted:
                os.unlink(self.converted)
                self.converted = None

    def _create_volume(self):
        p = self.params
        fmt = p.get("format")
        capacity = self.capacity
        backing = None
        source = None
        how = None
        if p.get("backing_volume"):
            base = volume_facts(self._source_volume(p["backing_volume"], "backing_volume"))
            backing = (base["path"], base["format"])
            fmt = fmt or "qcow2"
            capacity = capacity or base["capacity"]
            if capacity < base["capacity"]:
                raise ValidationError(
                    "capacity {} is smaller than the backing volume ({})".format(
                        human_size(capacity), human_size(base["capacity"])
                    )
                )
            self._act("create_overlay")
        elif p.get("clone_from"):
            source = self._source_volume(p["clone_from"], "clone_from")
            src = volume_facts(source)
            fmt = fmt or src["format"]
            how = self._check_capacity(src["capacity"], capacity)
            capacity = src["capacity"]
            self._act("clone")
        elif p.get("import_from"):
            if not self.conn.local:
                raise ValidationError("import_from needs a local connection: the image is read on the hypervisor")
            if self.url:
                found, virtual = self._fetch(fmt)
            else:
                found, virtual = self._image_format(self.import_path, self.import_path)
                if fmt and fmt != found:
                    raise ValidationError("import_from: {} is a {} image, not {}".format(self.import_path, found, fmt))
                self.upload_from = self.import_path
            fmt = fmt or found
            if virtual is not None:
                how = self._check_capacity(virtual, capacity)
                capacity = virtual
            self._act("import")
        else:
            if capacity is None:
                raise ValidationError("capacity is required to create volume {}".format(self.name))
            self._act("create")
        predicted = {
            "name": self.name,
            "pool": p["pool"],
            "path": None,
            "key": None,
            "type": "file",
            "format": fmt,
            "capacity": capacity,
            "allocation": self.allocation,
            "backing": {"path": backing[0], "format": backing[1]} if backing else None,
        }
        if how:
            self._act("resize" if how == "grow" else "shrink")
            predicted["capacity"] = self.capacity
        if self.check_mode:
            self.host.planned(VOLUME, self.name, p["pool"])
            return predicted
        return self._make(source, capacity, fmt, backing, how)

    def _make(self, source, capacity, fmt, backing, how):
        """Create the volume (and fill it, and resize it); its facts."""
        p = self.params
        if self.upload_from:
            xml = build_volume_xml(self.name, os.path.getsize(self.upload_from), 0, "raw")
        else:
            xml = build_volume_xml(self.name, capacity, self.allocation, fmt, backing)
        with libvirt_errors("cannot create volume {}".format(self.name)):
            if source is not None:
                vol = self.pool.createXMLFrom(to_text(xml), source, 0)
            else:
                vol = self.pool.createXML(to_text(xml), 0)
        try:
            if self.upload_from:
                vol = self._upload(vol, self.upload_from)
            if how:
                with libvirt_errors("cannot resize volume {}".format(self.name)):
                    vol.resize(self.capacity, libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK if how == "shrink" else 0)
        except VirtError as err:
            try:
                vol.delete(0)
                err.msg += " (the new volume was removed again)"
                err.args = (err.msg,)
                self.result["actions"], self.result["changed"] = [], False
            except libvirt.libvirtError:  # pragma: no cover - best effort
                pass
            raise
        self.host.put(VOLUME, self.name, vol, p["pool"])
        return volume_facts(vol, p["pool"])

    def _image_format(self, path, what):
        """(format, virtual size) of image file ``path``; an overlay with a backing file is refused."""
        if not os.path.isfile(path):
            raise ValidationError("import_from: {} is not a regular file on {}".format(what, self.conn.hostname))
        found, virtual, has_backing = file_format(path)
        if has_backing:
            raise ValidationError(
                "import_from: {} is a qcow2 overlay that refers to a backing file; import a standalone "
                "image (qemu-img convert) or use backing_volume".format(what)
            )
        return found, virtual

    def _fetch(self, fmt):
        """The image of the import_from URL, from the cache or downloaded (in check mode only looked up),
        converted to ``fmt`` when it is in another format: (its format, virtual size), None where not known."""
        p = self.params
        if self.check_mode:
            image = plan_fetch(self.url, self.checksum, p["cache_dir"])
        else:
            image = fetch_image(self.url, self.checksum, p["cache_dir"], p["timeout"], p["validate_certs"])
        self.result["image"] = image
        if not image["cached"]:
            self._act("fetch")
        if not image["cached"] and self.check_mode:
            return None, None  # its format and size are known once it is fetched
        found, virtual = self._image_format(image["path"], "the image fetched from " + image["url"])
        image["format"] = found
        if fmt and fmt != found:
            self._act("convert")
            if not self.check_mode:
                self.converted = convert_image(image["path"], found, fmt)
        self.upload_from = self.converted or image["path"]
        return found, virtual

    def _upload(self, vol, path):
        size = os.path.getsize(path)
        stream = self.conn.virt.newStream(0)
        try:
            with libvirt_errors("cannot import {} into volume {}".format(path, self.name)):
                vol.upload(stream, 0, size, 0)
                with open(path, "rb") as fh:
                    stream.sendAll(lambda _st, nbytes, f: f.read(nbytes), fh)
                stream.finish()
        except (VirtError, OSError) as exc:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            if isinstance(exc, OSError):
                raise VirtError("cannot read {}: {}".format(path, exc.strerror)) from None
            raise
        # libvirt probes the format of what it now holds
        with libvirt_errors("cannot refresh storage pool {}".format(self.params["pool"])):
            self.pool.refresh(0)
            return lookup(self.pool, VOLUME, self.name)
