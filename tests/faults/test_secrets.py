"""Secrets never reach the output: every password or secret option is no_log, and the full output of a
real ansible-playbook run with -vvv and --diff never contains a known secret string.

Where secrets go today: a domain's graphics password (``passwd`` in the ``xml``), the guest_agent
connection's ``hypervisor_password``. The ``lockstep.virt.secret`` module gets its cases in
``SECRET_MODULE_TASKS`` once it exists (its test skips until then).
"""

import importlib
import json
import os
import re
import subprocess
import tempfile

import pytest
import yaml
from labkit import REPO, tiny_domain_xml

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
_SECRET_ID = {"usage": "ceph", "usage_id": "lockstep-fault-secret"}
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
