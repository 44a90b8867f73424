"""One rule for sizes in bytes, shared by ``--memory-budget`` and the configuration file."""

from __future__ import annotations

import re

import pytest

from strategylab._validate import byte_size
from strategylab.errors import ConfigurationError

PIB = 1 << 50


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (5, 5),
        ("10", 10),
        ("512M", 512 * 1024**2),
        ("512m", 512 * 1024**2),
        ("512MiB", 512 * 1024**2),
        ("512MB", 512 * 1000**2),
        ("2kB", 2000),
        ("1024T", PIB),
    ],
)
def test_units(value: object, size: int) -> None:
    assert byte_size("k", value, maximum=PIB) == size


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", ">= 1"),
        ("1025T", "at most 1024T (1 PiB"),
        ("99999999999999999999999G", "at most 1024T"),
        ("12X", "must be bytes"),
        ("1Mi", "ends in iB"),
        ("-1", "must be bytes"),
        (True, "integer"),
    ],
)
def test_refusals_name_the_key(value: object, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)) as caught:
        byte_size("degradation.memory_budget", value, maximum=PIB)
    assert "degradation.memory_budget" in str(caught.value)
