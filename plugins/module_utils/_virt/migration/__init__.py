# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Building blocks of the verified migration handoff (used by managers/migration/).

- :mod:`.plan`: :data:`MIGRATE_ARGUMENT_SPEC`, :func:`build_plan`, :func:`checkpoint_order`;
- :mod:`.leaseview`: :class:`LeaseView` (the guest's leases probed from the source, each held by the
  ``source``, by ``other`` or by nobody), :class:`PhaseRecorder`, lease summaries and texts;
- :mod:`.events`: :class:`LifecycleEvents` (lifecycle events of both hosts, stamped on arrival) and the
  libvirt event loop.
"""

from __future__ import annotations

from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.events import (  # noqa: F401
    LifecycleEvents,
    job_summary,
    ms_between,
    start_event_loop,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.leaseview import (  # noqa: F401
    LeaseView,
    PhaseRecorder,
    describe,
    holders,
    lease_summary,
    public_leases,
)
from ansible_collections.lockstep.virt.plugins.module_utils._virt.migration.plan import (  # noqa: F401
    COPY_STORAGE,
    MIGRATE_ARGUMENT_SPEC,
    MODES,
    RELEASE_AFTER_SEND,
    RELEASE_BEFORE_SEND,
    build_plan,
    checkpoint_order,
)
