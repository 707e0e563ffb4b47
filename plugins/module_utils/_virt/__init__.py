# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine every lockstep.virt module runs on (private; importable on managed hosts, Python 3.9+).

Its layers, from the top; a module imports only from its own layer or the ones below it
(tests/unit/plugins/module_utils/test_imports.py enforces it):

1. ``runner``: the one entry path of every module - builds the AnsibleModule, registers secrets before the
   invocation is logged (found by ``nolog``), hands the options to a manager or a reporter, reports.
2. ``managers/``: one class per object kind that changes things - read, compare, apply, check-mode
   aware: domain, network, pool, volume, snapshot, secret, apply (a whole host), migration and
   evacuation (several migrations). ``managers/base.py`` is their shared contract.
3. ``migration/``: the migration's phases (reconcile, preflight, transfer, handoff) and their parts,
   composed by ``managers/migration.py`` around one run state (``migration/run.py``).
4. ``reporters/``: read-only facts for the ``*_info`` modules (guests, leases, snapshots, secrets).
5. ``spec/``: structured options into libvirt XML (domain, network, pool, volume).
6. The engine's parts, flat: ``connection``, ``profiles``, ``xml``, ``units``, ``objects``, ``leases`` and
   ``sanlock`` (one lease probe per lock manager), ``lifecycle``, ``live``, ``checkpoints``,
   ``handoff_marker``, ``references``, ``cloudinit``, ``images`` (images imported from a URL, their cache),
   ``managed``, ``nolog`` (what is a secret), ``errors``
   and ``_imports`` (the one
   leaf holding the optional imports).
"""
