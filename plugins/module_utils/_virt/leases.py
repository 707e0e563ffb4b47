# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lease probe for libvirt's lock managers: virtlockd here, sanlock through :mod:`.sanlock`.

- :func:`read_lock_config` reads the driver config (``lock_manager``) and the lock plugin config
  (``auto_disk_leases``, ``require_lease_for_disks``, ``file_lockspace_dir``, ``lvm_lockspace_dir``,
  ``scsi_lockspace_dir``). Paths come from the driver profile; the environment variables
  ``LOCKSTEP_VIRT_LOCK_CONF`` and ``LOCKSTEP_VIRT_LOCKD_CONF`` override them (tests, odd installs).
- :func:`domain_lease_resources` names the lease resource of every read-write, non-shareable file or
  block disk (direct: the disk path; indirect: ``file_lockspace_dir/<sha256 hex of the path>``;
  LVM under ``lvm_lockspace_dir``) and of every ``<lease>`` (``<target path>/<lockspace>/<key>``).
- :func:`probe_lock` tests a lease file with POSIX ``fcntl(F_GETLK)`` on byte 0 and gives the holder's
  pid and the lock's type; :func:`probe_resources` adds ``held``, ``held_here`` (this host's virtlockd
  holds it), ``holder_pid``, ``lock`` (``exclusive``/``shared``) and ``sharers`` to each resource.
- With sanlock (``qemu-sanlock.conf``: ``disk_lease_dir``, ``host_id``) a disk lease is the resource
  ``<md5 hex of the path>`` of lockspace ``__LIBVIRT__DISKS__`` in ``disk_lease_dir``, a ``<lease>`` the
  resource ``<key>`` of ``<lockspace>`` at ``<target path>``/offset; :func:`probe_resources` asks
  :class:`.sanlock.SanlockProbe` (this host's daemon, then the lease area on shared storage) and adds
  ``holder_host`` (the holder's host name) and ``holder_host_id``. ``held`` null means unknown.
- :func:`read_host_lock_config` reads a host's configuration with the same reader: from the files here
  for a local URI, over SSH (the transport of a ``+ssh`` URI) for a remote one.

Shareable disks (``<shareable/>``): libvirt adds them with VIR_LOCK_MANAGER_RESOURCE_SHARED
(``domain_lock.c``) and virtlockd takes a *shared* fcntl lock (F_RDLCK) on them; a host's virtlockd holds
one lock per resource and keeps a list of the QEMU processes that own it (``virlockspace.c``), so the lock
stays while any guest on that host sharing the disk runs. F_GETLK reports one conflicting lock only.
Who holds a shared lock is therefore read in two ways: the lock itself (type, and this host's virtlockd's
own file descriptors in /proc, which show its lock even behind another host's), and the guests on the
host that share the disk (:func:`share_users`). A share held here can be a given guest's own only when
no other guest here shares that disk (:func:`own_share`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shlex
import struct
import subprocess
from urllib.parse import parse_qs, urlsplit

from ansible_collections.lockstep.virt.plugins.module_utils._virt.sanlock import SanlockProbe
from ansible_collections.lockstep.virt.plugins.module_utils._virt.sanlock import disk_lease as sanlock_disk_lease
from ansible_collections.lockstep.virt.plugins.module_utils._virt.xml import elements, parse_xml

ENV_LOCK_CONF = "LOCKSTEP_VIRT_LOCK_CONF"
ENV_LOCKD_CONF = "LOCKSTEP_VIRT_LOCKD_CONF"
VIRTLOCKD_PIDFILES = ("/run/virtlockd.pid", "/var/run/virtlockd.pid")
SANLOCK_LEASE_DIR = "/var/lib/libvirt/sanlock"  # libvirt's default disk_lease_dir

_FLOCK_FMT = "hhqqi"  # struct flock on Linux with 64-bit off_t: l_type, l_whence, l_start, l_len, l_pid
_FLOCK_SIZE = 32


# --------------------------------------------------------------------------- config
_CONF_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def _conf_value(raw):
    raw = raw.strip()
    if raw.startswith('"'):
        end = raw.find('"', 1)
        return raw[1:end] if end > 0 else raw[1:]
    if raw.startswith("["):
        return re.findall(r'"([^"]*)"', raw)
    raw = raw.split("#", 1)[0].strip()
    try:
        return int(raw)
    except ValueError:
        return raw


def parse_libvirt_conf(text):
    """Parse libvirt's ``key = value`` config syntax (strings, integers, lists; # comments)."""
    out = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _CONF_LINE.match(line)
        if m:
            out[m.group(1)] = _conf_value(m.group(2))
    return out


def _read_local(path):
    with open(path) as fh:
        return fh.read()


def _read_conf(path, reader=_read_local):
    if not path:
        return None, None
    try:
        return parse_libvirt_conf(reader(path)), None
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None, None
        return None, "cannot read {}: {}".format(path, exc.strerror or exc)


class LockConfig:
    """A host's lock manager configuration as one driver sees it."""

    def __init__(
        self,
        manager=None,
        auto_disk_leases=True,
        require_lease_for_disks=None,
        file_lockspace_dir=None,
        lvm_lockspace_dir=None,
        scsi_lockspace_dir=None,
        disk_lease_dir=None,
        host_id=None,
        lock_conf=None,
        lockd_conf=None,
        local=True,
        errors=None,
    ):
        self.manager = manager
        self.auto_disk_leases = bool(auto_disk_leases)
        if require_lease_for_disks is None:
            require_lease_for_disks = not self.auto_disk_leases
        self.require_lease_for_disks = bool(require_lease_for_disks)
        self.file_lockspace_dir = file_lockspace_dir or None
        self.lvm_lockspace_dir = lvm_lockspace_dir or None
        self.scsi_lockspace_dir = scsi_lockspace_dir or None
        self.disk_lease_dir = disk_lease_dir or None
        self.host_id = host_id if isinstance(host_id, int) and host_id > 0 else None
        self.lock_conf = lock_conf
        self.lockd_conf = lockd_conf
        self.local = local
        self.errors = list(errors or [])
        self.readable = True  # False: the host's files could not be read at all (see errors)

    @property
    def enabled(self):
        """True when a lock manager that takes leases (lockd, sanlock) is configured."""
        return self.manager in ("lockd", "sanlock")

    @property
    def probeable(self):
        """True when leases can be tested from here (local host; lockd's lease files, sanlock's daemon and
        lease areas)."""
        return self.local and self.manager in ("lockd", "sanlock")

    def to_dict(self):
        return {
            "manager": self.manager,
            "auto_disk_leases": self.auto_disk_leases,
            "require_lease_for_disks": self.require_lease_for_disks,
            "file_lockspace_dir": self.file_lockspace_dir,
            "lvm_lockspace_dir": self.lvm_lockspace_dir,
            "scsi_lockspace_dir": self.scsi_lockspace_dir,
            "disk_lease_dir": self.disk_lease_dir,
            "host_id": self.host_id,
            "lock_conf": self.lock_conf,
            "lockd_conf": self.lockd_conf,
            "local": self.local,
        }


def read_lock_config(profile=None, lock_conf=None, lockd_conf=None, local=True, reader=None):
    """Read the lock manager configuration.

    ``lock_conf`` / ``lockd_conf`` default to the environment overrides, then to the profile's paths.
    With ``local=False`` (a remote URI) nothing is read unless ``reader(path)`` (the file's text, or
    OSError) reads that host's files: the files here are not that host's. The result's ``local`` says
    whether its lease files can be probed from here.
    """
    # the environment overrides name files here: never another host's
    here = local or reader is None
    lock_conf = (
        lock_conf or (os.environ.get(ENV_LOCK_CONF) if here else None) or (profile.lock_conf if profile else None)
    )
    if not local and reader is None:
        return LockConfig(manager=None, local=False, lock_conf=lock_conf)
    reader = reader or _read_local
    errors = []
    driver_conf, err = _read_conf(lock_conf, reader)
    if err:
        errors.append(err)
    manager = (driver_conf or {}).get("lock_manager") or None
    if manager == "nop":
        manager = None
    if lockd_conf is None and here:
        lockd_conf = os.environ.get(ENV_LOCKD_CONF)
    if lockd_conf is None and profile is not None:
        lockd_conf = profile.sanlock_conf if manager == "sanlock" else profile.lockd_conf
    plugin_conf, err = _read_conf(lockd_conf, reader) if manager else (None, None)
    if err:
        errors.append(err)
    plugin_conf = plugin_conf or {}
    auto = plugin_conf.get("auto_disk_leases", 1 if manager == "lockd" else 0)
    return LockConfig(
        manager=manager,
        auto_disk_leases=bool(int(auto)) if str(auto).isdigit() else bool(auto),
        require_lease_for_disks=plugin_conf.get("require_lease_for_disks"),
        file_lockspace_dir=plugin_conf.get("file_lockspace_dir"),
        lvm_lockspace_dir=plugin_conf.get("lvm_lockspace_dir"),
        scsi_lockspace_dir=plugin_conf.get("scsi_lockspace_dir"),
        disk_lease_dir=plugin_conf.get("disk_lease_dir") or (SANLOCK_LEASE_DIR if manager == "sanlock" else None),
        host_id=plugin_conf.get("host_id") if manager == "sanlock" else None,
        lock_conf=lock_conf,
        lockd_conf=lockd_conf,
        local=local,
        errors=errors,
    )


SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
SSH_TIMEOUT = 20


def ssh_reader(uri, run=subprocess.run, timeout=SSH_TIMEOUT):
    """A ``reader(path)`` for :func:`read_lock_config` that reads a file on the host of a ``+ssh`` libvirt
    URI, with the user, port, key file and known-hosts settings libvirt's own SSH transport takes from the
    URI (``keyfile``, ``known_hosts``, ``no_verify``). None for other transports (tls, tcp): their host's
    files cannot be read from here."""
    parts = urlsplit(uri)
    transport = parts.scheme.split("+", 1)[1] if "+" in parts.scheme else None
    if transport not in SSH_TRANSPORTS or not parts.hostname:
        return None
    query = dict((k, v[-1]) for k, v in parse_qs(parts.query).items())
    argv = ["ssh", "-T", "-e", "none", "-o", "BatchMode=yes", "-o", "ConnectTimeout={}".format(timeout)]
    if parts.port:
        argv += ["-p", str(parts.port)]
    if parts.username:
        argv += ["-l", parts.username]
    if query.get("keyfile"):
        argv += ["-i", query["keyfile"]]
    if query.get("known_hosts"):
        argv += ["-o", "UserKnownHostsFile=" + query["known_hosts"]]
    if query.get("no_verify") == "1":
        argv += ["-o", "StrictHostKeyChecking=no"]
    argv += ["--", parts.hostname]

    def read(path):
        # exit 2: the file is missing (cat's own errors are not parsed); 255: ssh itself failed
        cmd = "if [ -e {0} ]; then cat -- {0}; else exit 2; fi".format(shlex.quote(path))
        try:
            res = run(argv + [cmd], capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise OSError(errno.EIO, "ssh to {}: {}".format(parts.hostname, exc)) from None
        if res.returncode == 2:
            raise OSError(errno.ENOENT, "no such file on {}".format(parts.hostname))
        if res.returncode != 0:
            why = (res.stderr or "").strip().splitlines()
            raise OSError(
                errno.EIO,
                "over ssh to {}: {}".format(parts.hostname, why[-1] if why else "exit {}".format(res.returncode)),
            )
        return res.stdout

    return read


def read_host_lock_config(conn, read_config=None, make_reader=ssh_reader):
    """The lock configuration of the host behind ``conn`` (a Connection), read by the same reader as
    :func:`read_lock_config`: the files here for a local URI, over SSH for a ``+ssh`` URI (the way libvirt
    reaches that host). Files are named by the host's driver profile (``conn.profile``). For a transport
    whose host cannot be read, the result has ``manager`` None and an error saying so."""
    read_config = read_config or read_lock_config
    if conn.local:
        return read_config(conn.profile, local=True)
    reader = make_reader(conn.uri)
    if reader is None:
        cfg = LockConfig(manager=None, local=False)
        cfg.errors.append(
            "the lock configuration of {} cannot be read over {} (only a +ssh URI lets the module read that "
            "host's files)".format(conn.hostname, conn.uri)
        )
        cfg.readable = False
        return cfg
    cfg = read_config(conn.profile, local=False, reader=reader)
    return cfg


# --------------------------------------------------------------------------- naming
def lease_name(path):
    """virtlockd's indirect resource name for a disk: the sha256 hex digest of the full path."""
    return hashlib.sha256(path.encode("utf-8")).hexdigest()


def vm_lease_file(target_path, lockspace, key):
    """The file backing a ``<lease>``: ``<target path>/<lockspace>/<key>``."""
    return os.path.join(target_path or "", lockspace or "", key)


def lvm_uuid(path):
    """The LV UUID (as ``lvs -o uuid`` prints it) of a device-mapper block device, or None."""
    try:
        st = os.stat(path)
        dm_uuid_path = "/sys/dev/block/{}:{}/dm/uuid".format(os.major(st.st_rdev), os.minor(st.st_rdev))
        with open(dm_uuid_path) as fh:
            dm_uuid = fh.read().strip()
    except OSError:
        return None
    if not dm_uuid.startswith("LVM-") or len(dm_uuid) < 4 + 64:
        return None
    lv = dm_uuid[4 + 32 : 4 + 64]
    parts = (6, 4, 4, 4, 4, 4, 6)
    out, i = [], 0
    for n in parts:
        out.append(lv[i : i + n])
        i += n
    return "-".join(out)


def disk_lease_resource(path, config, shared=False):
    """(lockspace, resource file) virtlockd uses for a disk at ``path``, or None when not leased."""
    if not path or config is None or not config.enabled or not config.auto_disk_leases:
        return None
    if config.manager == "sanlock":
        if not config.disk_lease_dir:
            return None
        return config.disk_lease_dir, sanlock_disk_lease(path, config.disk_lease_dir)[2]
    if config.lvm_lockspace_dir and path.startswith("/dev"):
        key = lvm_uuid(path)
        if key:
            return config.lvm_lockspace_dir, os.path.join(config.lvm_lockspace_dir, key)
    if config.file_lockspace_dir:
        return config.file_lockspace_dir, os.path.join(config.file_lockspace_dir, lease_name(path))
    return "", path


# --------------------------------------------------------------------------- domain XML
def _bool_child(el, tag):
    return bool(elements(el, tag))


def domain_disks(root, resolve_volume=None):
    """Disks of a domain XML: [{target, device, type, path, format, bus, readonly, shareable, pool, volume}].

    ``resolve_volume(pool, volume)`` gives the path of a ``type='volume'`` disk when possible.
    """
    out = []
    devices = elements(root, "devices")
    if not devices:
        return out
    for disk in elements(devices[0], "disk"):
        dtype = disk.get("type", "file")
        source = elements(disk, "source")
        src = source[0] if source else None
        target = elements(disk, "target")
        driver = elements(disk, "driver")
        path = None
        pool = volume = None
        if src is not None:
            if dtype == "file":
                path = src.get("file")
            elif dtype == "block":
                path = src.get("dev")
            elif dtype == "dir":
                path = src.get("dir")
            elif dtype == "volume":
                pool, volume = src.get("pool"), src.get("volume")
                if resolve_volume is not None and pool and volume:
                    path = resolve_volume(pool, volume)
            elif dtype == "network":
                path = src.get("name")
        out.append(
            {
                "target": target[0].get("dev") if target else None,
                "bus": target[0].get("bus") if target else None,
                "device": disk.get("device", "disk"),
                "type": dtype,
                "path": path,
                "format": driver[0].get("type") if driver else None,
                "readonly": _bool_child(disk, "readonly"),
                "shareable": _bool_child(disk, "shareable"),
                "pool": pool,
                "volume": volume,
            }
        )
    return out


def domain_vm_leases(root):
    """``<lease>`` elements: [{key, lockspace, target_path, offset}]."""
    out = []
    devices = elements(root, "devices")
    if not devices:
        return out
    for lease in elements(devices[0], "lease"):

        def text(tag, _lease=lease):
            found = elements(_lease, tag)
            return (found[0].text or "").strip() if found else None

        target = elements(lease, "target")
        out.append(
            {
                "key": text("key"),
                "lockspace": text("lockspace"),
                "target_path": target[0].get("path") if target else None,
                "offset": int(target[0].get("offset", "0")) if target else 0,
            }
        )
    return out


def domain_lease_resources(root, config, resolve_volume=None):
    """Every lease the lock manager takes for this domain (disks first, then ``<lease>`` elements).

    Each: {kind: disk|lease, resource, lockspace, disk, key, path, shared}. ``resource`` is the file
    holding the lock (None when the disk is not leased). Read-only disks and disks of types other
    than file/block/volume are never leased.
    """
    out = []
    for disk in domain_disks(root, resolve_volume):
        if disk["readonly"] or disk["type"] not in ("file", "block", "volume") or not disk["path"]:
            continue
        res = disk_lease_resource(disk["path"], config, shared=disk["shareable"])
        entry = {
            "kind": "disk",
            "resource": res[1] if res else None,
            "lockspace": res[0] if res else None,
            "disk": disk["target"],
            "key": None,
            "path": disk["path"],
            "shared": disk["shareable"],
        }
        if res and config.manager == "sanlock":
            entry["sanlock"] = sanlock_disk_lease(disk["path"], config.disk_lease_dir)
        out.append(entry)
    sanlock = config is not None and config.manager == "sanlock"
    for lease in domain_vm_leases(root):
        if not lease["key"]:
            continue
        if sanlock:
            # sanlock reads the lease at <target path> + offset, in lockspace <lockspace>, named <key>
            target = lease["target_path"] or ""
            entry = {
                "kind": "lease",
                "resource": target or None,
                "lockspace": os.path.dirname(target) or None,
                "disk": None,
                "key": lease["key"],
                "path": None,
                "shared": False,
                "sanlock": (lease["lockspace"] or "", lease["key"], target, lease["offset"]),
            }
            out.append(entry)
            continue
        lockspace = os.path.join(lease["target_path"] or "", lease["lockspace"] or "")
        out.append(
            {
                "kind": "lease",
                "resource": vm_lease_file(lease["target_path"], lease["lockspace"], lease["key"]),
                "lockspace": lockspace,
                "disk": None,
                "key": lease["key"],
                "path": None,
                "shared": False,
            }
        )
    return out


def rw_disks_without_lease(resources):
    """Read-write, non-shareable disk entries that the lock manager will not lease."""
    return [r for r in resources if r["kind"] == "disk" and not r["shared"] and not r["resource"]]


# --------------------------------------------------------------------------- probing
def probe_lock(path):
    """Test the POSIX lock on byte 0 of ``path`` with F_GETLK.

    Returns {exists, held, holder_pid, shared}. A missing file is not held. A lock held by this very
    process is not reported (POSIX semantics).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return {"exists": False, "held": False, "holder_pid": None, "shared": False}
        return {"exists": True, "held": None, "holder_pid": None, "shared": False, "error": exc.strerror}
    try:
        req = struct.pack(_FLOCK_FMT, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        req = req.ljust(_FLOCK_SIZE, b"\0")
        res = fcntl.fcntl(fd, fcntl.F_GETLK, req)
        l_type, _whence, _start, _len, l_pid = struct.unpack(_FLOCK_FMT, res[: struct.calcsize(_FLOCK_FMT)])
    finally:
        os.close(fd)
    if l_type == fcntl.F_UNLCK:
        return {"exists": True, "held": False, "holder_pid": None, "shared": False}
    return {
        "exists": True,
        "held": True,
        "holder_pid": l_pid if l_pid > 0 else None,
        "shared": l_type == fcntl.F_RDLCK,
    }


def _comm(pid):
    try:
        with open("/proc/{}/comm".format(pid)) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _mnt_ns(pid):
    try:
        return os.readlink("/proc/{}/ns/mnt".format(pid))
    except OSError:
        return None


def virtlockd_pids(pidfiles=VIRTLOCKD_PIDFILES, proc="/proc"):
    """Pids of this host's virtlockd: from its pid file, else a /proc scan for comm ``virtlockd`` in
    the same mount namespace as this process."""
    pids = set()
    for pidfile in pidfiles:
        try:
            with open(pidfile) as fh:
                pid = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if _comm(pid) in ("virtlockd", None) and os.path.exists("/proc/{}".format(pid)):
            pids.add(pid)
    if pids:
        return pids
    mine = _mnt_ns("self")
    try:
        entries = os.listdir(proc)
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        if _comm(entry) == "virtlockd" and _mnt_ns(entry) == mine:
            pids.add(int(entry))
    return pids


def sanlock_probe_for(config, host_name=None, runner=None):
    """The :class:`.sanlock.SanlockProbe` of a sanlock host's configuration."""
    return SanlockProbe(
        host_id=config.host_id if config is not None else None,
        host_name=host_name,
        disk_lease_dir=config.disk_lease_dir if config is not None else None,
        runner=runner,
    )


def _fd_lock_type(pid, fd, proc="/proc"):
    """The POSIX lock type ``pid`` holds through ``fd`` (from /proc/<pid>/fdinfo), or None."""
    try:
        with open("{}/{}/fdinfo/{}".format(proc, pid, fd)) as fh:
            text = fh.read()
    except OSError:
        return None
    for line in text.splitlines():
        # lock:	1: POSIX  ADVISORY  READ 1234 fe:00:2147031 0 0
        if line.startswith("lock:") and " POSIX " in line:
            words = line.split()
            if "READ" in words:
                return "shared"
            if "WRITE" in words:
                return "exclusive"
    return None


def held_by_pids(path, pids, proc="/proc"):
    """The lock (``shared``/``exclusive``) one of ``pids`` holds on the file ``path``, read from their open
    files in /proc (their fd for that inode and its fdinfo ``lock:`` line), or None.

    F_GETLK reports one conflicting lock only: behind another host's shared lock this host's virtlockd's
    own share is invisible to it, but not to /proc (this host's kernel tracks the locks of its processes)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    for pid in pids or ():
        fd_dir = "{}/{}/fd".format(proc, pid)
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                fst = os.stat(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):
                kind = _fd_lock_type(pid, fd, proc)
                if kind:
                    return kind
    return None


def probe_resources(resources, config=None, here_pids=None, sanlock_probe=None, sharers=None, fd_lock=held_by_pids):
    """Copy of ``resources`` with held, held_here, holder_pid, holder_host, holder_host_id, lock and sharers
    (None when not probeable from here; ``held`` None: unknown).

    ``lock``: ``exclusive`` or ``shared`` (F_RDLCK, what virtlockd takes for a shareable disk), None when not
    held. ``held_here``: this host's lock manager holds it - for virtlockd the pid F_GETLK reports, or for a
    shared lock its own file descriptors (another host's share may hide it from F_GETLK). ``sharers``: for a
    shareable disk, the other guests on this host that share it and hold leases (``sharers(path)`` gives
    them), else [].
    """
    is_sanlock = config is not None and config.manager == "sanlock"
    if here_pids is None:
        here_pids = virtlockd_pids() if (config is None or config.probeable) and not is_sanlock else set()
    if is_sanlock and sanlock_probe is None and config.local:
        sanlock_probe = sanlock_probe_for(config)
    elif sanlock_probe is not None:
        sanlock_probe.refresh()
    out = []
    for r in resources:
        r = dict(r)
        r.setdefault("holder_host", None)
        r.setdefault("holder_host_id", None)
        r.setdefault("sharers", [])
        if not r.get("resource") or (config is not None and not config.local):
            r.update(held=None, held_here=None, holder_pid=None, lock=None)
        elif is_sanlock:
            if not r.get("sanlock"):
                r.update(held=None, held_here=None, holder_pid=None, lock=None)
            else:
                p = sanlock_probe.probe(*r["sanlock"])
                r.update(
                    held=p["held"],
                    held_here=p["held_here"],
                    holder_pid=p["holder_pid"],
                    holder_host=p["holder_host"],
                    holder_host_id=p["holder_host_id"],
                    lock=("shared" if r.get("shared") else "exclusive") if p["held"] else None,
                )
                if p.get("error"):
                    r["probe_error"] = p["error"]
        else:
            p = probe_lock(r["resource"])
            r["held"] = p["held"]
            r["holder_pid"] = p["holder_pid"]
            r["lock"] = (
                (("shared" if p["shared"] else "exclusive") if p["held"] else None) if "error" not in p else None
            )
            r["held_here"] = bool(p["held"] and p["holder_pid"] in here_pids)
            if p["held"] and p["shared"] and not r["held_here"] and here_pids:
                r["held_here"] = fd_lock(r["resource"], here_pids) is not None
            if r.get("shared") and sharers is not None and r.get("path"):
                r["sharers"] = sorted(sharers(r["path"]))
        out.append(r)
    return out


def own_share(r):
    """For a shareable disk probed on a guest's host: True when the lock held here can only be that guest's
    own share (held by this host's virtlockd, and no other guest here shares the disk), False when this
    host's virtlockd holds no lock on it, None when it holds one that may be another guest's (virtlockd
    keeps one shared lock for all the guests here sharing the disk: the lock cannot tell them apart)."""
    if not r.get("held_here"):
        return False
    return None if r.get("sharers") else True


def share_users(virt, exclude=None, paused_holds=False):
    """``sharers(path)`` for :func:`probe_resources`: the guests on the host of the libvirt connection ``virt``
    (other than ``exclude``) that hold a lease on a shareable disk at ``path``: active, and running (a
    paused QEMU guest released its leases; ``paused_holds`` for drivers whose paused guests keep them).
    The guests are listed again at each call: they may start or stop between two probes."""

    def sharers(path):
        names = []
        try:
            doms = virt.listAllDomains(0)
        except Exception:  # libvirtError: no list, no sharers known
            return names
        for dom in doms:
            try:
                name = dom.name()
                if name == exclude or not dom.isActive():
                    continue
                state = dom.state()[0]
                if state != 1 and not (paused_holds and state == 3):  # VIR_DOMAIN_RUNNING, VIR_DOMAIN_PAUSED
                    continue
                root = parse_xml(dom.XMLDesc(0), "domain", "libvirt's domain XML")
            except Exception:  # the guest went away meanwhile
                continue
            for disk in domain_disks(root):
                if disk["shareable"] and not disk["readonly"] and disk["path"] == path:
                    names.append(name)
                    break
        return names

    return sharers


# The one shape of a lease in every result (domain, domain_info, lease_info): every field always present.
# ``lockspace`` is always the lockspace *directory* (a disk lease's file_lockspace_dir or lvm_lockspace_dir;
# a VM lease's <target path>/<lockspace>), never the bare lockspace name.
# ``lock``: exclusive or shared (a shareable disk) when held; ``sharers``: other guests on the host sharing the disk.
LEASE_FIELDS = (
    "kind",
    "resource",
    "lockspace",
    "disk",
    "path",
    "key",
    "held",
    "held_here",
    "holder_pid",
    "holder_host",
    "lock",
    "sharers",
)


def public_lease(r):
    """A lease as results show it: :data:`LEASE_FIELDS` of a probed :func:`domain_lease_resources` entry
    (``disk``/``path`` null for a VM lease, ``key`` null for a disk lease)."""
    return dict((field, r.get(field)) for field in LEASE_FIELDS)


def ensure_lease_file(path, mode=0o600):
    """Create an empty ``<lease>`` key file when missing (virtlockd creates disk lease files, not
    these). Returns True when created. The lockspace directory must exist."""
    if os.path.exists(path):
        return False
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise OSError(errno.ENOENT, "lockspace directory {} does not exist".format(directory))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.close(fd)
    return True


def default_lease_lockspace(config):
    """Default ``<lockspace>`` of a VM lease: the last component of file_lockspace_dir, else ``lockd``."""
    if config is None or not config.file_lockspace_dir:
        return "lockd"
    return os.path.basename(config.file_lockspace_dir.rstrip("/")) or "lockd"


def default_lease_target(config, lockspace="lockd"):
    """The ``<target path>`` for a VM lease such that path + '/' + lockspace == file_lockspace_dir."""
    if config is None or not config.file_lockspace_dir:
        return None
    lsdir = config.file_lockspace_dir.rstrip("/")
    suffix = "/" + lockspace
    if lsdir.endswith(suffix):
        return lsdir[: -len(suffix)] or "/"
    return os.path.dirname(lsdir)


def describe_holder(r):
    """Human text for who holds a lease."""
    if r.get("held") is None and r.get("resource"):
        return "unknown (cannot be verified{})".format(": " + r["probe_error"] if r.get("probe_error") else "")
    if r.get("sanlock") and r.get("held"):
        who = r.get("holder_host") or "sanlock host_id {}".format(r.get("holder_host_id"))
        if r.get("held_here"):
            return "held by this host ({}, sanlock host_id {}) for pid {}".format(
                who, r.get("holder_host_id"), r.get("holder_pid")
            )
        return "held by {} (sanlock host_id {})".format(who, r.get("holder_host_id"))
    if not r.get("held"):
        return "not held"
    shared = "shared " if r.get("lock") == "shared" else ""
    if r.get("held_here"):
        text = "{}held by this host's virtlockd (pid {})".format(shared, r.get("holder_pid"))
        if r.get("lock") == "shared" and r.get("sharers"):
            text += ", a lock it keeps for every guest here sharing the disk ({})".format(", ".join(r["sharers"]))
        return text
    if r.get("holder_pid"):
        return "{}held by pid {}, not this host's virtlockd".format(shared, r["holder_pid"])
    return "{}held by another host".format(shared)
