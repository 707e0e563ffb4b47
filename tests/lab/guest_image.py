"""Build the lab's Linux guest image from Debian 12 packages, and the domain XML that boots it.

    python3 tests/lab/guest_image.py [--force]    build (or reuse) the image; prints its directory
    python3 tests/lab/guest_image.py xml NAME [--disk PATH] [--memory MIB]
                                                  print the domain XML of a guest of that image

The image is a kernel (linux-image-cloud-amd64) and an initramfs holding busybox-static,
qemu-guest-agent with the shared libraries it needs, and python3.11 with its standard library
(zipped as .pyc), so that Ansible modules run in the guest through the guest agent. Packages are
fetched with `apt-get download` and unpacked with `dpkg -x` in a temporary directory: nothing is
installed on this machine. The result goes to /var/lib/lockstep-lab/cache/guest-image/
(vmlinuz, initrd.img, manifest.json) and is rebuilt only when its inputs change: the candidate
versions of the packages, or this script.

The guest boots through <kernel>/<initrd>/<cmdline> under software emulation (domain type
`qemu`), fits in 128 MiB, and its /init loads the virtio modules, links the agent's port,
and runs qemu-ga (respawned unless /run/qemu-ga.hold exists). Logs go to stderr.
"""

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from xml.sax.saxutils import escape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labpaths import CACHE_DIR

IMAGE_DIR = os.path.join(CACHE_DIR, "guest-image")
DEB_CACHE = os.path.join(CACHE_DIR, "debs")

AGENT_CHANNEL = "org.qemu.guest_agent.0"
MEMORY_MIB = 128
CMDLINE = "console=ttyS0 rootfstype=ramfs quiet panic=-1"
MULTIARCH = "x86_64-linux-gnu"

# What goes in: the kernel comes through its metapackage, the rest by name; library
# dependencies (packages named lib* or zlib*) are followed so their shared objects can be picked.
KERNEL_META = "linux-image-cloud-amd64"
ROOT_PACKAGES = ["busybox-static", "qemu-guest-agent", "python3.11-minimal", "libpython3.11-minimal",
                 "libpython3.11-stdlib"]  # fmt: skip
# Kernel modules /init loads, in this order (dependencies are added before their users).
MODULES = ["virtio_pci", "virtio_console", "virtio_blk", "virtio-rng"]
# Standard library parts a managed guest never needs.
STDLIB_SKIP_DIRS = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
                    "__pycache__", "site-packages", "dist-packages"}  # fmt: skip
STDLIB_SKIP_PREFIX = ("config-3",)
DYNLOAD_SKIP = ("_tkinter", "_dbm", "_gdbm", "_curses", "_curses_panel", "readline", "_sqlite3", "_ssl",
                "_hashlib")  # fmt: skip


def log(msg, *args):
    sys.stderr.write("guest-image: " + (msg % args if args else msg) + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- package resolution


def apt_show(names):
    """Candidate version, dependencies and file name of each package (apt-cache show)."""
    res = subprocess.run(
        ["apt-cache", "show", "--no-all-versions"] + sorted(names), capture_output=True, text=True, check=True
    )
    info = {}
    for block in res.stdout.strip().split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith(" ") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _sep, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            info[fields["Package"]] = fields
    missing = set(names) - set(info)
    if missing:
        raise SystemExit("guest-image: no candidate for package(s): {}".format(", ".join(sorted(missing))))
    return info


def depends_of(fields):
    """First alternative of every Depends/Pre-Depends entry, without version constraints."""
    out = []
    for key in ("Pre-Depends", "Depends"):
        for entry in fields.get(key, "").split(","):
            first = entry.split("|")[0].strip()
            name = re.split(r"[\s(:]", first, maxsplit=1)[0] if first else ""
            if name:
                out.append(name)
    return out


def resolve_packages():
    """{package: fields} for the kernel, the root packages and their lib* dependencies."""
    meta = apt_show([KERNEL_META])[KERNEL_META]
    kernel = [d for d in depends_of(meta) if d.startswith("linux-image-")][0]
    wanted, queue, info = set(), [kernel] + ROOT_PACKAGES, {}
    while queue:
        batch = sorted(set(queue) - wanted)
        queue = []
        if not batch:
            break
        wanted.update(batch)
        shown = apt_show(batch)
        info.update(shown)
        for name in batch:
            if name == kernel:
                continue
            queue += [d for d in depends_of(shown[name]) if d.startswith(("lib", "zlib")) and d not in wanted]
    return kernel, info


def still_current(manifest):
    """One apt-cache call: same script, same kernel, and the same candidate version of every package.

    The same versions have the same dependencies, so the full resolution is not needed again.
    """
    packages = manifest.get("packages") or {}
    if manifest.get("script_sha256") != script_hash() or not packages:
        return False
    try:
        shown = apt_show(list(packages) + [KERNEL_META])
    except (SystemExit, subprocess.CalledProcessError):
        return False
    kernel = [d for d in depends_of(shown.pop(KERNEL_META)) if d.startswith("linux-image-")]
    if not kernel or "linux-image-" + manifest.get("kernel_version", "") != kernel[0]:
        return False
    return all(shown.get(name, {}).get("Version") == version for name, version in packages.items())


def script_hash():
    with open(os.path.abspath(__file__), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def input_key(info):
    h = hashlib.sha256()
    for name in sorted(info):
        h.update("{}={}\n".format(name, info[name]["Version"]).encode())
    h.update(script_hash().encode())
    return h.hexdigest()


def download(info, dest):
    """The .deb of each package (candidate version), kept in the lab's cache between builds."""
    os.makedirs(dest, exist_ok=True)
    paths, fetch = {}, []
    for name, fields in info.items():
        path = os.path.join(dest, os.path.basename(fields["Filename"]))
        paths[name] = path
        if not (os.path.exists(path) and sha256_file(path) == fields.get("SHA256")):
            fetch.append("{}={}".format(name, fields["Version"]))
    if fetch:
        log("downloading %d package(s)", len(fetch))
        with tempfile.TemporaryDirectory(prefix="debs-", dir=dest) as tmp:
            subprocess.run(
                ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download"] + fetch,
                cwd=tmp,
                check=True,
                stdout=sys.stderr,
            )
            for entry in os.listdir(tmp):
                os.replace(os.path.join(tmp, entry), os.path.join(dest, entry))
    for name, path in paths.items():
        if not os.path.exists(path):
            # apt-get names files with the epoch escaped (1%3a...); the index has no epoch
            cands = [e for e in os.listdir(dest) if e.startswith(name + "_") and e.endswith("_amd64.deb")]
            cands = [os.path.join(dest, e) for e in cands if sha256_file(os.path.join(dest, e)) == info[name]["SHA256"]]
            if not cands:
                raise SystemExit("guest-image: {} was not downloaded".format(name))
            os.replace(cands[0], path)
    keep = set(os.path.basename(p) for p in paths.values())
    for entry in os.listdir(dest):
        if entry.endswith(".deb") and entry not in keep:
            os.unlink(os.path.join(dest, entry))
    return paths


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- ELF and the root tree


def elf_needed(path):
    """DT_NEEDED entries of an ELF64 little-endian file ([] for a static or non-ELF file)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)  # fmt: skip
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed = []
    for sec in sections:
        if sec[1] != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[sec[6]]
        stroff = strtab[4]
        for off in range(sec[4], sec[4] + sec[5], 16):
            tag, val = struct.unpack_from("<qQ", data, off)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", stroff + val)
                needed.append(data[stroff + val : end].decode())
    return needed


def usr_path(rel):
    """Where a staged path lands in the merged-/usr root (/lib/x -> /usr/lib/x, ...)."""
    rel = rel.lstrip("./")
    for top in ("bin/", "sbin/", "lib/", "lib64/"):
        if rel.startswith(top):
            return "usr/" + rel
    return rel


class Root:
    """The initramfs tree, kept as a dict of entries written straight into a newc cpio."""

    def __init__(self):
        self.entries = {}  # path -> (mode, data or link target, rdev)

    def dir(self, path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in self.entries:
                self.entries[sub] = (stat.S_IFDIR | mode, b"", 0)

    def file(self, path, data, mode=0o644):
        path = path.strip("/")
        if "/" in path:
            self.dir(os.path.dirname(path))
        self.entries[path] = (stat.S_IFREG | mode, data, 0)

    def symlink(self, path, target):
        path = path.strip("/")
        if "/" in path:
            self.dir(os.path.dirname(path))
        self.entries.setdefault(path, (stat.S_IFLNK | 0o777, target.encode(), 0))

    def chardev(self, path, major, minor, mode=0o600):
        self.entries[path.strip("/")] = (stat.S_IFCHR | mode, b"", (major, minor))

    def size(self):
        return sum(len(e[1]) for e in self.entries.values() if stat.S_ISREG(e[0]))

    def cpio(self):
        out = io.BytesIO()
        ino = 1
        for path in sorted(self.entries, key=lambda p: (p.count("/"), p)) + ["TRAILER!!!"]:
            mode, data, rdev = self.entries.get(path, (0, b"", 0))
            major, minor = rdev if rdev else (0, 0)
            name = path.encode() + b"\0"
            nlink = 2 if stat.S_ISDIR(mode) else 1
            fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(name), 0)
            out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name)
            out.write(b"\0" * (-(110 + len(name)) % 4))
            out.write(data)
            out.write(b"\0" * (-len(data) % 4))
            ino += 1
        return out.getvalue()


INIT = r"""#!/bin/sh
# lockstep lab guest: mount the kernel's filesystems, load virtio, run the QEMU guest agent.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=linux
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /dev/virtio-ports /run /tmp /var/tmp /root
mount -t devpts devpts /dev/pts
chmod 1777 /tmp /var/tmp
hostname -F /etc/hostname
ip link set lo up 2>/dev/null
for m in $(cat /etc/modules-load); do
    insmod /lib/modules/$m.ko || echo "lockstep-guest: insmod $m failed" >/dev/console
done
i=0
while [ $i -lt 200 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ -r "$p/name" ] || continue
        n=$(cat "$p/name")
        [ -n "$n" ] && ln -sf "../${p##*/}" "/dev/virtio-ports/$n"
    done
    [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ] && break
    i=$((i + 1))
    sleep 0.05
done
echo "lockstep-guest: up $(cut -d' ' -f1 /proc/uptime)s, starting qemu-ga" >/dev/console
while :; do
    if [ ! -e /run/qemu-ga.hold ]; then
        qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run -f /run/qemu-ga.pid
    fi
    sleep 1
done
"""

SHUTDOWN = r"""#!/bin/sh
# qemu-ga runs `shutdown -h|-P|-r|-H +0 "message"`: read every argument, then act at once.
action=poweroff
for a in "$@"; do
    case "$a" in
        -r) action=reboot ;;
        -H) action=halt ;;
        -h|-P) action=poweroff ;;
    esac
done
sync
exec "$action" -f
"""


def build_root(stage, kernel_version):
    root = Root()
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "proc", "sys", "dev", "run", "tmp",
              "var/tmp", "root", "mnt"):  # fmt: skip
        root.dir(d)
    for top in ("bin", "sbin", "lib", "lib64"):
        root.symlink(top, "usr/" + top)
    root.symlink("var/run", "../run")
    root.chardev("dev/console", 5, 1)
    root.chardev("dev/null", 1, 3, 0o666)

    def stage_read(rel):
        with open(os.path.join(stage, rel), "rb") as fh:
            return fh.read()

    def add_staged(rel, mode=None):
        full = os.path.join(stage, rel)
        st = os.stat(full)
        root.file(usr_path(rel), stage_read(rel), mode if mode is not None else stat.S_IMODE(st.st_mode))

    # busybox and its applets
    add_staged("bin/busybox", 0o755)
    applets = subprocess.run(
        [os.path.join(stage, "bin/busybox"), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        dest = usr_path(applet)
        if dest != "usr/bin/busybox":
            root.symlink(dest, "/usr/bin/busybox")

    # qemu-ga, python3.11 and the shared objects they need
    elves = ["usr/sbin/qemu-ga", "usr/bin/python3.11"]
    add_staged("usr/sbin/qemu-ga", 0o755)
    add_staged("usr/bin/python3.11", 0o755)
    root.symlink("usr/bin/python3", "python3.11")
    root.symlink("usr/bin/python", "python3.11")
    dynload = "usr/lib/python3.11/lib-dynload"
    for entry in sorted(os.listdir(os.path.join(stage, dynload))):
        if entry.split(".")[0] in DYNLOAD_SKIP:
            continue
        add_staged(os.path.join(dynload, entry), 0o644)
        elves.append(os.path.join(dynload, entry))
    libdirs = ["lib/" + MULTIARCH, "usr/lib/" + MULTIARCH, "lib64", "usr/lib", "lib"]
    seen, queue = set(), list(elves)
    while queue:
        rel = queue.pop()
        for soname in elf_needed(os.path.join(stage, rel)):
            if soname in seen:
                continue
            seen.add(soname)
            found = next((d + "/" + soname for d in libdirs if os.path.exists(os.path.join(stage, d, soname))), None)
            if not found:
                raise SystemExit("guest-image: {} needs {}, found in no package".format(rel, soname))
            real = os.path.realpath(os.path.join(stage, found))
            root.file(usr_path(found), open(real, "rb").read(), 0o755)
            queue.append(os.path.relpath(real, stage))
    ldso = "lib64/ld-linux-x86-64.so.2"
    root.file(usr_path(ldso), open(os.path.realpath(os.path.join(stage, ldso)), "rb").read(), 0o755)
    root.symlink("usr/lib/{}/ld-linux-x86-64.so.2".format(MULTIARCH), "/lib64/ld-linux-x86-64.so.2")

    # the standard library: a landmark os.py, lib-dynload, everything else zipped as .pyc
    root.file("usr/lib/python3.11/os.py", stage_read("usr/lib/python3.11/os.py"))
    root.file("usr/lib/python311.zip", stdlib_zip(stage))

    # kernel modules, dependencies first
    moddir = "lib/modules/{}".format(kernel_version)
    index = {}
    for dirpath, _dirs, files in os.walk(os.path.join(stage, moddir)):
        for f in files:
            if f.endswith(".ko"):
                index[f[:-3].replace("-", "_")] = os.path.join(dirpath, f)
    order = []

    def want(mod):
        key = mod.replace("-", "_")
        if key in order:
            return
        with open(index[key], "rb") as fh:
            data = fh.read()
        m = re.search(rb"depends=([^\0]*)\0", data)
        for dep in m.group(1).decode().split(",") if m and m.group(1) else []:
            want(dep)
        order.append(key)
        root.file("usr/lib/modules/{}.ko".format(key), data)

    for mod in MODULES:
        want(mod)
    root.file("etc/modules-load", ("\n".join(order) + "\n").encode())

    # init, the shutdown shim and a little of /etc
    root.file("init", INIT.encode(), 0o755)
    for path in ("usr/sbin/shutdown", "sbin/shutdown"):
        root.entries.pop(path, None)
    root.file("usr/sbin/shutdown", SHUTDOWN.encode(), 0o755)
    root.file("etc/hostname", b"lockstep-guest\n")
    root.file("etc/hosts", b"127.0.0.1 localhost lockstep-guest\n::1 localhost\n")
    root.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    root.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    root.file("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o600)
    root.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\nhosts: files\n")
    root.file("etc/os-release", b'PRETTY_NAME="lockstep lab guest (Debian 12 packages)"\nID=debian\nVERSION_ID="12"\n')
    root.file("etc/debian_version", stage_read("etc/debian_version") if os.path.exists(
        os.path.join(stage, "etc/debian_version")) else b"12\n")  # fmt: skip
    root.file("etc/profile", b"export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8\n")
    return root, order


STDLIB_ZIPPER = r"""
import importlib.util, os, sys, zipfile
src, out = sys.argv[1], sys.argv[2]
skip_dirs = set(sys.argv[3].split(",")); skip_prefix = tuple(sys.argv[4].split(","))
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
    for dirpath, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith(skip_prefix)
                         and d != "lib-dynload")
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)
            with open(path, "rb") as fh:
                source = fh.read()
            try:
                code = compile(source, "/usr/lib/python3.11/" + rel, "exec", dont_inherit=True, optimize=0)
            except SyntaxError:
                continue
            data = importlib._bootstrap_external._code_to_hash_pyc(
                code, importlib.util.source_hash(source), checked=False)
            info = zipfile.ZipInfo(rel + "c", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, bytes(data))
"""


def stdlib_zip(stage):
    """The standard library as .pyc in a zip, compiled by the guest's own interpreter."""
    with tempfile.TemporaryDirectory(prefix="stdlib-") as tmp:
        out = os.path.join(tmp, "python311.zip")
        libpath = ":".join(os.path.join(stage, d) for d in ("lib/" + MULTIARCH, "usr/lib/" + MULTIARCH))
        argv = [
            os.path.join(stage, "lib64/ld-linux-x86-64.so.2"),
            "--library-path",
            libpath,
            os.path.join(stage, "usr/bin/python3.11"),
            "-I",
            "-S",
            "-c",
            STDLIB_ZIPPER,
            os.path.join(stage, "usr/lib/python3.11"),
            out,
            ",".join(sorted(STDLIB_SKIP_DIRS)),
            ",".join(STDLIB_SKIP_PREFIX),
        ]
        env = {"PYTHONHOME": os.path.join(stage, "usr"), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        subprocess.run(argv, check=True, env=env)
        with open(out, "rb") as fh:
            return fh.read()


def compress(data):
    """zstd when the tool is there (fast to unpack), else xz with a 1 MiB dictionary."""
    zstd = shutil.which("zstd")
    if zstd:
        res = subprocess.run([zstd, "-q", "-19", "-c", "-T0"], input=data, capture_output=True, check=True)
        return res.stdout, "zstd -19"
    # the dictionary must stay small: the kernel unpacks with a bounded buffer
    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}
    filters = [{"id": lzma.FILTER_X86}, lzma2]
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters), "xz (crc32, 1 MiB)"


# ---------------------------------------------------------------- build and cache


def read_manifest(directory=IMAGE_DIR):
    try:
        with open(os.path.join(directory, "manifest.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def image_ready(directory=IMAGE_DIR):
    m = read_manifest(directory)
    return bool(m) and all(os.path.exists(os.path.join(directory, f)) for f in ("vmlinuz", "initrd.img"))


class BuildFailed(SystemExit):
    """A build that could not finish, naming its step and, where one is to blame, the package."""


@contextlib.contextmanager
def build_step(step, package=None):
    try:
        yield
    except BuildFailed:
        raise
    except (SystemExit, OSError, subprocess.CalledProcessError, ValueError, KeyError) as exc:
        detail = str(exc)
        if isinstance(exc, subprocess.CalledProcessError):
            detail = "{} exited {}: {}".format(exc.cmd[0], exc.returncode, (exc.stderr or "").strip()[-500:])
        where = "{} ({})".format(step, package) if package else step
        raise BuildFailed(
            "guest-image: step '{}' failed: {}".format(where, detail.replace("guest-image: ", ""))
        ) from exc


def build(force=False, directory=IMAGE_DIR):
    """Build the image unless an identical one is there; return the manifest."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(CACHE_DIR, ".guest-image.lock"), "w") as lockfh:
        fcntl.flock(lockfh, fcntl.LOCK_EX)
        current = read_manifest(directory)
        if not force and image_ready(directory) and still_current(current):
            log("up to date (%s)", current["input_key"][:12])
            return current
        with build_step("resolve packages"):
            kernel_pkg, info = resolve_packages()
        key = input_key(info)
        current = read_manifest(directory)
        if not force and image_ready(directory) and current.get("input_key") == key:
            log("up to date (%s)", key[:12])
            return current
        started = time.monotonic()
        log("building: %d packages, kernel %s", len(info), kernel_pkg)
        with build_step("download"):
            debs = download(info, DEB_CACHE)
        with tempfile.TemporaryDirectory(prefix="guest-image-") as tmp:
            stage = os.path.join(tmp, "stage")
            os.makedirs(stage)
            for name in sorted(debs):
                with build_step("unpack", package=name):
                    subprocess.run(["dpkg", "-x", debs[name], stage], check=True, capture_output=True, text=True)
            kernel_version = kernel_pkg[len("linux-image-") :]
            with build_step("assemble the root", package=kernel_pkg):
                root, modules = build_root(stage, kernel_version)
                raw = root.cpio()
            with build_step("compress the initramfs"):
                initrd, method = compress(raw)
            with build_step("read the kernel", package=kernel_pkg):
                with open(os.path.join(stage, "boot", "vmlinuz-" + kernel_version), "rb") as fh:
                    vmlinuz = fh.read()
        for fname, data in (("vmlinuz", vmlinuz), ("initrd.img", initrd)):
            tmpname = os.path.join(directory, "." + fname + ".new")
            with open(tmpname, "wb") as fh:
                fh.write(data)
            os.replace(tmpname, os.path.join(directory, fname))
        manifest = {
            "input_key": key,
            "script_sha256": script_hash(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
            "kernel_version": kernel_version,
            "cmdline": CMDLINE,
            "memory_mib": MEMORY_MIB,
            "agent_channel": AGENT_CHANNEL,
            "compression": method,
            "modules": modules,
            "initrd_bytes": len(initrd),
            "initrd_unpacked_bytes": len(raw),
            "initrd_files": len(root.entries),
            "vmlinuz_bytes": len(vmlinuz),
            "packages": {name: info[name]["Version"] for name in sorted(info)},
        }
        tmpname = os.path.join(directory, ".manifest.json.new")
        with open(tmpname, "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmpname, os.path.join(directory, "manifest.json"))
        log(
            "built in %.1fs: initrd %.1f MiB (%s; %.1f MiB unpacked), kernel %.1f MiB",
            manifest["build_seconds"],
            len(initrd) / 2**20,
            method,
            len(raw) / 2**20,
            len(vmlinuz) / 2**20,
        )
        return manifest


# ---------------------------------------------------------------- the domain


def domain_xml(name, directory=IMAGE_DIR, memory_mib=MEMORY_MIB, vcpus=1, disk=None, domain_type="qemu",
               console_log=None, cmdline=None, uuid=None):  # fmt: skip
    """Domain XML of a guest booting the lab image: direct kernel boot, agent channel, ACPI.

    disk: an optional qcow2 (or raw, by extension) path attached as virtio vda.
    console_log: an optional file (on the hypervisor) that receives the serial console.
    """
    manifest = read_manifest(directory) or {}
    cmdline = cmdline or manifest.get("cmdline", CMDLINE)
    devices = []
    if disk:
        fmt = "raw" if disk.endswith((".raw", ".img")) else "qcow2"
        devices.append(
            "<disk type='file' device='disk'><driver name='qemu' type='{}' cache='none'/>"
            "<source file='{}'/><target dev='vda' bus='virtio'/></disk>".format(fmt, escape(disk))
        )
    log_el = "<log file='{}' append='off'/>".format(escape(console_log)) if console_log else ""
    devices += [
        "<serial type='pty'>{}<target port='0'/></serial>".format(log_el),
        "<console type='pty'><target type='serial' port='0'/></console>",
        "<channel type='unix'><target type='virtio' name='{}'/></channel>".format(AGENT_CHANNEL),
        "<memballoon model='none'/>",
    ]
    uuid_el = "<uuid>{}</uuid>".format(uuid) if uuid else ""
    return (
        "<domain type='{type}'>\n  <name>{name}</name>{uuid}\n"
        "  <memory unit='MiB'>{mem}</memory>\n  <vcpu>{vcpus}</vcpu>\n"
        "  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n"
        "    <kernel>{kernel}</kernel>\n    <initrd>{initrd}</initrd>\n    <cmdline>{cmdline}</cmdline>\n  </os>\n"
        "  <features><acpi/></features>\n"
        "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n"
        "  <devices>\n    {devices}\n  </devices>\n</domain>\n"
    ).format(
        type=domain_type,
        name=escape(name),
        uuid=uuid_el,
        mem=int(memory_mib),
        vcpus=int(vcpus),
        kernel=escape(os.path.join(directory, "vmlinuz")),
        initrd=escape(os.path.join(directory, "initrd.img")),
        cmdline=escape(cmdline),
        devices="\n    ".join(devices),
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "xml":
        p = argparse.ArgumentParser(prog="guest_image.py xml", description="print a guest's domain XML")
        p.add_argument("name")
        p.add_argument("--disk")
        p.add_argument("--memory", type=int, default=MEMORY_MIB, help="MiB (default %(default)s)")
        p.add_argument("--type", default="qemu", help="domain type (default %(default)s: software emulation)")
        p.add_argument("--console-log")
        a = p.parse_args(argv[1:])
        sys.stdout.write(
            domain_xml(a.name, disk=a.disk, memory_mib=a.memory, domain_type=a.type, console_log=a.console_log)
        )
        return 0
    p = argparse.ArgumentParser(prog="guest_image.py", description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--force", action="store_true", help="rebuild even if the cached image is current")
    p.add_argument("--output", default=IMAGE_DIR, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    build(force=a.force, directory=a.output)
    print(a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
