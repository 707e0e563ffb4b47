"""lockstep.virt.guest_agent: options, agent requests, chunking, polling and error mapping (no lab needed)."""

import base64
import json
import os
import shlex

import pytest
from ansible import constants as C
from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import fragment_loader
from ansible.utils.plugin_docs import get_docstring

from ansible_collections.lockstep.virt.plugins.connection import guest_agent as plugin
from ansible_collections.lockstep.virt.plugins.plugin_utils import _agent_ssh as ga
from ansible_collections.lockstep.virt.tests.unit.fakes.hypervisor import FakeHypervisor

NAME = "lockstep.virt.guest_agent"


@pytest.fixture(scope="module")
def loader():
    """Register the plugin's documented options, as Ansible's plugin loader does when it loads it."""
    doc = get_docstring(plugin.__file__, fragment_loader)[0]
    C.config.initialize_plugin_configuration_definitions("connection", NAME, doc["options"])
    return doc


@pytest.fixture(autouse=True)
def _no_option_env(monkeypatch):
    """Option defaults are tested, not what the calling environment sets (ansible-test sets
    ANSIBLE_HOST_KEY_CHECKING=false)."""
    for name in list(os.environ):
        if name.startswith("LOCKSTEP_VIRT_") or name == "ANSIBLE_HOST_KEY_CHECKING":
            monkeypatch.delenv(name)


def make_connection(loader, **variables):
    conn = plugin.Connection(PlayContext(), None)
    conn._load_name = NAME
    conn.set_options(var_options=variables)
    return conn


@pytest.fixture
def hv():
    return FakeHypervisor()


@pytest.fixture
def agent(hv):
    a = ga.GuestAgent(hv, "g1", uri="qemu:///system", command_timeout=30)
    a.slept = []
    a.sleep = a.slept.append
    now = [0.0]

    def clock():
        return now[0] + sum(a.slept)

    a.clock = clock
    return a


# ---------------------------------------------------------------- options


def test_options_defaults_and_vars(loader):
    conn = make_connection(loader, inventory_hostname="web1", guest_agent_hypervisor_host="10.0.0.1")
    assert conn.get_option("domain") == "web1"
    assert conn.get_option("hypervisor_host") == "10.0.0.1"
    assert conn.get_option("hypervisor_port") == 22
    assert conn.get_option("hypervisor_user") == "root"
    assert conn.get_option("libvirt_uri") == "qemu:///system"
    assert conn.get_option("host_key_checking") is True
    assert conn.get_option("connect_timeout") == 10
    assert conn.get_option("command_timeout") == 300
    assert conn.has_pipelining


def test_options_override(loader):
    conn = make_connection(
        loader,
        inventory_hostname="web1",
        guest_agent_domain="dom-7",
        guest_agent_hypervisor_host="hv",
        guest_agent_hypervisor_port="2222",
        guest_agent_hypervisor_user="virt",
        guest_agent_libvirt_uri="qemu+tcp://x/system",
        guest_agent_host_key_checking="no",
        guest_agent_command_timeout="7",
        ansible_pipelining=True,
    )
    assert conn.get_option("domain") == "dom-7"
    assert conn.get_option("hypervisor_port") == 2222
    assert conn.get_option("hypervisor_user") == "virt"
    assert conn.get_option("libvirt_uri") == "qemu+tcp://x/system"
    assert conn.get_option("host_key_checking") is False
    assert conn.get_option("command_timeout") == 7
    assert conn.get_option("pipelining") is True


def test_options_from_environment(loader, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_VIRT_HYPERVISOR_HOST", "hv-env")
    monkeypatch.setenv("LOCKSTEP_VIRT_LIBVIRT_URI", "qemu:///session")
    conn = make_connection(loader, inventory_hostname="g")
    assert conn.get_option("hypervisor_host") == "hv-env"
    assert conn.get_option("libvirt_uri") == "qemu:///session"


def test_missing_hypervisor_is_a_connection_failure(loader):
    conn = make_connection(loader, inventory_hostname="g")
    with pytest.raises(AnsibleConnectionFailure, match="guest_agent_hypervisor_host"):
        conn._connect()


def test_connection_uses_cached_transport(loader, monkeypatch, hv):
    made = []

    def fake_hypervisor(**kw):
        made.append(kw)
        return hv

    monkeypatch.setattr(plugin.__name__ + ".hypervisor", fake_hypervisor)
    conn = make_connection(
        loader, inventory_hostname="g1", guest_agent_hypervisor_host="hv", guest_agent_hypervisor_password="s3cret"
    )
    hv.exec_results = [{"rc": 3, "out": b"o", "err": b"e", "polls": 0}]
    rc, out, err = conn.exec_command("false")
    assert (rc, out, err) == (3, b"o", b"e")
    assert made[0]["password"] == "s3cret" and made[0]["host"] == "hv"
    args = hv.requests[0]["arguments"]
    assert args["path"] == "/bin/sh" and args["arg"] == ["-c", "false"] and args["capture-output"] is True
    assert not any("s3cret" in c for c in hv.commands)


def test_put_and_fetch_file_stream(loader, monkeypatch, hv, tmp_path):
    monkeypatch.setattr(plugin.__name__ + ".hypervisor", lambda **kw: hv)
    conn = make_connection(loader, inventory_hostname="g1", guest_agent_hypervisor_host="hv")
    data = os.urandom(300 * 1024 + 5)
    src = tmp_path / "src"
    src.write_bytes(data)
    conn.put_file(str(src), "/tmp/x")
    assert hv.files["/tmp/x"] == data
    writes = [r for r in hv.requests if r["execute"] == "guest-file-write"]
    assert len(writes) == -(-len(data) // ga.WRITE_CHUNK)
    dest = tmp_path / "dest"
    conn.fetch_file("/tmp/x", str(dest))
    assert dest.read_bytes() == data
    assert not os.path.exists(str(dest) + ".part")


def test_put_file_missing_local_file(loader, monkeypatch, hv, tmp_path):
    monkeypatch.setattr(plugin.__name__ + ".hypervisor", lambda **kw: hv)
    conn = make_connection(loader, inventory_hostname="g1", guest_agent_hypervisor_host="hv")
    with pytest.raises(AnsibleError, match="does not exist"):
        conn.put_file(str(tmp_path / "nope"), "/tmp/x")


# ---------------------------------------------------------------- requests


def test_virsh_command_quotes_everything(agent):
    agent.domain = "it's a guest"
    agent.uri = "qemu+ssh://h/system?x=1&y=2"
    cmd = agent.virsh_command({"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", "a | b"]}}, 12.7)
    argv = shlex.split(cmd)
    assert argv[:6] == ["virsh", "-c", "qemu+ssh://h/system?x=1&y=2", "qemu-agent-command", "--timeout", "12"]
    assert argv[6] == "it's a guest"
    assert json.loads(argv[7]) == {"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", "a | b"]}}


def test_small_stdin_goes_as_input_data(agent, hv):
    hv.exec_results = [{"polls": 0}]
    rc, out, _err = agent.execute(["/bin/sh", "-c", "cat"], stdin=b"hello")
    assert rc == 0
    assert hv.requests[0]["arguments"]["input-data"] == base64.b64encode(b"hello").decode()
    assert out.endswith(b"stdin=5")


def test_large_stdin_is_staged_in_a_guest_file(agent, hv):
    payload = os.urandom(ga.INPUT_INLINE_MAX * 3 + 11)
    rc, out, _err = agent.execute(["/bin/sh", "-c", "/usr/bin/python3"], stdin=payload)
    assert rc == 0 and out.endswith(b"stdin=%d" % len(payload))
    execs = [r for r in hv.requests if r["execute"] == "guest-exec"]
    main = execs[-1]["arguments"]
    assert "input-data" not in main
    assert main["arg"][-3:] == ["/bin/sh", "-c", "/usr/bin/python3"]
    assert not any(p.startswith("/tmp/.lockstep-stdin-") for p in hv.files)  # consumed


def test_poll_backoff_is_bounded(agent, hv):
    hv.exec_results = [{"polls": 12, "rc": 0}]
    agent.execute(["/bin/true"])
    assert agent.slept[0] == ga.POLL_FIRST
    assert max(agent.slept) == ga.POLL_MAX
    assert all(b >= a for a, b in zip(agent.slept, agent.slept[1:]))


def test_command_timeout(agent, hv):
    hv.exec_results = [{"polls": 10**6}]
    with pytest.raises(ga.AgentTimeout, match=r"did not finish within 5s \(guest pid 100"):
        agent.execute(["/bin/sleep", "100"], timeout=5)
    assert sum(agent.slept) <= 5 + ga.POLL_MAX


def test_nonzero_exit_and_signal(agent, hv):
    hv.exec_results = [{"rc": 2, "out": b"", "err": b"no", "polls": 0}, {"signal": 9, "out": b"", "polls": 0}]
    assert agent.execute(["/bin/false"]) == (2, b"", b"no")
    assert agent.execute(["/bin/kill-me"])[0] == 128 + 9


def test_read_file_chunks(agent, hv):
    hv.files["/f"] = b"x" * (ga.READ_CHUNK * 2 + 1)
    chunks = list(agent.read_file("/f"))
    assert [len(c) for c in chunks] == [ga.READ_CHUNK, ga.READ_CHUNK, 1]
    assert not hv.handles


def test_write_file_chunks_respect_argument_limit(agent, hv):
    agent.write_file("/big", [os.urandom(1024 * 1024)])
    assert len(hv.files["/big"]) == 1024 * 1024
    assert max(len(c) for c in hv.commands) < 128 * 1024


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "stderr, cls, text",
    [
        ("error: Guest agent is not responding: QEMU guest agent is not connected", ga.AgentNotConnected,
         "not connected"),
        ("error: argument unsupported: QEMU guest agent is not configured", ga.AgentNotConfigured,
         "no guest agent channel"),
        ("error: Guest agent is not responding: Guest agent not available for now", ga.AgentTimeout,
         "did not answer in time"),
        ("error: internal error: unable to execute QEMU agent command 'guest-exec': "
         "The command guest-exec has been disabled for this instance", ga.AgentCommandMissing, "guest-exec"),
        ("error: failed to get domain 'g1'", ga.DomainNotFound, "not found on"),
        ("error: Requested operation is not valid: domain is not running", ga.DomainNotRunning, "is not running"),
        ("error: something else", ga.GuestAgentError, "something else"),
    ],
)  # fmt: skip
def test_error_mapping(agent, hv, stderr, cls, text):
    hv.error = stderr
    with pytest.raises(cls, match=text) as info:
        agent.execute(["/bin/true"])
    assert info.type is cls
    assert isinstance(info.value, AnsibleConnectionFailure)
    assert "g1" in str(info.value) and "root@fake:22" in str(info.value)


def test_virsh_missing(agent, hv):
    hv.run = lambda command, stdin=None, timeout=None: (127, b"", b"sh: virsh: not found")
    with pytest.raises(ga.GuestAgentError, match="virsh not found"):
        agent.ping()


def test_cache_is_per_process_and_per_key(monkeypatch):
    made = []

    class Fake:
        active = True

        def __init__(self, *a):
            made.append(a)

        def connect(self):
            return self

        def close(self):
            pass

    monkeypatch.setattr(ga, "HypervisorSSH", Fake)
    monkeypatch.setattr(ga, "_CACHE", {})
    a = ga.hypervisor("h", 22, "root")
    assert ga.hypervisor("h", 22, "root") is a
    assert ga.hypervisor("h", 2222, "root") is not a
    monkeypatch.setattr(ga.os, "getpid", lambda: -1)
    assert ga.hypervisor("h", 22, "root") is not a
    assert len(made) == 3
