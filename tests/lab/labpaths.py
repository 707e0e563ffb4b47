"""Where a lab lives: one place for its directory, cache, bridge, namespaces and subnet.

LOCKSTEP_LAB_ID=N (1-200) names a second lab that runs beside the default one (ID 0) with
its own directory, bridge, namespaces and subnet.  LOCKSTEP_LAB_CACHE may point several labs
at one guest image cache: it only ever holds what `lab image` built.
"""

import os

LAB_ID = int(os.environ.get("LOCKSTEP_LAB_ID", "0") or 0)
_SUFFIX = str(LAB_ID) if LAB_ID else ""
DEFAULT_ROOT = "/var/lib/lockstep-lab"
LAB_ROOT = os.environ.get("LOCKSTEP_LAB_ROOT", DEFAULT_ROOT + ("-" + _SUFFIX if _SUFFIX else ""))
CACHE_DIR = os.environ.get("LOCKSTEP_LAB_CACHE", os.path.join(LAB_ROOT, "cache"))

BRIDGE = "lsvbr" + (_SUFFIX or "0")
NETNS_PREFIX = "lsv{}-".format(_SUFFIX)
SUBNET = "10.77.{}".format(LAB_ID)  # only ever configured on the lab's bridge and in its namespaces
