"""The market-data wire protocol between the exchange simulator and a feed.

Market data travels as binary WebSocket messages, one *frame* each::

    offset  size  field
    0       2     magic b"SL"
    2       1     version (1)
    3       1     kind: b"T" ticks, b"H" heartbeat, b"R" replay done, b"C" control reply
    4       1     flags: bit 0 = signed
    5       4     CRC32 over kind, flags, signature and payload, big-endian
    9       32    HMAC-SHA256 over kind + payload, present only when signed
    9|41    ...   payload, msgpack

The CRC covers everything a bit flip in transit could reach that the header check does not, the
signature included, so damage in transit is always a :class:`FrameError` (dropped and replayed)
and never mistaken for a forged frame; a frame whose CRC holds but whose HMAC does not was signed
with another key: a :class:`SignatureError`.

A ticks payload is an array of ticks (each ``[symbol, seq, ts, bid, ask, bid_size, ask_size]``),
possibly for several symbols, each symbol's ticks in sequence order. A heartbeat payload is
``{"ts": ns, "last": {symbol: last_seq}}``; a replay-done payload is ``{"symbol": s, "to_seq": n}``.

Control messages from the feed are JSON text messages:
``{"op": "subscribe", "symbols": [...], "from_seq": {symbol: n}, "session": s}`` asks for live
ticks and, where ``from_seq`` is given, a replay of retained history from that sequence on
(inclusive); ``session`` is a random token the feed draws for each connection.
``{"op": "replay", "symbol": s, "from_seq": a, "to_seq": b}`` asks for a range again.

The exchange answers (a :class:`ControlReply`). Without a signing key the answer is a JSON text
message; **with a key it is a signed** ``b"C"`` **frame** whose msgpack payload also carries the
subscriber's ``session``, and a replay-done frame carries it too. A feed with a key therefore
treats every text message as forged (it could change the feed's state: declare a range lost,
answer a subscription) and refuses a control frame or replay-done frame of another session (a
signed answer captured on one connection and replayed on another). Heartbeats are broadcast
unbound to a session: replayed, they only repeat sequences the exchange had already reached,
which the feed asks for again and the exchange clamps. Answers are
``{"type": "subscribed", "symbols": [...], "last": {...}}`` or
``{"type": "error", "reason": "..."}`` (for example when a range is no longer retained, with
``symbol``, ``from_seq`` and ``to_seq``). A subscribe naming symbols the exchange does not know is
answered ``{"type": "error", "reason": "unknown symbols", "unknown": [...]}`` and then
``subscribed`` for the known ones (possibly none: heartbeats only); one bad symbol never blocks
the others.

Closing, the exchange uses 1013 (Try Again Later) when it drops a subscriber that fell behind; a
feed waits at least a floor before reconnecting after 1012 or 1013.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from typing import Final, Literal, TypeVar

import msgspec

from strategylab.errors import StrategyLabError
from strategylab.fault_tolerance import ErrorType

from ._tick import Tick

__all__ = [
    "KIND_CONTROL",
    "KIND_HEARTBEAT",
    "KIND_REPLAY_DONE",
    "KIND_TICKS",
    "ControlReply",
    "Frame",
    "FrameError",
    "Heartbeat",
    "ReplayDone",
    "ReplayRequest",
    "SignatureError",
    "Subscribe",
    "control_bounds_error",
    "decode_frame",
    "decode_ticks",
    "encode_frame",
    "encode_ticks",
]

_T = TypeVar("_T")
MAGIC: Final = b"SL"
VERSION: Final = 1
KIND_TICKS: Final = b"T"
KIND_HEARTBEAT: Final = b"H"
KIND_REPLAY_DONE: Final = b"R"
KIND_CONTROL: Final = b"C"
_SIGNED: Final = 0x01
_HEADER = struct.Struct(">2sBcBI")  # magic, version, kind, flags, crc32
_SIG_LEN: Final = 32


class FrameError(StrategyLabError):
    """A frame is malformed or its CRC does not match: drop it, count it, replay the range."""

    error_type = ErrorType.INVALID_MARKET_DATA


class SignatureError(FrameError):
    """A frame's HMAC signature is missing or wrong: a security violation, not noise."""

    error_type = ErrorType.SECURITY_VIOLATION


class Heartbeat(msgspec.Struct, frozen=True):
    """The exchange is alive; ``last`` is the last sequence it emitted per symbol."""

    ts: int
    last: dict[str, int]


class ReplayDone(msgspec.Struct, frozen=True):
    """A requested replay has been sent in full (``session``: the subscriber's, see above).

    ``request_id`` echoes the request's, so that a feed tells the answer to its current request
    from a late answer to an earlier one; ``to_seq`` below what that request asked for means the
    exchange never emitted more (it clamps a replay to what it has)."""

    symbol: str
    to_seq: int
    session: str = ""
    request_id: int = 0


class ControlReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """Exchange → feed: the answer to a control message (JSON text, or a signed ``b"C"`` frame).

    ``type`` is ``"subscribed"`` (with ``symbols``, ``last`` and ``heartbeat_interval``, the
    seconds between two of the exchange's heartbeats, which a feed's stale detection adapts to;
    absent from older exchanges) or ``"error"`` (with
    ``reason`` and, for a range no longer retained, ``symbol``/``from_seq``/``to_seq``; for
    unknown symbols, ``unknown``). ``session`` echoes the subscriber's session token.
    """

    type: str
    reason: str | None = None
    symbol: str | None = None
    from_seq: int | None = None
    to_seq: int | None = None
    unknown: list[str] | None = None
    symbols: list[str] | None = None
    last: dict[str, int] | None = None
    heartbeat_interval: float | None = None
    session: str = ""


class Subscribe(msgspec.Struct, frozen=True, tag_field="op", tag="subscribe"):
    """Feed → exchange: live ticks for ``symbols``, replaying from ``from_seq`` where given."""

    symbols: list[str]
    from_seq: dict[str, int] = {}
    session: str = ""


class ReplayRequest(msgspec.Struct, frozen=True, tag_field="op", tag="replay"):
    """Feed → exchange: send ``symbol``'s ticks ``from_seq``..``to_seq`` (inclusive) again."""

    symbol: str
    from_seq: int
    to_seq: int
    request_id: int = 0
    """Echoed in the :class:`ReplayDone` (0: none)."""


class Frame(msgspec.Struct, frozen=True, gc=False):
    """A decoded, verified frame: its kind and its still-encoded payload."""

    kind: bytes
    payload: bytes


_tick_encoder = msgspec.msgpack.Encoder()
_ticks_decoder = msgspec.msgpack.Decoder(list[Tick])
_heartbeat_decoder = msgspec.msgpack.Decoder(Heartbeat)
_replay_done_decoder = msgspec.msgpack.Decoder(ReplayDone)
_control_decoder = msgspec.msgpack.Decoder(ControlReply)
CONTROL_DECODER: Final = msgspec.json.Decoder(Subscribe | ReplayRequest)


def _signature(key: bytes, kind: bytes, payload: bytes) -> bytes:
    return hmac.digest(key, kind + payload, hashlib.sha256)


def _crc(kind: bytes, flags: int, signature: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(signature, zlib.crc32(kind + bytes((flags,)))))


def encode_frame(kind: bytes, payload: bytes, key: bytes | None = None) -> bytes:
    """One frame; signed with HMAC-SHA256 when ``key`` is given."""
    if key is None:
        return _HEADER.pack(MAGIC, VERSION, kind, 0, _crc(kind, 0, b"", payload)) + payload
    signature = _signature(key, kind, payload)
    crc = _crc(kind, _SIGNED, signature, payload)
    return _HEADER.pack(MAGIC, VERSION, kind, _SIGNED, crc) + signature + payload


def decode_frame(data: bytes, key: bytes | None = None) -> Frame:
    """Parse and verify one frame.

    Raises :class:`FrameError` for a malformed frame or a CRC mismatch and :class:`SignatureError`
    when a key is configured and the signature is missing or wrong.
    """
    size = _HEADER.size
    if len(data) < size:
        raise FrameError(f"frame of {len(data)} bytes is shorter than its {size}-byte header")
    magic, version, kind, flags, crc = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise FrameError(f"bad frame header: magic={magic!r} version={version}")
    signed = flags & _SIGNED
    start = size + _SIG_LEN if signed else size
    if len(data) < start:
        raise FrameError(f"signed frame of {len(data)} bytes is shorter than its signature")
    signature, payload = data[size:start], data[start:]
    if _crc(kind, flags, signature, payload) != crc:
        raise FrameError(f"CRC mismatch on a {kind!r} frame of {len(data)} bytes")
    if key is not None:
        if not signed:
            raise SignatureError(f"unsigned {kind!r} frame while a signing key is configured")
        if not hmac.compare_digest(signature, _signature(key, kind, payload)):
            raise SignatureError(f"bad HMAC signature on a {kind!r} frame")
    return Frame(kind=kind, payload=payload)


def encode_ticks(ticks: list[Tick]) -> bytes:
    """The msgpack payload of a ticks frame (also the record format of the exchange's log)."""
    return _tick_encoder.encode(ticks)


def decode_ticks(payload: bytes) -> list[Tick]:
    """Decode a ticks payload; a payload of the wrong shape raises :class:`FrameError`."""
    try:
        return _ticks_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise FrameError(f"undecodable ticks payload: {exc}") from exc


def encode_heartbeat(heartbeat: Heartbeat) -> bytes:
    """The msgpack payload of a heartbeat frame."""
    return _tick_encoder.encode(heartbeat)


def decode_heartbeat(payload: bytes) -> Heartbeat:
    """Decode a heartbeat payload; raises :class:`FrameError` on a bad one."""
    return _decode(_heartbeat_decoder, payload, "heartbeat")


def encode_replay_done(done: ReplayDone) -> bytes:
    """The msgpack payload of a replay-done frame."""
    return _tick_encoder.encode(done)


def decode_replay_done(payload: bytes) -> ReplayDone:
    """Decode a replay-done payload; raises :class:`FrameError` on a bad one."""
    return _decode(_replay_done_decoder, payload, "replay-done")


def encode_control(reply: ControlReply) -> bytes:
    """The msgpack payload of a control frame."""
    return _tick_encoder.encode(reply)


def decode_control(payload: bytes) -> ControlReply:
    """Decode a control-frame payload; raises :class:`FrameError` on a bad one."""
    return _decode(_control_decoder, payload, "control")


def _decode(decoder: msgspec.msgpack.Decoder[_T], payload: bytes, what: str) -> _T:
    try:
        return decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise FrameError(f"undecodable {what} payload: {exc}") from exc


def control_bounds_error(  # noqa: C901 - one pass, a branch per character class
    text: str, *, max_bytes: int, max_depth: int, max_digits: int
) -> str | None:
    """Why a JSON control message is refused before it is parsed, or None: longer than
    ``max_bytes`` (UTF-8 bytes, checked first), nested deeper than ``max_depth`` arrays/objects,
    or a number with more than ``max_digits`` digits. One linear pass, strings skipped."""
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        return f"longer than max_bytes={max_bytes}"
    depth = digits = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if "0" <= char <= "9":
            digits += 1
            if digits > max_digits:
                return f"a number with more than max_digits={max_digits} digits"
            continue
        digits = 0
        if char in "[{":
            depth += 1
            if depth > max_depth:
                return f"nested deeper than max_depth={max_depth}"
        elif char in "]}":
            depth -= 1
        elif char == '"':
            in_string = True
    return None


ControlKind = Literal["subscribe", "replay"]
