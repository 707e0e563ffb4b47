"""Secrets never reach the output: every password or secret option is no_log, and the full output of a
real ansible-playbook run with -vvv and --diff never contains a known secret string.

Where secrets go today: a domain's graphics password (``passwd`` in the ``xml``), cloud-init passwords
(``spec.cloud_init.user_data``), the guest_agent connection's ``hypervisor_password``, and the values of
the ``lockstep.virt.secret`` module (``SECRET_MODULE_TASKS``).

The managed host's log is read too: AnsibleModule logs every invocation to syslog (or journald) on the
host it runs on. The lab's hosts run no syslog daemon, so the test listens on the host's ``/dev/log``
itself for the run (``host_log``) and asserts both that the invocation lines arrived and that no secret
is in them.
"""

import contextlib
import importlib
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest
import yaml
from labkit import LAB, REPO, tiny_domain_xml

SECRET = "Zq7kpW3x"  # VNC takes at most 8 characters
MODULES_DIR = os.path.join(REPO, "plugins", "modules")
# Options named like a secret that hold none: libvirt secret object identifiers (a UUID, a usage name).
NOT_SECRETS = {"secret_uuid", "secret_usage", "key"}
SECRET_NAME = re.compile(r"pass|secret|token|key", re.IGNORECASE)


class _Captured(Exception):
    pass


def _argument_specs(monkeypatch):
    """{module: the argument spec its main() builds its AnsibleModule with} of every module in plugins/modules."""
    from ansible.module_utils import basic

    seen = {}

    def capture(self, argument_spec, **_kwargs):
        seen["spec"] = argument_spec
        raise _Captured()

    monkeypatch.setattr(basic.AnsibleModule, "__init__", capture)
    specs = {}
    for fname in sorted(os.listdir(MODULES_DIR)):
        if not fname.endswith(".py") or fname.startswith("_"):
            continue
        mod = importlib.import_module("ansible_collections.lockstep.virt.plugins.modules." + fname[:-3])
        seen.clear()
        with pytest.raises(_Captured):
            mod.main()
        specs[fname[:-3]] = seen["spec"]
    return specs


def _secret_options(spec, where=""):
    for name, opt in spec.items():
        path = where + name
        if SECRET_NAME.search(name) and name not in NOT_SECRETS:
            yield path, opt
        if opt.get("options"):
            yield from _secret_options(opt["options"], path + ".")


def test_every_secret_option_is_no_log(monkeypatch):
    found = []
    specs = _argument_specs(monkeypatch)
    assert len(specs) == len([f for f in os.listdir(MODULES_DIR) if f.endswith(".py") and not f.startswith("_")])
    # the detector sees a nested secret option
    assert [p for p, _o in _secret_options({"auth": {"options": {"password": {"type": "str"}}}})] == ["auth.password"]
    for module, spec in specs.items():
        for path, opt in _secret_options(spec):
            found.append((module, path, bool(opt.get("no_log"))))
    assert all(no_log for _m, _p, no_log in found), [f for f in found if not f[2]]
    # the connection plugin documents its password as never logged; Ansible keeps it out of -vvv
    with open(os.path.join(REPO, "plugins", "connection", "guest_agent.py")) as fh:
        assert "hypervisor_password:" in fh.read()


def run_verbose(lab, plays, inventory=None):
    """ansible-playbook -vvv --diff on ``plays``; its full output (stdout and stderr)."""
    with tempfile.TemporaryDirectory(prefix="secrets-") as tmp:
        path = os.path.join(tmp, "play.yml")
        with open(path, "w") as fh:
            yaml.safe_dump(plays, fh, sort_keys=False)
        argv = ["ansible-playbook", "-vvv", "--diff", "-i", inventory or lab.inventory, path]
        env = lab._env(os.path.join(tmp, "record.jsonl"))
        res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)
        record = os.path.join(tmp, "record.jsonl")
        results = [json.loads(line) for line in open(record)] if os.path.exists(record) else []
    return res.stdout + res.stderr, results


def test_graphics_password_in_domain_xml_never_shown(lab, guest_name):
    xml = tiny_domain_xml(guest_name).replace(
        "<graphics type='vnc' listen='127.0.0.1'/>",
        "<graphics type='vnc' listen='127.0.0.1' passwd='{}'/>".format(SECRET),
    )
    task = {"lockstep.virt.domain": {"name": guest_name, "xml": xml, "state": "running"}}
    plays = [
        {
            "hosts": "hv1",
            "gather_facts": False,
            "tasks": [
                dict(task, name="check mode", check_mode=True),
                dict(task, name="define and start"),
                dict(task, name="again"),
                {
                    "name": "changed password",
                    "lockstep.virt.domain": {"name": guest_name, "xml": xml.replace(SECRET, SECRET[::-1])},
                },
                {"name": "info", "lockstep.virt.domain_info": {"name": guest_name, "inactive_xml": True}},
                {"name": "remove", "lockstep.virt.domain": {"name": guest_name, "state": "absent"}},
            ],
        }
    ]
    output, results = run_verbose(lab, plays)
    statuses = dict((r["task"], r["status"]) for r in results)
    assert statuses.get("define and start") == "ok" and statuses.get("remove") == "ok", output[-3000:]
    assert SECRET not in output and SECRET[::-1] not in output
    assert SECRET not in json.dumps(results)


def test_guest_agent_hypervisor_password_never_shown(lab, tmp_path):
    inventory = tmp_path / "inventory.yml"
    key = os.path.join(os.path.dirname(lab.inventory), "ssh", "id_ed25519")
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {
                        "no-such-guest": {
                            "ansible_connection": "lockstep.virt.guest_agent",
                            "guest_agent_hypervisor_host": lab.address("hv1"),
                            "guest_agent_hypervisor_private_key_file": key,
                            "guest_agent_hypervisor_password": SECRET,
                            "guest_agent_known_hosts_file": os.path.join(os.path.dirname(key), "known_hosts"),
                            "guest_agent_connect_timeout": 5,
                            "guest_agent_command_timeout": 10,
                        }
                    }
                }
            }
        )
    )
    plays = [{"hosts": "all", "gather_facts": False, "tasks": [{"name": "ping", "ansible.builtin.ping": {}}]}]
    output, results = run_verbose(lab, plays, inventory=str(inventory))
    assert "no-such-guest" in output and "ping" in output, output[-3000:]
    assert SECRET not in output and SECRET[::-1] not in output
    assert SECRET not in json.dumps(results)


# The lockstep.virt.secret module, once it exists: tasks (with SECRET as the secret's value) whose full
# -vvv --diff output must not contain SECRET, for example
#   {"name": "store", "lockstep.virt.secret": {"usage": "...", "value": SECRET}}, then the same again,
#   then with a changed value, then state: absent.
_SECRET_ID = {"usage": "ceph", "usage_id": "lockstep-fault-secret-" + uuid.uuid4().hex[:8]}
SECRET_MODULE_TASKS = [
    {"name": "store", "lockstep.virt.secret": dict(_SECRET_ID, value=SECRET)},
    {"name": "again", "lockstep.virt.secret": dict(_SECRET_ID, value=SECRET)},
    {"name": "remove", "lockstep.virt.secret": dict(_SECRET_ID, state="absent")},
]


@pytest.mark.skipif(
    not os.path.exists(os.path.join(MODULES_DIR, "secret.py")), reason="no lockstep.virt.secret module yet"
)
def test_secret_module_value_never_shown(lab):
    assert SECRET_MODULE_TASKS, "add the secret module's tasks to SECRET_MODULE_TASKS"
    output, results = run_verbose(lab, [{"hosts": "hv1", "gather_facts": False, "tasks": SECRET_MODULE_TASKS}])
    assert SECRET not in output and SECRET[::-1] not in output
    assert SECRET not in json.dumps(results)


# ---------------------------------------------------------------------------------------------------------
# The managed host's own log

# Listens on /dev/log (a datagram socket, as syslog(3) writes to it) inside a lab host's namespaces and
# prints each message on a line, until it reads the end marker given as its argument. It refuses to start
# when /dev/log is there already (a syslog daemon, or another listener), and removes it when it ends.
LISTENER = r"""
import os, signal, socket, sys
path, end = "/dev/log", sys.argv[1]
if os.path.lexists(path):
    print("busy", flush=True)
    sys.exit(3)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    os.chmod(path, 0o666)
    print("ready", flush=True)
    while True:
        line = sock.recv(1 << 20).decode("utf-8", "replace").replace("\n", "\\n")
        print(line, flush=True)
        if end in line:
            break
finally:
    os.unlink(path)
"""


def _readline(proc, timeout):
    ready, _w, _x = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else None


@contextlib.contextmanager
def host_log(lab, host):
    """What the modules run on ``host`` log to its syslog while the block runs: ``lines`` of the yielded list
    are filled when the block ends. Uses the host's syslog daemon's journal when it has one (``/dev/log`` is
    there), else a listener on its ``/dev/log``."""
    lines = []
    end = "lsv-log-end-" + uuid.uuid4().hex
    proc = subprocess.Popen(
        [LAB, "exec", host, "--", "python3", "-u", "-c", LISTENER, end],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = _readline(proc, 30)
        if first == "busy":  # a syslog daemon: read the journal of the run instead
            proc.wait(timeout=30)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 1))
            yield lines
            time.sleep(1)
            res = lab.exec(host, "journalctl", "-q", "-o", "cat", "--since", since, check=False)
            assert res.returncode == 0, "{} has /dev/log but no journal to read: {}".format(host, res.stderr)
            lines.extend(res.stdout.splitlines())
            return
        assert first == "ready", "the log listener on {} did not start: {!r} {}".format(host, first, proc.stderr.read())
        yield lines
        # the end marker goes the same way as the modules' messages; the listener stops when it reads it
        lab.exec(host, "python3", "-c", "import syslog, sys; syslog.syslog(sys.argv[1])", end)
        while True:
            line = _readline(proc, 30)
            assert line is not None, "the log listener on {} did not see the end marker".format(host)
            lines.append(line)
            if end in line:
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.terminate()  # the listener started here (it removes /dev/log as it ends)
            proc.wait(timeout=30)


CLOUD_PASSWORDS = ["ciDefault-" + uuid.uuid4().hex[:8], "ciList-" + uuid.uuid4().hex[:8]]
CLOUD_PASSWORDS += ["$6$lsv$ciHashed-" + uuid.uuid4().hex[:8], "ciPlain-" + uuid.uuid4().hex[:8]]
USER_DATA = """#cloud-config
password: {}
chpasswd:
  expire: false
  list: |
    root:{}
users:
  - name: ops
    hashed_passwd: "{}"
    lock_passwd: true
  - name: dev
    plain_text_passwd: {}
""".format(*CLOUD_PASSWORDS)


@pytest.fixture
def ci_pool(lab, guest_name):
    name = "sec-" + guest_name
    path = os.path.join(lab.shared_dir, "pools", name)
    yield name, path
    hv1 = lab.hosts[0]
    lab.virsh(hv1, "pool-destroy", name, check=False)
    lab.virsh(hv1, "pool-undefine", name, check=False)
    shutil.rmtree(path, ignore_errors=True)


def test_no_secret_in_the_managed_hosts_log_nor_in_the_output(lab, guest_name, ci_pool):
    """The modules run over SSH on hv1, as a user runs them; hv1's syslog gets every invocation line, and none
    holds a console password (XML, through domain and apply) or a cloud-init password (spec.cloud_init)."""
    hv1 = lab.hosts[0]
    pool, pool_path = ci_pool
    ci_guest = guest_name + "-ci"
    xml = tiny_domain_xml(guest_name).replace(
        "<graphics type='vnc' listen='127.0.0.1'/>",
        "<graphics type='vnc' listen='127.0.0.1' passwd='{}'/>".format(SECRET),
    )
    ci_spec = {
        "type": "qemu",
        "memory": 32,
        "boot": ["hd"],
        "disks": [{"pool": pool, "volume": ci_guest + ".qcow2", "format": "qcow2"}],
        "cloud_init": {"user_data": USER_DATA},
    }
    tasks = [
        {"name": "xml", "lockstep.virt.domain": {"name": guest_name, "xml": xml, "state": "present"}},
        {"name": "apply", "lockstep.virt.apply": {"domains": [{"name": guest_name, "xml": xml, "state": "present"}]}},
        {"name": "pool", "lockstep.virt.pool": {"name": pool, "state": "active", "spec": {"path": pool_path}}},
        {
            "name": "volume",
            "lockstep.virt.volume": {"pool": pool, "name": ci_guest + ".qcow2", "capacity": "16M", "format": "qcow2"},
        },
        {"name": "cloud-init", "lockstep.virt.domain": {"name": ci_guest, "state": "present", "spec": ci_spec}},
        {"name": "cloud-init again", "lockstep.virt.domain": {"name": ci_guest, "state": "present", "spec": ci_spec}},
        {"name": "cloud-init gone", "lockstep.virt.domain": {"name": ci_guest, "state": "absent"}},
        {"name": "xml gone", "lockstep.virt.domain": {"name": guest_name, "state": "absent"}},
    ]
    try:
        with host_log(lab, hv1) as logged:
            output, results = run_verbose(lab, [{"hosts": hv1, "gather_facts": False, "tasks": tasks}])
    finally:
        lab.cleanup_domain(ci_guest)
    statuses = dict((r["task"], r["status"]) for r in results)
    assert all(statuses.get(t["name"]) == "ok" for t in tasks), (statuses, output[-3000:])
    assert results[4]["result"]["changed"] is True and results[5]["result"]["changed"] is False, results[4:6]

    # the invocation of each module task is in hv1's log: the test sees what a leak would look like
    invoked = [line for line in logged if "Invoked with" in line]
    for module, name in (("domain", guest_name), ("apply", guest_name), ("domain", ci_guest)):
        assert any("lockstep.virt." + module in line and name in line for line in invoked), (module, name, invoked)
    assert any("cloud_init" in line and ci_guest in line for line in invoked), invoked
    log = "\n".join(logged)
    everything = {"hv1 log": log, "-vvv --diff output": output, "results": json.dumps(results)}
    for where, text in everything.items():
        for secret in [SECRET] + CLOUD_PASSWORDS:
            assert secret not in text, "{} shows {}".format(where, secret)
