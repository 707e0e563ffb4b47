"""Shared by the migrate and convergence integration tests: lab guests with a disk lease and a VM lease,
the module call, fault injection and the assertions on where the guest runs and who holds its leases.

``Guest`` is the 32 MiB BIOS-only guest (SeaBIOS idles); ``LinuxGuest`` boots the lab's Linux image
(tests/lab/guest_image.py, 128 MiB, software emulation) and runs programs through its guest agent,
for example a load that dirties memory faster than a capped migration link can copy it.
"""

import hashlib
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import libvirt
from labkit import LAB, REPO, define_and_start, linux_image, lock_holder, tiny_domain_xml

sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
import guest_image

MODULE = "lockstep.virt.migrate"
# A successful handoff with QEMU and events, ordered by when each thing happened (checkpoint ``at``).
SUCCESS_ORDER = [
    "begin/inquire",
    "prepare/register",
    "perform/source_released",
    "perform/send",
    "finish/resumed",
    "finish/dest_acquired",
    "confirm/source_stopped",
]
MIGRATION_PORTS = "49152:49215"
BOOT_TIMEOUT = 120


# the lab's lockspace for explicit <lease> elements (lab up --lock-manager sanlock)
SANLOCK_VM_LOCKSPACE = "lockstep_vm"


def lease_xml(key, lockspace_dir):
    return "<lease><lockspace>{}</lockspace><key>{}</key><target path='{}'/></lease>".format(
        os.path.basename(lockspace_dir), key, os.path.dirname(lockspace_dir)
    )


def sanlock_lease_xml(key, lease_file):
    return "<lease><lockspace>{}</lockspace><key>{}</key><target path='{}' offset='0'/></lease>".format(
        SANLOCK_VM_LOCKSPACE, key, lease_file
    )


def auto_disk_lease(lab, path):
    """The lease file of the lock manager's automatic lease on the disk ``path``: virtlockd's
    ``<lockspace_dir>/<sha256 of the path>``, or sanlock's ``<disk_lease_dir>/<md5 of the path>`` (libvirt's
    lockspace ``__LIBVIRT__DISKS__``)."""
    if lab.lock_manager == "sanlock":
        return os.path.join(lab.sanlock["disk_lease_dir"], hashlib.md5(path.encode()).hexdigest())
    return os.path.join(lab.lockspace_dir, hashlib.sha256(path.encode()).hexdigest())


class Guest:
    """A guest on ``host`` with a qcow2 disk on the shared directory (a disk lease) and a VM lease, for the
    lab's lock manager: on lockd the disk lease is virtlockd's file ``<lockspace_dir>/<sha256 of the path>``
    and the VM lease ``<lockspace_dir>/<key>``; on sanlock the disk lease is libvirt's automatic one
    (``<disk_lease_dir>/<md5 of the path>``, lockspace ``__LIBVIRT__DISKS__``) and the VM lease an explicit
    ``<lease>`` in the lab's lockspace ``lockstep_vm``, its lease area made with ``sanlock direct init``.

    ``holders()`` reads each lease's holder as ``lab.lease_holder`` does (virtlockd's pid, or on sanlock the
    owner host from the lease area), comparable with ``lab.lease_holder_of(host)``."""

    def __init__(self, lab, name, host):
        self.lab = lab
        self.name = name
        self.host = host
        self.sanlock = lab.lock_manager == "sanlock"
        self.disk = lab.new_disk(name)
        self.key = name + "-lease"
        if self.sanlock:
            self.lockspace = SANLOCK_VM_LOCKSPACE
            self.vm_lease = os.path.join(lab.sanlock["vm_lease_dir"], self.key)
            with open(self.vm_lease, "wb") as fh:
                fh.truncate(1024 * 1024)
            spec = "{}:{}:{}:0".format(SANLOCK_VM_LOCKSPACE, self.key, self.vm_lease)
            lab.exec(host, "sanlock", "direct", "init", "-r", spec)
        else:
            self.vm_lease = lab.lease_file(self.key)
        self.disk_lease = auto_disk_lease(lab, self.disk)
        self.leases = [self.disk_lease, self.vm_lease]
        # sanlock's names of the two leases, as `sanlock client status` lists them
        self.resources = [
            ("__LIBVIRT__DISKS__", os.path.basename(self.disk_lease)),
            (SANLOCK_VM_LOCKSPACE, self.key),
        ]
        res = define_and_start(lab, host, self.domain_xml())
        assert res.returncode == 0, res.stderr

    def lease_element(self):
        if self.sanlock:
            return sanlock_lease_xml(self.key, self.vm_lease)
        return lease_xml(self.key, self.lab.lockspace_dir)

    def domain_xml(self):
        xml = tiny_domain_xml(self.name, disk=self.disk)
        return xml.replace("<devices>", "<devices>" + self.lease_element(), 1)

    def holders(self):
        return [self.lab.lease_holder(p) for p in self.leases]

    def daemon_holders(self):
        """sanlock only: which host's daemon lists each of the two leases (``sanlock client status`` on every
        locked host), [disk, VM], each a host name, None, or the hosts joined by '+' when several list it."""
        held = dict((h, self.lab.sanlock_held(h)) for h in self.lab.hosts)
        out = []
        for res in self.resources:
            hosts = [h for h in self.lab.hosts if res in held[h]]
            out.append("+".join(hosts) if hosts else None)
        return out

    def remove(self):
        self.lab.cleanup_domain(self.name)
        paths = [self.disk, self.vm_lease] + ([self.disk_lease] if self.sanlock else [])
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)


class LinuxGuest(Guest):
    """The lab's Linux image (128 MiB, qemu-guest-agent, python3) with the same two leases."""

    def __init__(self, lab, name, host, memory_mib=guest_image.MEMORY_MIB):
        self.memory_mib = memory_mib
        super().__init__(lab, name, host)
        self.wait_agent()

    def domain_xml(self):
        # init_on_free: memory the guest freed (its unpacked initramfs archive, the boot loader's copies) is
        # zero, so the first pass of a migration sends only what the guest uses
        cmdline = linux_image().get("cmdline", guest_image.CMDLINE) + " init_on_free=1"
        xml = guest_image.domain_xml(self.name, disk=self.disk, memory_mib=self.memory_mib, cmdline=cmdline)
        return xml.replace("<devices>", "<devices>\n    " + self.lease_element(), 1)

    def agent(self, command, host=None, timeout=10, check=True):
        """One agent command; with ``check``, retried for a while when the agent is not connected yet (it
        reconnects after a migration, and may answer a ping before it takes commands)."""
        deadline = time.monotonic() + (30 if check else 0)
        while True:
            try:
                return self.lab.agent(host or self.host, self.name, command, timeout=timeout)
            except libvirt.libvirtError as exc:
                if not check:
                    return None
                if "agent" not in str(exc).lower() or time.monotonic() > deadline:
                    raise AssertionError("{} on {}: {}".format(command, host or self.host, exc)) from exc
            time.sleep(0.25)

    def wait_agent(self, host=None, timeout=BOOT_TIMEOUT):
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.agent({"execute": "guest-ping"}, host=host, timeout=5, check=False) is not None:
                return time.monotonic() - started
            time.sleep(0.25)
        raise AssertionError("{} did not answer guest-ping within {}s".format(self.name, timeout))

    def spawn(self, argv, host=None):
        """Start a program in the guest (guest-exec) without waiting for it; returns its pid."""
        cmd = {"execute": "guest-exec", "arguments": {"path": argv[0], "arg": list(argv[1:])}}
        return self.agent(cmd, host=host)["pid"]

    def dirty_memory(self, mib, host=None):
        """A python3 loop in the guest that fills a fresh ``mib`` MiB buffer, 1 MiB at a time, forever.

        Each pass maps new pages and unmaps them after (mmap, not the heap, which would reuse them): under
        software emulation a page that stays mapped is only seen dirty again once its TLB entry is refilled,
        so rewriting one buffer in place would hardly dirty anything the migration can see. The migration's
        dirty set stays at about ``mib`` MiB. Returns once the load runs.
        """
        code = (
            "import mmap, os\n"
            "n, ch = {n}, 1 << 20\n"
            "src = b'\\x5a' * ch\n"
            "open('/run/dirtier', 'w').write(str(os.getpid()))\n"
            "while True:\n"
            "    b = mmap.mmap(-1, n)\n"
            "    for o in range(0, n, ch):\n"
            "        b[o:o + ch] = src\n"
            "    b.close()\n"
        ).format(n=mib * 2**20)
        pid = self.spawn(["/usr/bin/python3", "-c", code], host=host)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.exec_status(self.spawn(["/bin/sh", "-c", "test -s /run/dirtier"], host=host), host=host) == 0:
                return pid
            time.sleep(0.25)
        raise AssertionError("the memory load in {} did not start".format(self.name))

    def exec_status(self, pid, host=None, timeout=20):
        """Exit code of a guest-exec'd program, polling guest-exec-status until it exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.agent({"execute": "guest-exec-status", "arguments": {"pid": pid}}, host=host)
            if st.get("exited"):
                return st.get("exitcode")
            time.sleep(0.1)
        raise AssertionError("guest program {} did not exit within {}s".format(pid, timeout))

    def running_pid(self, pid, host=None):
        """Whether the guest still runs process ``pid`` (the load survived the migration)."""
        self.wait_agent(host=host, timeout=60)  # the agent reconnects after a migration (slowly, under load)
        probe = self.spawn(["/bin/sh", "-c", "test -d /proc/{}".format(pid)], host=host)
        return self.exec_status(probe, host=host) == 0


def migrate(lab, src, dst, name, check=False, **kwargs):
    args = {"name": name, "dest_uri": "qemu+ssh://{}/system".format(dst), "unsafe": True}
    args.update(kwargs)
    return lab.module(src, MODULE, args, check=check)


def failed(result):
    """The recorded result of a failed task (the recorder keeps the module's keys: ``msg`` only on failure)."""
    return bool(result.get("failed")) or "msg" in result


def names(result):
    return [c["name"] for c in result["lock_checkpoints"]]


class Sampler:
    """Samples the holders of the guest's lease files every few ms during a run (from the controller)."""

    def __init__(self, paths, every=0.003):
        self.paths = paths
        self.every = every
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(tuple(lock_holder(p) for p in self.paths))
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def max_holders(self):
        return max(len(set(h for h in s if h)) for s in self.samples)


@contextmanager
def blocked_migration_ports(lab, host, target="REJECT", stall=False):
    """Migration ports on ``host`` refused, or with ``stall`` connections accepted but their data dropped."""
    rule = ["INPUT", "-p", "tcp", "--dport", MIGRATION_PORTS] + (["!", "--syn"] if stall else []) + ["-j", target]
    lab.exec(host, "iptables", "-I", *rule)
    try:
        yield
    finally:
        lab.exec(host, "iptables", "-D", *rule, check=False)


def assert_runs_only_on(lab, guest, host, other):
    assert lab.domain_state(host, guest.name) == "running"
    assert lab.domain_state(other, guest.name) in (None, "shut off")
    assert guest.holders() == [lab.lease_holder_of(host)] * 2


def assert_checkpoints_sound(lab, result, src, dst):
    stamps = [c["at"] for c in result["lock_checkpoints"]]
    assert stamps == sorted(stamps), stamps
    allowed = {lab.virtlockd_pid(src), lab.virtlockd_pid(dst)}
    for c in result["lock_checkpoints"]:
        held = set(lease["holder_pid"] for lease in c.get("leases", []) if lease["held"])
        assert len(held) <= 1, c
        assert held <= allowed, c


def assert_handoff_order(result, extra=()):
    """The success checkpoints, each once (besides ``extra`` names), in the order the rules need: the
    destination resumed only after the source released and the guest arrived, its leases probed after."""
    seq = [n for n in names(result) if n not in extra]
    assert sorted(seq) == sorted(SUCCESS_ORDER), seq
    assert seq[0] == "begin/inquire", seq
    for first, then in (
        ("prepare/register", "perform/source_released"),
        ("perform/source_released", "finish/resumed"),
        ("perform/send", "finish/resumed"),
        ("finish/resumed", "finish/dest_acquired"),
    ):
        assert seq.index(first) < seq.index(then), (first, then, seq)


# a process that takes a lease file the instant it is free, through the lab host's own fcntl
GRABBER_HOLDER = r"""
import fcntl, os, sys, time
path, marker, hold, limit = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
fd = os.open(path, os.O_RDWR)
end = time.time() + limit
while True:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0, 0)
        break
    except OSError:
        if time.time() > end or os.path.exists(marker + ".release"):
            sys.exit(3)
        time.sleep(0.002)
with open(marker, "w") as fh:
    fh.write(str(os.getpid()))
stop = time.time() + hold
while time.time() < stop and not os.path.exists(marker + ".release"):
    time.sleep(0.02)
"""


@contextmanager
def _holder(lab, host, name, script, *args):
    """A lease holder on ``host``: ``python3 -c script *args`` (the marker path in place of ``MARKER``) writes
    the marker once it holds its lease and lets go when ``<marker>.release`` appears or its hold ends; the
    marker files are removed."""
    marker = os.path.join(lab.shared_dir, ".grab-{}-{}".format(name, os.getpid()))
    files = (marker, marker + ".release", marker + ".tmp")
    for p in files:
        if os.path.exists(p):
            os.unlink(p)
    argv = [LAB, "exec", host, "--", "python3", "-c", script] + [marker if a is MARKER else a for a in args]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    grab = {"marker": marker, "proc": proc}
    try:
        yield grab
    finally:
        open(marker + ".release", "w").close()
        try:
            proc.wait(timeout=30)
        finally:
            for p in files:
                if os.path.exists(p):
                    os.unlink(p)


MARKER = object()  # where a holder's marker path goes among its arguments


def lease_grabber(lab, host, path, hold, limit=60):
    """A process on ``host`` that takes ``path`` as soon as it is free and keeps it ``hold`` seconds."""
    return _holder(lab, host, os.path.basename(path), GRABBER_HOLDER, path, MARKER, str(hold), str(limit))


# the sanlock counterpart of test_migrate's fcntl holder: registers with the host's sanlock daemon and acquires
# the resource for itself the instant it is free, writes "<pid> <lease version>" to the marker, holds it
SANLOCK_HOLDER = r"""
import os, struct, sys, time
import sanlock
ls, res, path, marker = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3], sys.argv[4]
hold, limit = float(sys.argv[5]), float(sys.argv[6])
fd = sanlock.register()
end = time.time() + limit
while True:
    try:
        sanlock.acquire(ls, res, [(path, 0)], slkfd=fd)
        break
    except sanlock.SanlockException:
        if time.time() > end or os.path.exists(marker + ".release"):
            sys.exit(3)
        time.sleep(0.002)
with open(path, "rb") as fh:
    lver = struct.unpack_from("<Q", fh.read(56), 48)[0]
with open(marker + ".tmp", "w") as fh:
    fh.write("{} {}".format(os.getpid(), lver))
os.rename(marker + ".tmp", marker)
stop = time.time() + hold
while time.time() < stop and not os.path.exists(marker + ".release"):
    time.sleep(0.02)
sanlock.release(ls, res, [(path, 0)], slkfd=fd)
"""


def sanlock_lease_grabber(lab, host, guest, hold, limit=60):
    """A process on ``host`` that acquires the guest's VM lease through ``host``'s sanlock as soon as it is
    free and keeps it ``hold`` seconds."""
    args = (guest.lockspace, guest.key, guest.vm_lease, MARKER, str(hold), str(limit))
    return _holder(lab, host, guest.key, SANLOCK_HOLDER, *args)
