# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image files a volume is imported from: their format, and images fetched over HTTP(S) into a cache on
the host the module runs on (the hypervisor), checked against the checksum the user gave.

The cache is a directory (``0700``) holding one file per image, named by its checksum
(``sha256-<hex>``). An image is downloaded to ``<algo>-<hex>.part`` with its hash computed while it is
written, checked, and only then renamed to its cache name: a partial or wrong download never becomes a
cache entry (it is removed) nor a volume. A cache entry whose content still has its checksum is used
without any request. Downloads into one cache directory take turns (a lock on the directory), so two
runs never write the same partial file.

The checksum is ``sha256:<hex>`` or ``sha512:<hex>``, or ``<algo>:<URL of a checksum file>`` as
ansible.builtin.get_url reads it: the file's line naming the image's file name (``<hex>  <name>``,
``<hex> *<name>``, or the BSD form ``SHA256 (<name>) = <hex>``), or the file's only word.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections import namedtuple
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit, urlunsplit

from ansible.module_utils.urls import ConnectionError as UrlConnectionError
from ansible.module_utils.urls import open_url

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError, VirtError

QCOW2_MAGIC = b"QFI\xfb"
URL_SCHEMES = ("http", "https")
ALGORITHMS = {"sha256": 64, "sha512": 128}  # algorithm: length of its hex digest
DEFAULT_CACHE_DIR = "/var/cache/lockstep-virt/images"
DEFAULT_TIMEOUT = 60
CHUNK = 1024 * 1024
CHECKSUM_FILE_LIMIT = 4 * 1024 * 1024  # a checksum file larger than this is not one
MASK = "********"
USER_AGENT = "lockstep.virt"

_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
_BSD_LINE_RE = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*=\s*([0-9a-fA-F]+)\s*$")

# algo: sha256 or sha512; hex: the digest (None until a checksum file is read); url: the checksum file's URL
Checksum = namedtuple("Checksum", "algo hex url")


def file_format(path):
    """(format, virtual size, has a backing file) of an image file: qcow2 from its header, raw otherwise."""
    with open(path, "rb") as fh:
        head = fh.read(32)
    if head[:4] == QCOW2_MAGIC and len(head) >= 32:
        backing_offset = struct.unpack(">Q", head[8:16])[0]
        return "qcow2", struct.unpack(">Q", head[24:32])[0], backing_offset != 0
    return "raw", os.path.getsize(path), False


# --------------------------------------------------------------------------- URLs and checksums
def is_url(text):
    """Whether ``text`` is an http:// or https:// URL."""
    return isinstance(text, str) and urlsplit(text.strip()).scheme.lower() in URL_SCHEMES and "://" in text


def redact_url(url):
    """``url`` with the password of its ``user:password@`` part masked (for results and messages)."""
    if not isinstance(url, str) or "@" not in url:
        return url
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc="{}:{}@{}".format(user, MASK, hostport)))


def url_filename(url):
    """The file name the URL's path ends in (unquoted)."""
    return unquote(os.path.basename(urlsplit(url).path))


def validate_url(url, what="import_from"):
    parts = urlsplit(url)
    try:
        host = parts.hostname
    except ValueError:
        host = None
    if parts.scheme.lower() not in URL_SCHEMES or not host:
        raise ValidationError("{}: {} is not an http:// or https:// URL with a host".format(what, redact_url(url)))
    if not url_filename(url):
        raise ValidationError("{}: {} does not name a file".format(what, redact_url(url)))


def parse_checksum(text):
    """A :class:`Checksum` from ``sha256:<hex>``, ``sha512:<hex>`` or ``<algo>:<URL of a checksum file>``."""
    if not isinstance(text, str) or ":" not in text:
        raise ValidationError(
            "checksum must be <algorithm>:<hex digest> or <algorithm>:<URL of a checksum file> "
            "(algorithm sha256 or sha512), got {!r}".format(redact_url(text))
        )
    algo, value = text.strip().split(":", 1)
    algo = algo.strip().lower()
    value = value.strip()
    if algo not in ALGORITHMS:
        raise ValidationError(
            "checksum: the algorithm must be one of {}, got {!r}".format(", ".join(sorted(ALGORITHMS)), algo)
        )
    if is_url(value):
        validate_url(value, "checksum")
        return Checksum(algo, None, value)
    return Checksum(algo, _hex(algo, value, "checksum"), None)


def _hex(algo, value, where):
    if len(value) != ALGORITHMS[algo] or not _HEX_RE.match(value):
        raise ValidationError(
            "{}: a {} digest is {} hexadecimal digits, got {!r}".format(where, algo, ALGORITHMS[algo], value[:200])
        )
    return value.lower()


def checksum_label(checksum):
    """``algo:hex``, or ``algo:<checksum file URL>`` (masked) while the file is not read."""
    return "{}:{}".format(checksum.algo, checksum.hex or redact_url(checksum.url))


def checksum_from_file(text, algo, filename, source="the checksum file"):
    """The ``algo`` digest ``text`` (a checksum file) gives for ``filename``, as ansible.builtin.get_url
    reads one: the line naming it, or the file's only word."""
    words = text.split()
    if len(words) == 1:
        return _hex(algo, words[0], source)
    for line in text.splitlines():
        bsd = _BSD_LINE_RE.match(line)
        if bsd:
            name_algo, name, digest = bsd.groups()
            if name_algo.lower().replace("-", "") != algo:
                continue
        else:
            parts = line.strip().split(None, 1)
            if len(parts) != 2:
                continue
            digest, name = parts
            name = name.strip()
            if name.startswith("*"):  # binary mode marker of sha256sum
                name = name[1:]
            if len(digest) != ALGORITHMS[algo]:
                continue  # a line of another algorithm
        if os.path.basename(name.strip()) == filename:
            return _hex(algo, digest, source)
    raise VirtError("{} has no {} checksum for {}".format(source, algo, filename))


# --------------------------------------------------------------------------- HTTP
def _open(url, timeout, validate_certs, opener):
    try:
        return opener(
            url, timeout=timeout, validate_certs=validate_certs, http_agent=USER_AGENT, follow_redirects="safe"
        )
    except (OSError, http.client.HTTPException, UrlConnectionError, ValueError) as exc:
        raise VirtError("cannot fetch {}: {}".format(redact_url(url), _reason(exc))) from None


def _reason(exc):
    code = getattr(exc, "code", None)
    reason = getattr(exc, "reason", None)
    if code is not None:
        return "HTTP {} {}".format(code, reason or "").strip()
    return str(reason or exc or type(exc).__name__)


def read_checksum_file(checksum, filename, timeout=DEFAULT_TIMEOUT, validate_certs=True, opener=open_url):
    """``checksum`` with its digest read from its checksum file (one request); as it is when it has one."""
    if checksum.hex:
        return checksum
    source = "checksum file {}".format(redact_url(checksum.url))
    resp = _open(checksum.url, timeout, validate_certs, opener)
    try:
        data = resp.read(CHECKSUM_FILE_LIMIT + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise VirtError("cannot read {}: {}".format(source, _reason(exc))) from None
    finally:
        resp.close()
    if len(data) > CHECKSUM_FILE_LIMIT:
        raise VirtError("{} is larger than {} bytes: not a checksum file".format(source, CHECKSUM_FILE_LIMIT))
    return checksum._replace(hex=checksum_from_file(data.decode("utf-8", "replace"), checksum.algo, filename, source))


# --------------------------------------------------------------------------- the cache
def file_digest(path, algo):
    digest = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ImageCache:
    """The cache directory: one file per image, named ``<algo>-<hex>`` after its checksum."""

    def __init__(self, directory):
        if not os.path.isabs(directory or ""):
            raise ValidationError("cache_dir must be an absolute path, got {!r}".format(directory))
        self.directory = directory

    def path(self, checksum):
        return os.path.join(self.directory, "{}-{}".format(checksum.algo, checksum.hex))

    def partial(self, checksum):
        return self.path(checksum) + ".part"

    def lookup(self, checksum, remove_bad=False):
        """The cached file of ``checksum`` when its content has that checksum; None otherwise (a cached
        file that lost it is removed with ``remove_bad``)."""
        path = self.path(checksum)
        if not os.path.isfile(path):
            return None
        try:
            if file_digest(path, checksum.algo) == checksum.hex:
                return path
        except OSError as exc:
            raise VirtError("cannot read the cached image {}: {}".format(path, exc.strerror)) from None
        if remove_bad:
            os.unlink(path)
        return None

    def ensure(self):
        """Create the directory (0700) when it does not exist."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise VirtError("cannot create the image cache {}: {}".format(self.directory, exc.strerror)) from None
        if not os.path.isdir(self.directory):
            raise VirtError("the image cache {} is not a directory".format(self.directory))

    @contextmanager
    def locked(self):
        """Hold the directory's lock: one download into it at a time."""
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def download(self, url, checksum, timeout, validate_certs, opener=open_url):
        """Fetch ``url`` into the cache entry of ``checksum``: written to the partial file, hashed while
        written, renamed once complete and correct. Returns the bytes downloaded. Whatever fails removes the
        partial file."""
        part, final = self.partial(checksum), self.path(checksum)
        shown = redact_url(url)
        digest = hashlib.new(checksum.algo)
        written = 0
        try:
            resp = _open(url, timeout, validate_certs, opener)
            try:
                length = resp.headers.get("Content-Length") if not resp.headers.get("Content-Encoding") else None
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    for chunk in iter(lambda: resp.read(CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            except (OSError, http.client.HTTPException) as exc:
                raise VirtError("cannot fetch {}: {}".format(shown, _reason(exc))) from None
            finally:
                resp.close()
            if length is not None and str(length).isdigit() and int(length) != written:
                raise VirtError(
                    "the download of {} ended after {} of {} bytes; nothing was imported".format(shown, written, length)
                )
            got = "{}:{}".format(checksum.algo, digest.hexdigest())
            if got != checksum_label(checksum):
                raise VirtError(
                    "the image fetched from {} does not have the checksum given: expected {}, got {}; "
                    "it was removed and nothing was imported".format(shown, checksum_label(checksum), got)
                )
            os.rename(part, final)
        except BaseException:
            try:
                os.unlink(part)
            except OSError:
                pass
            raise
        return written


def fetch_image(url, checksum, cache_dir, timeout=DEFAULT_TIMEOUT, validate_certs=True, opener=open_url):
    """The image at ``url`` with ``checksum`` (a :class:`Checksum`), in the cache: taken from it when it is
    there (no request), downloaded otherwise. Returns its facts: url (masked), checksum, path, cached,
    downloaded (bytes)."""
    cache = ImageCache(cache_dir)
    checksum = read_checksum_file(checksum, url_filename(url), timeout, validate_certs, opener)
    cache.ensure()
    with cache.locked():
        path = cache.lookup(checksum, remove_bad=True)
        downloaded = 0
        if path is None:
            downloaded = cache.download(url, checksum, timeout, validate_certs, opener)
            path = cache.path(checksum)
    return image_facts(url, checksum, path, cached=downloaded == 0, downloaded=downloaded)


def plan_fetch(url, checksum, cache_dir):
    """What :func:`fetch_image` would do, with no request and nothing written (check mode): its facts, with
    ``cached`` None when the checksum is still in a checksum file."""
    cache = ImageCache(cache_dir)
    if checksum.hex is None:
        return image_facts(url, checksum, None, cached=None, downloaded=0)
    path = cache.lookup(checksum)
    return image_facts(url, checksum, path or cache.path(checksum), cached=path is not None, downloaded=0)


def image_facts(url, checksum, path, cached, downloaded):
    return {
        "url": redact_url(url),
        "checksum": checksum_label(checksum),
        "path": path,
        "cached": cached,
        "downloaded": downloaded,
    }


# --------------------------------------------------------------------------- conversion
def convert_image(path, source_format, target_format, qemu_img="qemu-img"):
    """A temporary copy of image ``path`` in ``target_format``, next to it (``qemu-img convert``); the
    caller removes it."""
    exe = shutil.which(qemu_img)
    if exe is None:
        raise VirtError(
            "converting the image from {} to {} needs qemu-img on the hypervisor (package qemu-utils, or "
            "qemu-img)".format(source_format, target_format)
        )
    fd, tmp = tempfile.mkstemp(
        prefix=os.path.basename(path) + ".", suffix="." + target_format + ".tmp", dir=os.path.dirname(path)
    )
    os.close(fd)
    argv = [exe, "convert", "-q", "-f", source_format, "-O", target_format, path, tmp]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        os.unlink(tmp)
        raise VirtError(
            "qemu-img could not convert the image from {} to {}: {}".format(
                source_format, target_format, (res.stderr or res.stdout).strip()
            )
        )
    return tmp
