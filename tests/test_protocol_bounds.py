"""Control messages are bounded in length, nesting and digits before they are parsed."""

from __future__ import annotations

import pytest

from strategylab.market._protocol import control_bounds_error

LIMITS = {"max_bytes": 1000, "max_depth": 4, "max_digits": 20}


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "subscribed", "symbols": ["A"], "last": {"A": 9223372036854775807}}',
        '{"type": "error", "reason": "[[[[[[[[ 12345678901234567890123 ]]]]]]]]"}',
        '{"reason": "a \\" [[[[[[[[ quote"}',
        '[[[["deep enough"]]]]',
    ],
)
def test_well_formed_control_messages_within_bounds_pass(text: str) -> None:
    """Brackets and digits inside strings do not count; depth and digits at the limit pass."""
    assert control_bounds_error(text, **LIMITS) is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[" * 5 + "]" * 5, "max_depth=4"),
        ('{"a": {"b": {"c": {"d": {"e": 1}}}}}', "max_depth=4"),
        ('{"from_seq": 123456789012345678901}', "max_digits=20"),
        ('{"reason": "' + "x" * 1000 + '"}', "max_bytes=1000"),
        ('"' + "é" * 600 + '"', "max_bytes=1000"),
    ],
)
def test_control_messages_beyond_a_bound_are_refused_naming_it(text: str, named: str) -> None:
    """Too deep, too many digits, too long (in UTF-8 bytes): refused, the bound named."""
    reason = control_bounds_error(text, **LIMITS)
    assert reason is not None
    assert named in reason
