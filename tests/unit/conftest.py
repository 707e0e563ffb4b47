"""Unit test setup: make ``ansible_collections.lockstep.virt`` importable from the checkout and give tests
a libvirt ``test:///default`` connection that keeps the driver's state alive across module runs."""

import gc
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "lockstep", "virt")

# Under `ansible-test units` the collection is already importable from its installed path; from a plain
# checkout (`pytest tests/unit`) it is reached through the same link `make collection` makes.
if os.path.basename(os.path.dirname(os.path.dirname(ROOT))) != "ansible_collections":
    if not os.path.exists(LINK):
        os.makedirs(os.path.dirname(LINK), exist_ok=True)
        os.symlink(ROOT, LINK)
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)

import libvirt  # noqa: E402

TEST_URI = "test:///default"


@pytest.fixture(autouse=True)
def _no_lock_env(monkeypatch):
    """Tests never read the machine's own libvirt config unless they point at one."""
    monkeypatch.delenv("LOCKSTEP_VIRT_LOCK_CONF", raising=False)
    monkeypatch.delenv("LOCKSTEP_VIRT_LOCKD_CONF", raising=False)
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)


@pytest.fixture
def hv():
    """A connection to test:///default held open for the whole test.

    libvirt's test driver shares one state between all open connections to test:///default and resets it
    when the last one closes, so holding this connection makes state persist across module runs (each of
    which opens and closes its own connection) and gives every test a fresh hypervisor.
    """
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    gc.collect()  # drop virDomain objects of earlier tests, which keep the shared state alive
    conn = libvirt.open(TEST_URI)
    _reset(conn)
    yield conn
    _reset(conn)
    conn.close()
    gc.collect()


def _reset(conn):
    """Back to the driver's default state, in case an earlier test's objects kept it alive."""
    for dom in conn.listAllDomains():
        if dom.name() == "test":
            if not dom.isActive():
                dom.create()
            continue
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            if dom.hasManagedSaveImage():
                dom.managedSaveRemove()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    pool = conn.storagePoolLookupByName("default-pool")
    for name in pool.listVolumes():
        pool.storageVolLookupByName(name).delete(0)


class ModuleRun:
    """Run a module's main() in-process and return its JSON result (``failed`` set on fail_json)."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, main, args, check_mode=False, diff=False):
        from ansible.module_utils.testing import patch_module_args

        args = dict(args)
        args["_ansible_check_mode"] = check_mode
        args["_ansible_diff"] = diff
        self.capsys.readouterr()
        with patch_module_args(args):
            with pytest.raises(SystemExit) as exc:
                main()
        out = self.capsys.readouterr().out
        result = json.loads(out)
        result["_rc"] = exc.value.code
        assert "Traceback" not in out, out
        assert ("exception" not in result) or result.get("failed"), result
        return result


@pytest.fixture
def run_module(capsys):
    return ModuleRun(capsys)
