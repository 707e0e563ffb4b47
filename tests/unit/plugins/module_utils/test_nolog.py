"""Secrets inside option values: found in the raw options (nolog.param_secrets), and registered before the
module logs its invocation (runner.LibvirtModule), so the log line, the result and the diff never show them."""

import json

import pytest
from ansible.module_utils import basic

from ansible_collections.lockstep.virt.plugins.module_utils._virt import nolog
from ansible_collections.lockstep.virt.plugins.modules import domain as domain_module

URI = "test:///default"


def test_xml_attributes_and_elements():
    xml = (
        "<domain><devices><graphics type='vnc' passwd='vncPW1'/>"
        '<graphics type="spice" password="spicePW2"/></devices>'
        "<auth><password>elemPW3</password><passwd><![CDATA[cdataPW4]]></passwd></auth></domain>"
    )
    assert nolog.xml_secrets(xml) == {"vncPW1", "spicePW2", "elemPW3", "cdataPW4"}
    # no XML, an empty password, a passwd-like attribute name: nothing
    assert nolog.xml_secrets("passwd='x'") == set()
    assert nolog.xml_secrets("<graphics passwd=''/><x passwdValidTo='2030'/>") == set()


def test_uri_password():
    assert nolog.uri_secrets("qemu+ssh://root:uriPW5@hv1/system") == {"uriPW5"}
    assert nolog.uri_secrets("qemu+ssh://root@hv1/system") == set()
    assert nolog.uri_secrets("qemu:///system") == set()
    # an image URL and its checksum file (volume import_from, checksum): sent percent-decoded, masked both ways
    assert nolog.uri_secrets("https://ops:img%2FPW@images.example.org/a.qcow2") == {"img%2FPW", "img/PW"}
    assert nolog.param_secrets({"checksum": "sha256:https://u:sumPW@example.org/SHA256SUMS"}) == {"sumPW"}


CLOUD_CONFIG = {
    "password": "defaultPW",
    "chpasswd": {
        "expire": False,
        "list": "root:listPW1\nadmin:listPW2\n",
        "users": [{"name": "ops", "password": "chpwUsersPW", "type": "text"}],
    },
    "users": [
        {"name": "a", "hashed_passwd": "$6$salt$hashedPW", "lock_passwd": False},
        {"name": "b", "plain_text_passwd": "plainPW"},
        {"name": "c", "passwd": "$6$other$passwdPW"},
    ],
    "ssh_pwauth": True,
}
CLOUD_SECRETS = {
    "defaultPW",
    "listPW1",
    "listPW2",
    "chpwUsersPW",
    "$6$salt$hashedPW",
    "plainPW",
    "$6$other$passwdPW",
}

CLOUD_TEXT = """#cloud-config
password: 'defaultPW'
chpasswd:
  expire: false
  list: |
    root:listPW1
    admin:listPW2
  users:
    - {name: ops, password: chpwUsersPW, type: text}
users:
  - name: a
    hashed_passwd: "$6$salt$hashedPW"
    lock_passwd: false
  - name: b
    plain_text_passwd: plainPW
  - name: c
    passwd: $6$other$passwdPW
ssh_pwauth: true
"""


def test_cloud_config_as_dictionary():
    assert nolog.cloud_config_secrets(CLOUD_CONFIG) == CLOUD_SECRETS


@pytest.mark.parametrize("with_yaml", [True, False])
def test_cloud_config_as_text_with_and_without_pyyaml(monkeypatch, with_yaml):
    if not with_yaml:  # a managed host without PyYAML: the line rules alone
        monkeypatch.setattr(nolog, "HAS_YAML", False)
    found = nolog.cloud_config_secrets(CLOUD_TEXT)
    # the flow mapping of chpasswd.users is read by PyYAML only
    expected = CLOUD_SECRETS if with_yaml else CLOUD_SECRETS - {"chpwUsersPW"}
    assert expected <= found, expected - found
    assert not {"false", "true", "|", "ops", "text"} & found, found


def test_chpasswd_list_as_a_list():
    assert nolog.cloud_config_secrets({"chpasswd": {"list": ["root:l1", "u:l2"]}}) == {"l1", "l2"}


def test_param_secrets_finds_cloud_init_at_any_depth():
    params = {
        "uri": "qemu+ssh://root:uriPW@hv1/system",
        "domains": [
            {"name": "g", "xml": "<domain><graphics passwd='gPW'/></domain>"},
            {"name": "h", "spec": {"cloud_init": {"user_data": CLOUD_TEXT, "meta_data": {"password": "metaPW"}}}},
        ],
    }
    assert nolog.param_secrets(params) == CLOUD_SECRETS | {"uriPW", "gPW", "metaPW"}
    assert nolog.param_secrets({"name": "web1", "spec": {"memory": 32}}) == set()


@pytest.fixture
def logged(monkeypatch):
    """Every message the module logs to the managed host (syslog, as when journald is not there)."""
    lines = []
    monkeypatch.setattr(basic, "has_journal", False)
    monkeypatch.setattr(basic.AnsibleModule, "_log_to_syslog", lambda self, msg: lines.append(msg))
    return lines


@pytest.mark.parametrize("check_mode", [True, False])
def test_invocation_log_result_and_diff_never_show_the_secrets(hv, run_module, logged, check_mode):
    xml = (
        "<domain type='test'><name>nolog1</name><memory unit='MiB'>32</memory>"
        "<os><type>hvm</type></os><devices><graphics type='vnc' passwd='Zq7kpW3x'/></devices></domain>"
    )
    result = run_module(domain_module.main, {"uri": URI, "name": "nolog1", "xml": xml}, check_mode, True)
    assert not result.get("failed"), result
    invoked = [line for line in logged if line.startswith("Invoked with")]
    assert invoked and "nolog1" in invoked[0], logged  # the invocation is logged, with the guest's name
    assert "Zq7kpW3x" not in "".join(logged)
    assert "Zq7kpW3x" not in json.dumps(result) and result["changed"] is True


def test_cloud_init_passwords_never_logged_even_when_the_options_are_refused(hv, run_module, logged):
    spec = {"memory": 32, "cloud_init": {"user_data": CLOUD_TEXT}, "colour": "blue"}
    result = run_module(domain_module.main, {"uri": URI, "name": "nolog2", "spec": spec}, True, True)
    assert result.get("failed"), result  # refused: spec.colour is no option; the message and log still mask
    everything = json.dumps(result) + "".join(logged)
    for secret in CLOUD_SECRETS:
        assert secret not in everything, secret


def test_cloud_init_passwords_never_logged(hv, run_module, logged):
    spec = {"memory": 32, "cloud_init": {"user_data": CLOUD_TEXT, "pool": "default-pool"}}
    result = run_module(domain_module.main, {"uri": URI, "name": "nolog3", "spec": spec}, True, True)
    invoked = [line for line in logged if line.startswith("Invoked with")]
    assert invoked and "nolog3" in invoked[0] and "cloud_init" in invoked[0], logged
    everything = json.dumps(result) + "".join(logged)
    for secret in CLOUD_SECRETS:
        assert secret not in everything, secret
