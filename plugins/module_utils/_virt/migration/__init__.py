# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A verified migration as composed parts. ``run.MigrationRun`` is the run's state (plan, both connections,
recorder, events, marks behind a lock), handed to each phase: ``reconcile.Reconcile`` (what an interrupted
run left, on the evidence ``evidence`` reads), ``preflight.Preflight`` (checks), ``transfer.Transfer`` (the
job; a failed send classified once as a ``SendFailure``) and ``handoff.Handoff`` (the destination takes the
leases and runs, the source is confirmed stopped). Their parts: ``plan`` (options into a typed ``Plan``),
``leaseview``, ``events``, ``marker``, ``timing``. managers/migration.py opens the connections and runs the
phases in order."""
