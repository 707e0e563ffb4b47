"""A process that holds a POSIX lock on a lease file, as virtlockd does (``HOLDER``: its script)."""

import textwrap

HOLDER = textwrap.dedent(
    """
    import fcntl, os, struct, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    kind = fcntl.F_RDLCK if sys.argv[2] == "read" else fcntl.F_WRLCK
    fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", kind, 0, 0, 1, 0).ljust(32, b"\\0"))
    print("locked", flush=True)
    time.sleep(60)
    """
)
