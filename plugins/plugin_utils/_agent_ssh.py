# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reach a hypervisor over SSH (paramiko) and drive a guest's QEMU guest agent through virsh.

Shared by the ``lockstep.virt.guest_agent`` connection plugin and the ``lockstep.virt.libvirt``
inventory plugin; private to the collection.

Two layers, so each can be tested alone:

* :class:`HypervisorSSH` runs a shell command on a hypervisor over one paramiko connection,
  cached per process by (host, port, user, key file, known_hosts file, host key policy).
* :class:`GuestAgent` speaks the guest agent protocol (guest-exec, guest-exec-status,
  guest-file-*) through any object with ``run(command, stdin=None, timeout=None)`` returning
  ``(rc, stdout_bytes, stderr_bytes)`` - the SSH transport in real use, a fake in unit tests.
"""

import base64
import json
import os
import re
import shlex
import threading
import time
import uuid

from ansible.errors import AnsibleConnectionFailure, AnsibleError

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.units import MIB, to_bytes

try:
    import paramiko
except ImportError as exc:  # optional dependency, reported when first needed
    paramiko = None
    PARAMIKO_IMPORT_ERROR = exc
else:
    PARAMIKO_IMPORT_ERROR = None

AGENT_CHANNEL = "org.qemu.guest_agent.0"
# One argument of a command may not exceed 128 KiB on Linux (MAX_ARG_STRLEN), and virsh takes
# the agent command as an argument: keep every JSON request well below that.
WRITE_CHUNK = 48 * 1024
READ_CHUNK = 512 * 1024
INPUT_INLINE_MAX = 48 * 1024
# guest-exec-status polling: first poll after POLL_FIRST s, then x POLL_FACTOR up to POLL_MAX s.
POLL_FIRST = 0.05
POLL_FACTOR = 1.6
POLL_MAX = 1.0


class GuestAgentError(AnsibleConnectionFailure):
    """The guest agent could not be used; the message says why and what to check."""


class AgentNotConnected(GuestAgentError):
    pass


class AgentNotConfigured(GuestAgentError):
    pass


class AgentCommandMissing(GuestAgentError):
    pass


class AgentTimeout(GuestAgentError):
    pass


class DomainNotFound(GuestAgentError):
    pass


class DomainNotRunning(GuestAgentError):
    pass


def missing_paramiko():
    return AnsibleError(
        "lockstep.virt needs the Python library paramiko on the controller to reach hypervisors over SSH "
        "(pip install paramiko, or the distribution's python3-paramiko): {}".format(PARAMIKO_IMPORT_ERROR)
    )


# ---------------------------------------------------------------- SSH to the hypervisor

_CACHE = {}
_CACHE_LOCK = threading.Lock()


class HypervisorSSH:
    """One paramiko SSH connection to a hypervisor; ``run()`` executes a shell command on it."""

    def __init__(
        self,
        host,
        port=22,
        user="root",
        key_file=None,
        password=None,
        known_hosts_file=None,
        host_key_checking=True,
        connect_timeout=10,
    ):
        self.host = host
        self.port = int(port or 22)
        self.user = user or "root"
        self.key_file = os.path.expanduser(key_file) if key_file else None
        self.password = password
        self.known_hosts_file = os.path.expanduser(known_hosts_file) if known_hosts_file else None
        self.host_key_checking = host_key_checking
        self.connect_timeout = float(connect_timeout or 10)
        self.client = None

    @property
    def label(self):
        return "{}@{}:{}".format(self.user, self.host, self.port)

    def connect(self):
        if paramiko is None:
            raise missing_paramiko()
        client = paramiko.SSHClient()
        if self.known_hosts_file and os.path.exists(self.known_hosts_file):
            try:
                client.load_host_keys(self.known_hosts_file)
            except (OSError, paramiko.SSHException) as exc:
                raise AnsibleConnectionFailure(
                    "cannot read known_hosts file {}: {}".format(self.known_hosts_file, exc)
                ) from exc
        elif self.host_key_checking and self.known_hosts_file:
            # the file named does not exist: every key is unknown, and unknown keys are rejected
            pass
        if not self.known_hosts_file:
            try:
                client.load_system_host_keys()
            except (OSError, paramiko.SSHException):
                pass
        # Unknown keys are refused unless checking was turned off; a known host whose key differs
        # is refused by paramiko whatever the policy (BadHostKeyException).
        client.set_missing_host_key_policy(
            paramiko.RejectPolicy() if self.host_key_checking else paramiko.AutoAddPolicy()
        )
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=self.key_file,
                password=self.password,
                look_for_keys=not (self.key_file or self.password),
                allow_agent=not (self.key_file or self.password),
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
            )
        except paramiko.BadHostKeyException as exc:
            raise AnsibleConnectionFailure(
                "host key of hypervisor {} does not match the one in {} (got {} {}): refusing to connect".format(
                    self.label,
                    self.known_hosts_file or "the known_hosts files",
                    exc.key.get_name(),
                    exc.key.get_base64()[:24] + "...",
                )
            ) from exc
        except paramiko.SSHException as exc:
            text = str(exc)
            if "not found in known_hosts" in text:
                raise AnsibleConnectionFailure(
                    "host key of hypervisor {} is unknown ({}): add it to {} or set host_key_checking=false".format(
                        self.label, text, self.known_hosts_file or "~/.ssh/known_hosts"
                    )
                ) from exc
            raise AnsibleConnectionFailure("SSH to hypervisor {} failed: {}".format(self.label, text)) from exc
        except OSError as exc:
            raise AnsibleConnectionFailure("cannot reach hypervisor {}: {}".format(self.label, exc)) from exc
        self.client = client
        return self

    @property
    def active(self):
        transport = self.client.get_transport() if self.client else None
        return bool(transport and transport.is_active())

    def run(self, command, stdin=None, timeout=None):
        """Run a shell command; return (rc, stdout bytes, stderr bytes)."""
        if not self.active:
            self.connect()
        try:
            chan = self.client.get_transport().open_session(timeout=self.connect_timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout if timeout else None
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                    continue
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    continue
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if deadline and time.monotonic() > deadline:
                    chan.close()
                    raise AgentTimeout("command on hypervisor {} did not finish within {}s".format(self.label, timeout))
                chan.status_event.wait(0.01)
            # drain what arrived with the exit status
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            rc = chan.recv_exit_status()
            chan.close()
            return rc, bytes(out), bytes(err)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise AnsibleConnectionFailure("SSH to hypervisor {} broke: {}".format(self.label, exc)) from exc

    def close(self):
        if self.client:
            self.client.close()
            self.client = None


def hypervisor(
    host,
    port=22,
    user="root",
    key_file=None,
    password=None,
    known_hosts_file=None,
    host_key_checking=True,
    connect_timeout=10,
):
    """The cached SSH connection to a hypervisor (one per process and per host/port/user/keys)."""
    # keyed by process too: a connection inherited through fork() (Ansible's workers) is unusable there
    key = (os.getpid(), host, int(port or 22), user or "root", key_file, known_hosts_file, bool(host_key_checking))
    with _CACHE_LOCK:
        conn = _CACHE.get(key)
        if conn is None or not conn.active:
            conn = HypervisorSSH(host, port, user, key_file, password, known_hosts_file, host_key_checking,
                                 connect_timeout)  # fmt: skip
            conn.connect()
            _CACHE[key] = conn
        return conn


def drop_cached(conn):
    with _CACHE_LOCK:
        for key, value in list(_CACHE.items()):
            if value is conn:
                del _CACHE[key]
    conn.close()


def close_all():
    """Close this process's cached connections (forget, without closing, those inherited by fork)."""
    with _CACHE_LOCK:
        for key, conn in list(_CACHE.items()):
            del _CACHE[key]
            if key[0] == os.getpid():
                conn.close()


# ---------------------------------------------------------------- the guest agent through virsh

_ERRORS = [
    (re.compile(r"guest agent is not connected", re.I), AgentNotConnected,
     "the QEMU guest agent of domain {domain} on {where} is not connected: is qemu-ga running in the guest?"),
    (re.compile(r"guest agent is not configured|agent is not configured", re.I), AgentNotConfigured,
     "domain {domain} on {where} has no guest agent channel (virtio-serial " + AGENT_CHANNEL + ")"),
    (re.compile(r"guest agent is not responding|agent not available|timed out", re.I), AgentTimeout,
     "the QEMU guest agent of domain {domain} on {where} did not answer in time"),
    (re.compile(r"command \S*guest-(exec|file)\S* (has been disabled|has not been found|not found)|"
                r"the command \S+ has not been found|is not supported|has been disabled", re.I), AgentCommandMissing,
     "the QEMU guest agent of domain {domain} on {where} does not offer a command this connection needs "
     "(guest-exec or guest-file-*): it is disabled or blocked in qemu-ga's configuration"),
    (re.compile(r"failed to get domain|domain not found|no domain with matching name", re.I), DomainNotFound,
     "domain {domain} not found on {where}"),
    (re.compile(r"domain is not running", re.I), DomainNotRunning,
     "domain {domain} on {where} is not running"),
]  # fmt: skip


def map_error(stderr, domain, where):
    """The GuestAgentError for a failed virsh qemu-agent-command, from its error text."""
    text = stderr.strip()
    for pattern, cls, message in _ERRORS:
        if pattern.search(text):
            return cls("{} ({})".format(message.format(domain=domain, where=where), text))
    return GuestAgentError("guest agent command for domain {} on {} failed: {}".format(domain, where, text))


def b64(data):
    return base64.b64encode(data).decode("ascii")


# The guest cannot be reached through its agent at all (the task is unreachable), as opposed to a
# plain GuestAgentError: the agent answered, but refused one operation (a file it cannot open).
AGENT_UNREACHABLE = (
    AgentNotConnected,
    AgentNotConfigured,
    AgentCommandMissing,
    AgentTimeout,
    DomainNotFound,
    DomainNotRunning,
)


class GuestAgent:
    """The guest agent of one domain, reached through ``transport.run()`` and virsh."""

    def __init__(self, transport, domain, uri="qemu:///system", where=None, command_timeout=120):
        self.transport = transport
        self.domain = domain
        self.uri = uri or "qemu:///system"
        self.where = where or getattr(transport, "label", "the hypervisor")
        self.command_timeout = float(command_timeout or 120)
        self.sleep = time.sleep
        self.clock = time.monotonic

    # -- one agent command
    def virsh_command(self, request, agent_timeout):
        """The shell command that runs one agent request through virsh on the hypervisor."""
        return "virsh -c {} qemu-agent-command --timeout {} {} {}".format(
            shlex.quote(self.uri),
            max(1, int(agent_timeout)),
            shlex.quote(self.domain),
            shlex.quote(json.dumps(request, separators=(",", ":"))),
        )

    def call(self, execute, arguments=None, timeout=None):
        """Run one agent command; return its ``return`` value or raise GuestAgentError."""
        request = {"execute": execute}
        if arguments is not None:
            request["arguments"] = arguments
        timeout = float(timeout or min(self.command_timeout, 30))
        rc, out, err = self.transport.run(self.virsh_command(request, timeout), timeout=timeout + 15)
        if rc == 127:
            raise GuestAgentError("virsh not found on {}: install libvirt's client tools there".format(self.where))
        if rc != 0:
            raise map_error(err.decode("utf-8", "replace") or out.decode("utf-8", "replace"), self.domain, self.where)
        try:
            reply = json.loads(out.decode("utf-8"))
        except ValueError as exc:
            raise GuestAgentError(
                "unreadable answer from the guest agent of domain {} on {}: {!r}".format(
                    self.domain, self.where, out[:200]
                )
            ) from exc
        if "error" in reply:
            raise map_error(json.dumps(reply["error"]), self.domain, self.where)
        return reply.get("return")

    # -- commands
    def exec_status(self, pid, timeout):
        deadline = self.clock() + timeout
        delay = POLL_FIRST
        while True:
            self.sleep(delay)
            status = self.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return status
            if self.clock() + delay > deadline:
                raise AgentTimeout(
                    "command in domain {} on {} did not finish within {:g}s (guest pid {} left running)".format(
                        self.domain, self.where, timeout, pid
                    )
                )
            delay = min(delay * POLL_FACTOR, POLL_MAX)

    def execute(self, argv, stdin=None, timeout=None):
        """Run argv in the guest, stdin fed from ``stdin`` bytes; return (rc, stdout, stderr) bytes."""
        timeout = float(timeout or self.command_timeout)
        staged = None
        args = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        if stdin:
            if len(stdin) <= INPUT_INLINE_MAX:
                args["input-data"] = b64(stdin)
            else:
                # too big for one agent request: stage it in a guest file that the command reads
                staged = "/tmp/.lockstep-stdin-{}".format(uuid.uuid4().hex)
                self.write_file(staged, _chunks_of(stdin), mode=0o600)
                args = {
                    "path": "/bin/sh",
                    "arg": ["-c", 'exec 0<"$1" && rm -f "$1" && shift && exec "$@"', "sh", staged] + list(argv),
                    "capture-output": True,
                }
        try:
            pid = self.call("guest-exec", args)["pid"]
        except GuestAgentError:
            if staged:
                self._remove_quietly(staged)
            raise
        status = self.exec_status(pid, timeout)
        out = base64.b64decode(status.get("out-data", ""))
        err = base64.b64decode(status.get("err-data", ""))
        if status.get("out-truncated") or status.get("err-truncated"):
            err += b"\n[lockstep.virt.guest_agent: output truncated by the guest agent]\n"
        if "exitcode" in status:
            rc = status["exitcode"]
        elif "signal" in status:
            rc = 128 + int(status["signal"])
        else:
            rc = -1
        return rc, out, err

    def _remove_quietly(self, path):
        try:
            self.execute(["/bin/rm", "-f", path], timeout=30)
        except GuestAgentError:
            pass

    def write_file(self, path, chunks, mode=None):
        """Write an iterable of byte chunks to a guest file (created or truncated)."""
        handle = self.call("guest-file-open", {"path": path, "mode": "wb"})
        try:
            for chunk in chunks:
                for off in range(0, len(chunk), WRITE_CHUNK):
                    piece = chunk[off : off + WRITE_CHUNK]
                    done = self.call("guest-file-write", {"handle": handle, "buf-b64": b64(piece)})
                    if done.get("count") != len(piece):
                        raise GuestAgentError(
                            "short write to {} in domain {}: {} of {} bytes".format(
                                path, self.domain, done.get("count"), len(piece)
                            )
                        )
        finally:
            self.call("guest-file-close", {"handle": handle})
        if mode is not None:
            rc, _out, err = self.execute(["/bin/chmod", "%o" % mode, path], timeout=30)
            if rc != 0:
                raise GuestAgentError("chmod {} in domain {} failed: {}".format(path, self.domain, err.decode()))

    def read_file(self, path, chunk_size=READ_CHUNK):
        """Yield a guest file's content in chunks."""
        handle = self.call("guest-file-open", {"path": path, "mode": "rb"})
        try:
            while True:
                got = self.call("guest-file-read", {"handle": handle, "count": chunk_size})
                data = base64.b64decode(got.get("buf-b64", ""))
                if data:
                    yield data
                if got.get("eof") or not data:
                    break
        finally:
            self.call("guest-file-close", {"handle": handle})

    def ping(self, timeout=10):
        self.call("guest-ping", timeout=timeout)
        return True


def _chunks_of(data, size=WRITE_CHUNK):
    for off in range(0, len(data), size):
        yield data[off : off + size]


def file_chunks(path, size=WRITE_CHUNK):
    """A local file's content, read in chunks (never whole in memory)."""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(size)
            if not block:
                break
            yield block


# ---------------------------------------------------------------- listing a hypervisor's guests

_MARK = "@@lockstep-domain@@"


def list_domains_command(uri):
    """One shell command printing, for every domain, a marker line with its state, then its XML."""
    quri = shlex.quote(uri or "qemu:///system")
    return (
        "virsh -q -c {uri} list --all --name | while IFS= read -r d; do "
        '[ -n "$d" ] || continue; '
        's=$(virsh -q -c {uri} domstate "$d" 2>/dev/null | head -n 1); '
        'x=$(virsh -q -c {uri} dumpxml "$d" 2>/dev/null) || continue; '
        "printf '%s %s\\n%s\\n' '{mark}' \"$s\" \"$x\"; "
        "done"
    ).format(uri=quri, mark=_MARK)


def parse_domain_listing(text):
    """Guests from list_domains_command()'s output: name, uuid, state, memory, vcpus, agent channel."""
    import xml.etree.ElementTree as ET

    guests = []
    for part in text.split(_MARK)[1:]:
        state_line, _sep, xml = part.partition("\n")
        try:
            root = ET.fromstring(xml.strip())
        except ET.ParseError:
            continue
        channel = None
        for ch in root.findall("./devices/channel"):
            target = ch.find("target")
            if target is not None and target.get("type") == "virtio" and target.get("name") == AGENT_CHANNEL:
                channel = target
        memory = root.find("memory")
        mem_mib = None
        if memory is not None and memory.text:
            try:
                mem_mib = to_bytes(memory.text.strip(), memory.get("unit")) // MIB
            except (ValueError, ValidationError):
                mem_mib = None
        vcpu = root.find("vcpu")
        guests.append(
            {
                "name": root.findtext("name"),
                "uuid": root.findtext("uuid"),
                "state": state_line.strip().replace(" ", "_") or "unknown",
                "memory_mib": mem_mib,
                "vcpus": int(vcpu.text) if vcpu is not None and vcpu.text else None,
                "agent_channel": channel is not None,
                "agent_state": channel.get("state") if channel is not None else None,
            }
        )
    return guests
