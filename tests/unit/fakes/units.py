"""libvirt's size units, shared by the unit tests of the engine and of the inventory plugin."""

# Written out, not computed from the table under test: libvirt's virScaleInteger convention.
EVERY_UNIT = [
    ("b", 1),
    ("bytes", 1),
    ("K", 1024),
    ("KiB", 1024),
    ("KB", 1000),
    ("M", 1048576),
    ("MiB", 1048576),
    ("MB", 1000000),
    ("G", 1073741824),
    ("GiB", 1073741824),
    ("GB", 1000000000),
    ("T", 1099511627776),
    ("TiB", 1099511627776),
    ("TB", 1000000000000),
    ("P", 1125899906842624),
    ("PiB", 1125899906842624),
    ("PB", 1000000000000000),
    ("E", 1152921504606846976),
    ("EiB", 1152921504606846976),
    ("EB", 1000000000000000000),
]
