"""Fakes that behave like libvirt (read from its source), shared by the unit tests; imported one way:
``from ansible_collections.lockstep.virt.tests.unit.fakes.<name> import ...``."""
