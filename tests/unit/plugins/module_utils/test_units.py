"""Sizes: one unit table with libvirt's convention, used by every option and reader that takes a size.

The inventory's reading of guest memory is tested with the inventory (controller side)."""

import pytest

from ansible_collections.lockstep.virt.plugins.module_utils._virt.errors import ValidationError
from ansible_collections.lockstep.virt.plugins.module_utils._virt.spec.domain import memory_mib, normalize_domain_spec
from ansible_collections.lockstep.virt.plugins.module_utils._virt.units import (
    human_size,
    parse_mib,
    parse_size,
    to_bytes,
)
from ansible_collections.lockstep.virt.tests.unit.fakes.units import EVERY_UNIT


@pytest.mark.parametrize("unit,factor", EVERY_UNIT)
def test_every_unit_in_every_spelling(unit, factor):
    for spelling in (unit, unit.lower(), unit.upper()):
        assert parse_size("3" + spelling) == 3 * factor
        assert parse_size("3 " + spelling) == 3 * factor
        assert to_bytes("3", spelling) == 3 * factor


def test_a_number_without_unit_is_the_default_unit():
    assert parse_size(4096) == parse_size("4096") == 4096
    assert parse_size(2, default_unit="MiB") == parse_size("2", default_unit="MiB") == 2 * 1048576
    assert to_bytes("2") == 2048  # libvirt's XML default is KiB
    assert parse_size("1.5GiB") == 1610612736


@pytest.mark.parametrize("value", ["10Q", "ten", "0.5B", True, None, "-1G", -1, "1.5", "G"])
def test_bad_sizes_are_refused_with_the_option_name(value):
    with pytest.raises(ValidationError) as exc:
        parse_size(value, "capacity")
    assert "capacity" in exc.value.msg


def test_unknown_xml_unit_is_refused():
    with pytest.raises(ValidationError):
        to_bytes("1", "parsecs")


def test_whole_mib_only():
    assert parse_mib(64) == parse_mib("64") == parse_mib("65536KiB") == parse_mib("64M") == 64
    assert parse_mib("2GiB") == parse_mib("2G") == 2048
    assert parse_mib("1.5GiB") == 1536
    for value in ("1000KiB", "2GB", "1MB", "1.5"):
        with pytest.raises(ValidationError, match="not a whole number of MiB"):
            parse_mib(value, "spec.memory")


def test_human_size():
    assert human_size(1024**3) == "1 GiB" and human_size(1536 * 1048576) == "1.50 GiB" and human_size(10) == "10 B"
    assert human_size(None) is None


# ---------------------------------------------------------------- every option that takes a size


@pytest.mark.parametrize("key", ["memory", "current_memory"])
@pytest.mark.parametrize("value,mib", [(512, 512), ("512", 512), ("512MiB", 512), ("2G", 2048), ("16384MB", 15625)])
def test_domain_memory_options(key, value, mib):
    spec = {"memory": "64GiB"}
    spec[key] = value
    s = normalize_domain_spec(spec)
    assert s[key + "_mib"] == mib


def test_domain_memory_and_volume_capacity_agree_on_units():
    """The bug this table fixes: 2GB was 2048 MiB in spec.memory but 2*10^9 bytes in a volume's capacity."""
    assert memory_mib("2GiB") * 1048576 == parse_size("2GiB", "capacity")
    assert memory_mib("16384MB") * 1048576 == parse_size("16384MB", "capacity") == 16384 * 10**6
    with pytest.raises(ValidationError, match="not a whole number of MiB"):
        memory_mib("2GB")
