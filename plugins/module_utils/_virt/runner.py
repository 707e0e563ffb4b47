# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one ``main()`` every lockstep.virt module runs: build the module, open one connection,
hand it to a manager, report the result (or the manager's VirtError) the Ansible way.

The module is a :class:`LibvirtModule`: the secrets its options carry inside their values (a console
password in XML, a cloud-init password, a password in a URI: see nolog) are registered as
``no_log_values`` as soon as the options are read - before AnsibleModule validates them or logs the
invocation to the managed host's journal or syslog - so they are masked there, in failures, in the
result, the diff and ``-vvv``."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.lockstep.virt.plugins.module_utils._virt._imports import (
    HAS_LIBVIRT,
    HAS_LXML,
    LIBVIRT_IMPORT_ERROR,
    LXML_IMPORT_ERROR,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.connection import Connection, merge_argument_spec
from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import VirtError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.nolog import (
    forget_read_secrets,
    option_strings,
    param_secrets,
    read_secrets,
)


class LibvirtModule(AnsibleModule):
    """AnsibleModule that registers the secrets inside option values (nolog.param_secrets) the moment the
    options are read: AnsibleModule.__init__ reads them (``_load_params``), validates them (a failure is
    reported through fail_json, which masks ``no_log_values``) and then logs the invocation
    (``_log_invocation``, to syslog or journald on the managed host), all before it returns."""

    def _load_params(self):
        super()._load_params()
        forget_read_secrets()
        self.no_log_values.update(param_secrets(self.params))


def check_libvirt(module):
    """Fail the module the Ansible way when libvirt-python or lxml is missing on the managed host."""
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    if not HAS_LXML:
        module.fail_json(msg=missing_required_lib("lxml"), exception=LXML_IMPORT_ERROR)


def run_module(module, fn):
    """Run ``fn()`` (which returns the result dict) and report it: exit_json, or fail_json on VirtError.
    Secrets read from libvirt during the run (nolog.read_secrets) are masked in what is reported."""
    try:
        result = fn()
    except VirtError as err:
        module.no_log_values.update(read_secrets())
        module.fail_json(**err.to_fail_kwargs())
    module.no_log_values.update(read_secrets())
    module.exit_json(**result)


def run_libvirt_module(argument_spec, manager=None, work=None, mutually_exclusive=None, readonly=False, connect=True):
    """Run a module whose options are ``argument_spec`` plus the shared connection options.

    ``manager``: a class built as ``manager(conn, params, check_mode, diff_mode)`` whose ``run()``
    returns the result; ``work``: a function ``work(conn, module)`` returning it, for modules that
    are not a manager. ``connect=False``: ``work`` opens its own connections and gets ``conn`` None.
    """
    module = LibvirtModule(
        argument_spec=merge_argument_spec(argument_spec),
        mutually_exclusive=mutually_exclusive or [],
        supports_check_mode=True,
    )
    check_libvirt(module)
    refuse_nul(module)
    if manager is not None:

        def work(conn, module):
            return manager(conn, module.params, module.check_mode, module._diff).run()

    def run():
        if not connect:
            return work(None, module)
        with Connection(module.params["uri"], readonly=readonly) as conn:
            return work(conn, module)

    run_module(module, run)


def refuse_nul(module):
    """Fail the module when a text option holds a NUL: libvirt's C API cannot take one."""
    for key, value in sorted(module.params.items()):
        if any("\0" in v for v in option_strings(value)):
            module.fail_json(msg="{} must not contain a NUL character".format(key))
