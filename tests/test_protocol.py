"""The market-data frame: CRC and signature tell damage in transit from a forged frame."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategylab.fault_tolerance import ErrorType, classify
from strategylab.market import (
    FrameError,
    SignatureError,
    Tick,
    decode_frame,
    decode_ticks,
    encode_frame,
    encode_ticks,
)
from strategylab.market._protocol import KIND_TICKS

KEY = b"k" * 32
PAYLOAD = encode_ticks([Tick("AAPL", n, n, 100.0, 100.5, 1.0, 2.0) for n in range(1, 21)])


def test_signed_frame_round_trips() -> None:
    """A signed frame decodes to its kind and payload with the right key."""
    frame = decode_frame(encode_frame(KIND_TICKS, PAYLOAD, KEY), KEY)
    assert frame.kind == KIND_TICKS
    assert decode_ticks(frame.payload)[0].symbol == "AAPL"


def test_wrong_key_is_a_security_violation() -> None:
    """A frame signed with another key fails as a signature error, a SECURITY_VIOLATION."""
    with pytest.raises(SignatureError) as caught:
        decode_frame(encode_frame(KIND_TICKS, PAYLOAD, b"x" * 32), KEY)
    assert classify(caught.value) is ErrorType.SECURITY_VIOLATION


def test_unsigned_frame_with_a_key_configured_is_refused() -> None:
    """An unsigned frame is refused when the feed expects signatures."""
    with pytest.raises(SignatureError):
        decode_frame(encode_frame(KIND_TICKS, PAYLOAD), KEY)


@given(position=st.integers(min_value=3, max_value=41 + len(PAYLOAD) - 1), bit=st.integers(0, 7))
def test_a_bit_flip_in_transit_is_never_taken_for_a_forgery(position: int, bit: int) -> None:
    """One flipped bit anywhere past magic and version (kind, flags, CRC, signature, payload) is
    a FrameError (INVALID_MARKET_DATA, dropped and replayed), never a SignatureError."""
    data = bytearray(encode_frame(KIND_TICKS, PAYLOAD, KEY))
    data[position] ^= 1 << bit
    with pytest.raises(FrameError) as caught:
        decode_frame(bytes(data), KEY)
    assert not isinstance(caught.value, SignatureError)
    assert classify(caught.value) is ErrorType.INVALID_MARKET_DATA


def test_truncated_signed_frame_is_a_frame_error() -> None:
    """A signed frame cut inside its signature is malformed, not forged."""
    data = encode_frame(KIND_TICKS, PAYLOAD, KEY)[:20]
    with pytest.raises(FrameError) as caught:
        decode_frame(data, KEY)
    assert not isinstance(caught.value, SignatureError)
