"""Integration fixtures: the lab's real hypervisor hosts, driven through Ansible over SSH.

`lab.module()` runs one module task with ansible-playbook and returns its result dict;
`lab.playbook()` runs a playbook and returns every task result; `lab.exec()` and
`lab.virsh()` look at a host directly, inside its namespaces, to check what the modules did.
"""

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading

import libvirt
import libvirt_qemu
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(REPO, "tests", "lab", "lab")
COLLECTIONS = os.path.join(REPO, ".build", "collections")
VENV_BIN = os.path.join(REPO, ".venv", "bin")
sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
import guest_image  # noqa: E402
from lab import host_argv  # noqa: E402
from labpaths import LAB_ROOT  # noqa: E402

_LINUX_IMAGE = []


def linux_image():
    """The lab's Linux guest image (tests/lab/guest_image.py): built, or checked current, once per run.

    Everything that boots the image gets it through here first, so a fresh machine (no cache) builds it
    before the first guest needs it.  A build that cannot finish fails with its step and package named.
    """
    if not _LINUX_IMAGE:
        _LINUX_IMAGE.append(guest_image.build())
    return _LINUX_IMAGE[0]


SHARED_POOLS = os.path.join(LAB_ROOT, "shared", "pools")


def image_info(path):
    """``qemu-img info`` of an image file (read while a guest may hold it)."""
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def lab_state():
    """The lab's recorded state: hosts, addresses, daemon pids (tests/lab/lab writes it)."""
    with open(os.path.join(LAB_ROOT, "state.json")) as fh:
        return json.load(fh)


class PlaybookRun:
    def __init__(self, rc, stdout, stderr, results):
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.results = results

    def for_host(self, host):
        return [r for r in self.results if r["host"] == host]

    def task(self, name, host=None):
        for r in self.results:
            # tasks of a role are named "<role> : <task>"
            named = r["task"] == name or r["task"].endswith(" : " + name)
            if named and (host is None or r["host"] == host):
                return r["result"]
        raise KeyError("no result for task {!r} (host {}): {}".format(name, host, self.stdout[-3000:]))


# virsh domstate's words for virDomainGetState's states
VIRSH_STATE_WORDS = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "idle",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "in shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


def _quiet(_ctx, _err):
    """libvirt's default handler prints every error; the lab's reads expect some (no such guest, yet)."""


libvirt.registerErrorHandler(_quiet, None)


def libvirt_socket(anchor, read_only=True):
    """A lab host's libvirtd socket as the host's own mount namespace has it, reached from here through the
    host's namespace anchor (``anchor``: its pid)."""
    return "/proc/{}/root/run/libvirt/libvirt-sock{}".format(anchor, "-ro" if read_only else "")


class HostConnections:
    """libvirt connections to each lab host's libvirtd, on the daemon's sockets as the host's own mount
    namespace has them (``/proc/ANCHOR/root/run/libvirt``; the anchor lives as long as the host, whatever its
    libvirtd does). A read this way starts no process: ``virsh`` through ``lab exec`` costs about 0.1 s of
    CPU, and watches and waits read states and ping guest agents many times a second.

    A connection lost to a killed or restarted libvirtd is opened again at the next call."""

    def __init__(self, anchors):
        self._anchors = anchors  # {host: pid of the host's namespace anchor}
        self._conns = {}  # (host, read_only): connection
        self._lock = threading.Lock()

    def _conn(self, host, read_only, fresh):
        with self._lock:
            conn = self._conns.get((host, read_only))
            if conn is not None and not fresh and conn.isAlive():
                return conn
            uri = "qemu+unix:///system?socket=" + libvirt_socket(self._anchors[host], read_only)
            conn = libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)
            self._conns[(host, read_only)] = conn
            return conn

    def call(self, host, name, request, read_only=True):
        """request(domain) for the guest ``name`` on ``host``; raises libvirt.libvirtError. A connection that
        broke (a libvirtd killed or restarted since) is opened again, once."""
        try:
            return request(self._conn(host, read_only, False).lookupByName(name))
        except libvirt.libvirtError:
            conn = self._conns.get((host, read_only))
            if conn is not None and conn.isAlive():
                raise  # libvirtd answered
        return request(self._conn(host, read_only, True).lookupByName(name))

    def ask(self, host, name, request):
        """request(domain), read-only; None when libvirtd has no such guest or does not answer (as virsh)."""
        try:
            return self.call(host, name, request)
        except libvirt.libvirtError:
            return None

    def domain_state(self, host, name):
        """``virsh domstate``: the guest's state in virsh's words, or None."""
        return self.ask(host, name, lambda dom: VIRSH_STATE_WORDS.get(dom.state()[0], "unknown"))

    def job_type(self, host, name):
        """``virsh domjobinfo``'s job type (libvirt.VIR_DOMAIN_JOB_*), or None."""
        return self.ask(host, name, lambda dom: dom.jobInfo()[0])

    def agent_command(self, host, name, command, timeout):
        """``virsh qemu-agent-command``: the guest agent's reply (JSON text); raises libvirt.libvirtError with
        libvirt's message (a guest agent not connected yet, not answering...)."""
        return self.call(host, name, lambda dom: libvirt_qemu.qemuAgentCommand(dom, command, timeout, 0), False)


class Lab:
    def __init__(self, status):
        self.status = status
        self.all_hosts = [h["name"] for h in status["hosts"]]
        self.inventory = status["inventory"]
        self.shared_dir = status["shared_dir"]
        self.lockspace_dir = status["lockspace_dir"]
        self.images_dir = os.path.join(self.shared_dir, "images")
        self.state = lab_state()
        # hosts: those with virtlockd on (inventory group hypervisors); unlocked_hosts: the others
        self.unlocked_hosts = list(self.state.get("unlocked", []))
        self.hosts = [h for h in self.all_hosts if h not in self.unlocked_hosts]
        # lab up --lock-manager: lockd (virtlockd) or sanlock (a sanlock daemon per locked host)
        self.lock_manager = status.get("lock_manager") or self.state.get("lock_manager", "lockd")
        self.sanlock = status.get("sanlock") or self.state.get("sanlock")
        self.sanlock_hosts = dict(
            (h["sanlock_host_id"], h["name"]) for h in status["hosts"] if h.get("sanlock_host_id") is not None
        )
        self.connections = HostConnections(dict((h, info["anchor"]) for h, info in self.state["hosts"].items()))

    # ---- direct access, for checking
    def address(self, host):
        return self.state["hosts"][host]["address"]

    def host_uuid(self, host):
        return self.state["hosts"][host]["host_uuid"]

    def virtlockd_pid(self, host):
        return self.state["hosts"][host]["pids"]["virtlockd"]

    def lease_holder_of(self, host):
        """What a lease held by ``host`` reads as (``lease_holder``): its virtlockd's pid on a lockd lab, the
        host's name on a sanlock lab (the owner host_id of the lease's leader record, named)."""
        return host if self.lock_manager == "sanlock" else self.virtlockd_pid(host)

    def lease_holder(self, path):
        """Who holds the lease in ``path``: virtlockd's pid (F_GETLK) on lockd, the owner host's name on sanlock
        (read from the lease area: the leader record's owner host_id, while its timestamp says held)."""
        if self.lock_manager != "sanlock":
            return lock_holder(path)
        leader = sanlock_leader(path)
        if leader is None or not leader["timestamp"]:
            return None
        return self.sanlock_hosts.get(leader["owner_id"], "host_id {}".format(leader["owner_id"]))

    def sanlock_held(self, host):
        """``sanlock client status`` on ``host``: {(lockspace, resource): (lease path, lver, pid)} of the
        resource leases its daemon holds (the daemon's own view, beside the lease area's)."""
        out = self.exec(host, "sanlock", "client", "status", timeout=30).stdout
        held = {}
        for line in out.splitlines():
            m = re.match(r"^r (\S+?):(\S+?):(\S+):(\d+):(\d+) p (\d+)$", line.strip())
            if m:
                held[(m.group(1), m.group(2))] = (m.group(3), int(m.group(5)), int(m.group(6)))
        return held

    def exec(self, host, *argv, check=True, input=None, timeout=120):
        """``lab exec``, without starting the lab tool each time (the checks run thousands of commands)."""
        res = subprocess.run(
            host_argv(self.state["hosts"][host]["anchor"], argv),
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                "{} on {} failed ({}): {}{}".format(argv, host, res.returncode, res.stdout, res.stderr)
            )
        return res

    def virsh(self, host, *args, check=True):
        return self.exec(host, "virsh", "-q", "-c", "qemu:///system", *args, check=check)

    def agent(self, host, name, command, timeout=libvirt_qemu.VIR_DOMAIN_QEMU_AGENT_COMMAND_DEFAULT):
        """One guest agent command (as ``virsh qemu-agent-command``, ``timeout`` in seconds): the reply's
        ``return`` value; raises libvirt.libvirtError with libvirt's message when the agent does not answer."""
        return json.loads(self.connections.agent_command(host, name, json.dumps(command), timeout))["return"]

    def domain_state(self, host, name):
        """The guest's state on ``host`` as ``virsh domstate`` words it ("running", "shut off"...), or None."""
        return self.connections.domain_state(host, name)

    def ssh(self, host, command, check=True):
        key = os.path.join(os.path.dirname(self.inventory), "ssh", "id_ed25519")
        known = os.path.join(os.path.dirname(self.inventory), "ssh", "known_hosts")
        argv = ["ssh", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        argv += ["-o", "UserKnownHostsFile=" + known, "root@" + self.address(host), command]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if check and res.returncode != 0:
            raise AssertionError("ssh {} {!r} failed: {}".format(host, command, res.stderr))
        return res

    def new_disk(self, name, size="16M"):
        path = os.path.join(self.images_dir, name + ".qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, size], check=True)
        return path

    def lease_file(self, key):
        path = os.path.join(self.lockspace_dir, key)
        if not os.path.exists(path):
            open(path, "a").close()
        return path

    def cleanup_domain(self, name):
        for host in self.all_hosts:
            self.virsh(host, "destroy", name, check=False)
            self.virsh(host, "undefine", "--nvram", name, check=False)

    # ---- Ansible
    def _env(self, record):
        env = dict(os.environ)
        env.update(
            {
                "PATH": VENV_BIN + os.pathsep + env.get("PATH", ""),
                "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
                "ANSIBLE_CALLBACK_PLUGINS": os.path.join(REPO, "tests", "integration", "callback"),
                "ANSIBLE_CALLBACKS_ENABLED": "lab_record",
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "LAB_RECORD_FILE": record,
            }
        )
        return env

    def playbook(self, playbook, check=False, diff=False, extra_vars=None, limit=None, timeout=900, env=None):
        """Run a playbook (a path, or a list of plays) and return every task result. ``env``: more
        environment (a value naming ``{collections}`` gets the lab's collections path in its place)."""
        with tempfile.TemporaryDirectory(prefix="lab-play-") as tmp:
            if not isinstance(playbook, str):
                path = os.path.join(tmp, "play.yml")
                with open(path, "w") as fh:
                    yaml.safe_dump(playbook, fh, sort_keys=False)
                playbook = path
            record = os.path.join(tmp, "record.jsonl")
            argv = ["ansible-playbook", "-i", self.inventory, playbook]
            if check:
                argv.append("--check")
            if diff:
                argv.append("--diff")
            if limit:
                argv += ["--limit", limit]
            if extra_vars:
                argv += ["-e", json.dumps(extra_vars)]
            run_env = self._env(record)
            run_env.update((k, v.format(collections=COLLECTIONS)) for k, v in (env or {}).items())
            res = subprocess.run(
                argv, capture_output=True, text=True, env=run_env, cwd=REPO, timeout=timeout, check=False
            )
            results = []
            if os.path.exists(record):
                with open(record) as fh:
                    results = [json.loads(line) for line in fh]
        return PlaybookRun(res.returncode, res.stdout, res.stderr, results)

    def module(self, host, module, args, check=False, diff=False):
        """Run one module task on one host; return its result dict, with ``failed: true`` when it failed."""
        result, _run = self._module_run(host, module, args, check, diff)
        return result

    def module_fails(self, host, module, args, check=False, diff=False):
        """Run one module task that must fail cleanly (no traceback); return its result."""
        result, run = self._module_run(host, module, args, check, diff)
        assert result.get("failed") is True, result
        assert "Traceback" not in run.stdout + run.stderr, run.stdout[-3000:]
        # ansible-core fills "exception" with a placeholder when the module sent no traceback
        assert "Traceback (most recent call last)" not in str(result.get("exception", "")), result["exception"]
        return result

    def _module_run(self, host, module, args, check, diff):
        play = [{"hosts": host, "gather_facts": False, "tasks": [{"name": "under test", module: args}]}]
        run = self.playbook(play, check=check, diff=diff)
        entries = [r for r in run.results if r["task"] == "under test" and r["host"] == host]
        if not entries:
            raise AssertionError("module did not run: rc={}\n{}\n{}".format(run.rc, run.stdout, run.stderr))
        result = dict(entries[0]["result"])
        if entries[0]["status"] in ("failed", "unreachable"):
            result["failed"] = True  # the callback keeps the status beside the module's own keys
        return result, run

    def adhoc(self, pattern, module, args, timeout=300):
        argv = ["ansible", pattern, "-i", self.inventory, "-m", module, "-a", args]
        return subprocess.run(
            argv, capture_output=True, text=True, env=self._env(os.devnull), cwd=REPO, timeout=timeout, check=False
        )


def lock_holder(path):
    """The pid holding a POSIX write lock on byte 0 of path (as virtlockd takes it), or None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        l_type, _whence, _start, _len, l_pid = struct.unpack("hhqqi", answer)
        return None if l_type == fcntl.F_UNLCK else l_pid
    finally:
        os.close(fd)


# sanlock's leader record at the start of a resource lease (sanlock's leader.h, little-endian): magic, version,
# flags, sector_size, num_hosts, max_hosts, owner_id, owner_generation, lver, space_name[48],
# resource_name[48], timestamp (0: free), ...
SANLOCK_LEADER = struct.Struct("<IIIIQQQQQ48s48sQ")
SANLOCK_PAXOS_MAGIC = 0x06152010


def sanlock_leader(path):
    """The leader record of a sanlock resource lease (offset 0 of ``path``), read from the shared storage as
    any host would: {owner_id, owner_generation, lver, lockspace, resource, timestamp}; None when the file
    is missing or holds no initialised lease."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(SANLOCK_LEADER.size)
    except FileNotFoundError:
        return None
    if len(raw) < SANLOCK_LEADER.size:
        return None
    f = SANLOCK_LEADER.unpack(raw)
    if f[0] != SANLOCK_PAXOS_MAGIC:
        return None
    return {
        "owner_id": f[6],
        "owner_generation": f[7],
        "lver": f[8],
        "lockspace": f[9].rstrip(b"\0").decode(),
        "resource": f[10].rstrip(b"\0").decode(),
        "timestamp": f[11],
    }


def tiny_domain_xml(name, disk=None, lease=None, lockspace_dir=None):
    """A 32 MiB BIOS-only guest: SeaBIOS finds nothing to boot and idles."""
    devices = "<graphics type='vnc' listen='127.0.0.1'/>"
    if disk:
        devices = (
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
            "<source file='{}'/><target dev='vda' bus='virtio'/></disk>".format(disk)
        ) + devices
    if lease:
        devices = (
            "<lease><lockspace>{}</lockspace><key>{}</key><target path='{}'/></lease>".format(
                os.path.basename(lockspace_dir), lease, os.path.dirname(lockspace_dir)
            )
        ) + devices
    return (
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
        "<on_poweroff>destroy</on_poweroff><devices>{}</devices></domain>".format(name, devices)
    )


def define(lab, host, xml):
    """Define ``xml`` on ``host`` (through a file on the shared directory, which every host sees)."""
    with tempfile.NamedTemporaryFile("w", suffix=".xml", dir=lab.shared_dir, delete=False) as fh:
        fh.write(xml)
    try:
        lab.virsh(host, "define", fh.name)
    finally:
        os.unlink(fh.name)


def define_and_start(lab, host, xml):
    define(lab, host, xml)
    name = xml.split("<name>")[1].split("</name>")[0]
    return lab.virsh(host, "start", name, check=False)
