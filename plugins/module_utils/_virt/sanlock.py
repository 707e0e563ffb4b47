# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lease probe for libvirt's sanlock lock manager: resource names, and who holds each lease, by host.

Names (as libvirt's ``src/locking/lock_driver_sanlock.c`` makes them):

- an automatic disk lease (``auto_disk_leases = 1``) is the resource ``<md5 hex of the disk path>`` in the
  lockspace ``__LIBVIRT__DISKS__``, stored at offset 0 of the file ``<disk_lease_dir>/<md5 hex>``; the
  lockspace itself is the file ``<disk_lease_dir>/__LIBVIRT__DISKS__``;
- a ``<lease>`` element is the resource ``<key>`` in the lockspace ``<lockspace>``, stored at
  ``<target path>`` + ``offset``, which sanlock reads directly.

Who holds a lease, from two sources:

- this host's daemon (``sanlock client status``): an ``r LOCKSPACE:NAME:PATH:OFFSET:LVER p PID`` line is a
  lease this host holds for process PID (the guest's QEMU);
- the lease area on shared storage: the leader record names the owner's host_id and generation, with
  timestamp 0 once released.  It is read directly (O_DIRECT, as sanlock reads and writes it: no page cache
  between this host and the storage), and with ``sanlock direct dump PATH:OFFSET`` where that read is not
  possible (a filesystem without O_DIRECT, an unaligned offset).  Every host reads the same area, so
  this tells the holder across hosts.  The owner's host_id is named through the lockspace's delta lease
  records (``sanlock direct dump`` of the lockspace), whose resource field is the daemon's host name
  ``<uuid>.<nodename>``.

A lease that cannot be read from either is reported with ``held`` null: unknown, never "not held".
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import shutil
import struct
import subprocess

DISK_LOCKSPACE = "__LIBVIRT__DISKS__"
SANLOCK_PATHS = ("/usr/sbin/sanlock", "/sbin/sanlock", "/usr/bin/sanlock")
TIMEOUT = 15


def disk_resource_name(path):
    """libvirt's sanlock resource name of a disk: the md5 hex digest of its path."""
    return hashlib.md5(path.encode("utf-8")).hexdigest()


def disk_lease(path, disk_lease_dir):
    """(lockspace name, resource name, lease file, offset) of a disk's automatic lease."""
    name = disk_resource_name(path)
    return DISK_LOCKSPACE, name, os.path.join(disk_lease_dir, name), 0


def disk_lockspace_file(disk_lease_dir):
    return os.path.join(disk_lease_dir, DISK_LOCKSPACE)


# --------------------------------------------------------------------------- parsing
def _split_spec(spec, fields):
    """``LOCKSPACE:NAME:PATH:OFFSET[:LVER]`` (the path may hold colons): split from both ends."""
    head = spec.split(":", 2)
    if len(head) < 3:
        return None
    tail = head[2].rsplit(":", fields - 3)
    if len(tail) != fields - 2:
        return None
    return head[:2] + tail


def parse_resource_spec(spec):
    """``LOCKSPACE:NAME:PATH:OFFSET:LVER`` -> {lockspace, name, path, offset, lver}, or None."""
    parts = _split_spec(spec, 5)
    if not parts:
        return None
    try:
        return {
            "lockspace": parts[0],
            "name": parts[1],
            "path": parts[2],
            "offset": int(parts[3]),
            "lver": int(parts[4]),
        }
    except ValueError:
        return None


def parse_lockspace_spec(spec):
    """``LOCKSPACE:HOST_ID:PATH:OFFSET`` -> {lockspace, host_id, path, offset}, or None."""
    parts = _split_spec(spec, 4)
    if not parts:
        return None
    try:
        return {"lockspace": parts[0], "host_id": int(parts[1]), "path": parts[2], "offset": int(parts[3])}
    except ValueError:
        return None


def parse_client_status(text):
    """``sanlock client status``: {daemon, lockspaces: [..], resources: [.. with pid], clients: {pid: name}}."""
    out = {"daemon": None, "lockspaces": [], "resources": [], "clients": {}}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "daemon" and len(words) > 1:
            out["daemon"] = words[1]
        elif words[0] == "p" and len(words) > 2:
            try:
                pid = int(words[1])
            except ValueError:
                continue
            if pid > 0:
                out["clients"][pid] = words[2]
        elif words[0] == "s" and len(words) > 1:
            ls = parse_lockspace_spec(words[1])
            if ls:
                ls["adding"] = "ADD" in words[2:]
                ls["removing"] = "REM" in words[2:]
                out["lockspaces"].append(ls)
        elif words[0] == "r" and len(words) > 1:
            res = parse_resource_spec(words[1])
            if res:
                res["pid"] = None
                if len(words) > 3 and words[2] == "p":
                    try:
                        res["pid"] = int(words[3])
                    except ValueError:
                        pass
                out["resources"].append(res)
    return out


def parse_inquire(text):
    """``sanlock client inquire -p PID``: the resources that process holds (its quoted state string)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith('"'):
            continue
        for spec in line.strip('"').split():
            res = parse_resource_spec(spec)
            if res:
                out.append(res)
    return out


_DUMP_ROW = re.compile(r"^\s*([0-9]{8,})\s+(\S+)\s+(\S+)\s+([0-9]+)\s+([0-9]+)\s+([0-9]+)(?:\s+([0-9]+))?\s*$")


def parse_direct_dump(text):
    """``sanlock direct dump PATH[:OFFSET]``: rows {offset, lockspace, resource, timestamp, owner_id,
    owner_generation, lver}. A lockspace's rows are its hosts' delta leases (resource = host name,
    owner_id = host_id, no lver); a resource lease's row is its paxos leader (timestamp 0: released)."""
    out = []
    for line in text.splitlines():
        m = _DUMP_ROW.match(line)
        if not m:
            continue
        out.append(
            {
                "offset": int(m.group(1)),
                "lockspace": m.group(2),
                "resource": m.group(3),
                "timestamp": int(m.group(4)),
                "owner_id": int(m.group(5)),
                "owner_generation": int(m.group(6)),
                "lver": int(m.group(7)) if m.group(7) is not None else None,
            }
        )
    return out


# the paxos leader record at the start of a resource lease (sanlock's leader.h, little-endian): magic,
# version, flags, sector_size, num_hosts, max_hosts, owner_id, owner_generation, lver, space_name[48],
# resource_name[48], timestamp
_LEADER = struct.Struct("<IIIIQQQQQ48s48sQ")
PAXOS_DISK_MAGIC = 0x06152010
_DIRECT_IO = 4096  # read size and alignment: a whole sector on 512 and 4096 byte sector storage


def read_leader(path, offset=0):
    """The leader record of the resource lease at ``offset`` of ``path``, read with O_DIRECT as sanlock does,
    as a row of :func:`parse_direct_dump`; None when it cannot be read so (no O_DIRECT, an unaligned offset,
    an error, no paxos leader there): the caller then asks ``sanlock direct dump``. Raises nothing."""
    if not hasattr(os, "O_DIRECT") or not hasattr(os, "preadv") or offset % _DIRECT_IO:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return None
    try:
        buf = mmap.mmap(-1, _DIRECT_IO)  # page-aligned, as O_DIRECT needs
        try:
            if os.preadv(fd, [buf], offset) < _LEADER.size:
                return None
            f = _LEADER.unpack(buf[: _LEADER.size])
        finally:
            buf.close()
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if f[0] != PAXOS_DISK_MAGIC:
        return None
    return {
        "offset": offset,
        "lockspace": f[9].rstrip(b"\0").decode("utf-8", "replace"),
        "resource": f[10].rstrip(b"\0").decode("utf-8", "replace"),
        "timestamp": f[11],
        "owner_id": f[6],
        "owner_generation": f[7],
        "lver": f[8],
    }


def parse_host_status(text):
    """``sanlock client host_status -s LS [-D]``: {host_id: {timestamp, owner_name, owner_generation, ...}}."""
    out = {}
    current = None
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].isdigit() and words[1] == "timestamp":
            current = {"timestamp": int(words[2]) if words[2].isdigit() else None}
            if len(words) > 3:
                current["flags"] = words[3:]
            out[int(words[0])] = current
        elif current is not None and "=" in line and line.startswith((" ", "\t")):
            key, _sep, value = line.strip().partition("=")
            current[key] = int(value) if value.isdigit() else value
    return out


_UUID_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\.(.+)$")


def host_name_of(owner_name):
    """The host a sanlock daemon's name belongs to: its default name is ``<uuid>.<nodename>``; a name set
    with ``sanlock daemon -e NAME`` is taken as it is."""
    if not owner_name:
        return None
    m = _UUID_PREFIX.match(owner_name)
    return m.group(1) if m else owner_name


# --------------------------------------------------------------------------- probing
def _default_runner(argv, timeout=TIMEOUT):
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, "", str(exc)
    return res.returncode, res.stdout, res.stderr


def sanlock_binary():
    found = shutil.which("sanlock")
    if found:
        return found
    for path in SANLOCK_PATHS:
        if os.access(path, os.X_OK):
            return path
    return None


class SanlockProbe:
    """Reads this host's sanlock daemon and the shared lease areas once per :meth:`refresh`.

    ``runner(argv)`` -> (rc, stdout, stderr) runs the ``sanlock`` command (tests pass a fake one, fed with
    output captured on the lab). ``leader_reader(path, offset)`` reads a resource lease's leader record
    directly (default :func:`read_leader` with the real runner, none with a fake one); where it returns
    None the probe asks ``sanlock direct dump``. ``host_id`` is this host's id in the disk lockspace
    (qemu-sanlock.conf), ``host_name`` this host's name (for a lease this host holds).
    """

    def __init__(
        self,
        host_id=None,
        host_name=None,
        disk_lease_dir=None,
        runner=None,
        binary=None,
        exists=None,
        leader_reader=None,
    ):
        self.host_id = host_id
        self.leader_reader = leader_reader or (read_leader if runner is None else None)
        self.exists = exists or os.path.exists
        self.host_name = host_name or os.uname()[1]
        self.disk_lease_dir = disk_lease_dir
        self.runner = runner or _default_runner
        self.binary = binary or (sanlock_binary() if runner is None else "sanlock")
        self.errors = []
        self._status = None
        self._names = {}
        self._dumps = {}

    def _run(self, *args):
        if not self.binary:
            return None, "the sanlock command is not installed"
        rc, out, err = self.runner([self.binary] + list(args))
        if rc != 0:
            return None, (err or out or "exit {}".format(rc)).strip()
        return out, None

    def refresh(self):
        self._status = None
        self._names = {}
        self._dumps = {}
        self.errors = []

    # ---- this host's daemon
    def status(self):
        """This host's daemon's view, parsed; None when the daemon does not answer."""
        if self._status is None:
            out, err = self._run("client", "status")
            if err:
                self.errors.append("sanlock client status: " + err)
                self._status = False
            else:
                self._status = parse_client_status(out)
        return self._status or None

    def lockspace(self, name):
        """The joined lockspace ``name`` of this host's daemon: {lockspace, host_id, path, offset}."""
        st = self.status()
        for ls in (st or {}).get("lockspaces", []):
            if ls["lockspace"] == name:
                return ls
        return None

    def local_holder(self, lockspace, name, path, offset):
        """(pid, lver) of the process of this host holding the resource, or None; raises nothing."""
        st = self.status()
        if st is None:
            return None
        for r in st["resources"]:
            if r["lockspace"] == lockspace and r["name"] == name and r["path"] == path and r["offset"] == offset:
                return r["pid"], r["lver"]
        return None

    # ---- shared storage
    def dump(self, path, offset=0):
        key = (path, offset)
        if key not in self._dumps:
            out, err = self._run("direct", "dump", "{}:{}".format(path, offset))
            if err:
                self.errors.append("sanlock direct dump {}: {}".format(path, err))
                self._dumps[key] = None
            else:
                self._dumps[key] = parse_direct_dump(out)
        return self._dumps[key]

    def host_names(self, lockspace):
        """{host_id: host name} of a lockspace, from its delta lease records on shared storage."""
        if lockspace in self._names:
            return self._names[lockspace]
        names = {}
        path, offset = None, 0
        ls = self.lockspace(lockspace)
        if ls is not None:
            path, offset = ls["path"], ls["offset"]
        elif lockspace == DISK_LOCKSPACE and self.disk_lease_dir:
            path = disk_lockspace_file(self.disk_lease_dir)
        if path and self.exists(path):
            for row in self.dump(path, offset) or []:
                if row["lockspace"] == lockspace and row["owner_id"]:
                    names[row["owner_id"]] = host_name_of(row["resource"])
        self._names[lockspace] = names
        return names

    def probe(self, lockspace, name, path, offset=0):
        """Who holds one lease: {held, held_here, holder_pid, holder_host, holder_host_id, lver, how, error}.

        ``held`` is null (unknown) when neither this host's daemon nor the lease area says.
        """
        out = {
            "held": None,
            "held_here": None,
            "holder_pid": None,
            "holder_host": None,
            "holder_host_id": None,
            "lver": None,
            "how": None,
            "error": None,
        }
        local = self.local_holder(lockspace, name, path, offset)
        if local is not None:
            ls = self.lockspace(lockspace)
            out.update(
                held=True,
                held_here=True,
                holder_pid=local[0],
                holder_host=self.host_name,
                holder_host_id=ls["host_id"] if ls else self.host_id,
                lver=local[1],
                how="sanlock client status",
            )
            return out
        here_known = self.status() is not None
        if not self.exists(path):
            # sanlock keeps a lease only in its area: without the file nobody can hold it
            out.update(held=False, held_here=False if here_known else None, how="no lease file")
            return out
        rows = []
        direct = self.leader_reader(path, offset) if self.leader_reader else None
        if direct is not None and direct["lockspace"] == lockspace and direct["resource"] == name:
            rows = [direct]
        if not rows:
            rows = [r for r in (self.dump(path, offset) or []) if r["lockspace"] == lockspace and r["resource"] == name]
        if not rows:
            out["error"] = self.errors[-1] if self.errors else "no leader record for {} in {}".format(name, path)
            return out
        leader = rows[0]
        out["lver"] = leader["lver"]
        out["how"] = "sanlock direct dump" if leader is not direct else "leader record (O_DIRECT read)"
        if leader["timestamp"] == 0 or leader["owner_id"] == 0:
            out.update(held=False, held_here=False if here_known else None)
            return out
        out["held"] = True
        out["holder_host_id"] = leader["owner_id"]
        out["holder_host"] = self.host_names(lockspace).get(leader["owner_id"])
        ls = self.lockspace(lockspace)
        mine = ls["host_id"] if ls else self.host_id
        # held on disk but not in this daemon's list: another host's (or a stale one of this host_id)
        out["held_here"] = False if here_known else (None if mine == leader["owner_id"] else False)
        return out
