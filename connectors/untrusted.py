"""Guards for untrusted text and JSON, shared by every connector.

Everything a connector reads comes from outside (a Kafka producer, a file
someone dropped, a PACS), so before any value is used:

* **Bytes are strict UTF-8.** A leading UTF-8 byte-order mark is accepted and
  stripped; anything else that is not UTF-8 (including UTF-16 with its BOM,
  which :func:`json.loads` would otherwise guess at) is an
  :class:`~surveillance.core.errors.InvalidRecord` "not valid UTF-8".
* **JSON is bounded.** A record larger than ``max_bytes`` (default 1 MiB) is
  refused before decoding; nesting deeper than ``max_depth`` (default 32) is
  refused by a linear pre-scan before :func:`json.loads` recurses (so ``[`` x
  100000 is a dead letter, never a ``RecursionError``). ``NaN``/``Infinity``
  (not JSON) and duplicate keys in one object (two parsers could disagree on
  which one wins) are refused too.
* **Text fields hold no control characters.** Identifiers, names and codes
  never legitimately contain C0 control characters (U+0000..U+001F) or unpaired
  surrogates; PostgreSQL cannot store a NUL in a text column at all. Where a
  field is free text, tab, CR and LF are allowed (``free_text=True``).

Reasons never echo more than a short, ``repr``-escaped excerpt of a value.

Speed (issue 11): :func:`decode_json` first tries a fast path on bytes:
orjson (a strict RFC 8259 decoder in C: it refuses invalid UTF-8, ``NaN``,
lone surrogate escapes and nesting beyond 1024 levels without recursing in
Python), then two checks on the raw bytes with string literals cut out:
the number of ``:`` outside strings (every key, duplicates included) must
equal the keys of the decoded objects (a duplicate would have collapsed
one), and the bracket nesting must stay within ``max_depth``. Anything the
fast path is not sure of (a leading BOM, an integer of 19 or more digits,
which orjson turns into a float, any decoder error, a count or depth that
does not fit) goes the reference way (:func:`_decode_json_reference`:
``json.loads`` with the duplicate and constant hooks after the linear depth
pre-scan), so every accepted value and every rejection reason is exactly
the reference's. ``tests/test_connectors/test_fast_intake.py`` checks the two
paths against each other on the hostile corpus and on fuzzed documents.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from surveillance.core.errors import InvalidRecord

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays/objects accepted in one JSON record."""
MAX_RECORD_BYTES = 1 << 20
"""Largest JSON record (one Kafka value, one JSONL line) accepted, in bytes."""

UTF8_BOM = b"\xef\xbb\xbf"

# C0 controls and unpaired surrogates; the free-text variant allows TAB, LF, CR.
_CONTROL = re.compile("[\x00-\x1f\ud800-\udfff]")
CONTROL_CHARACTERS = _CONTROL
"""What no identifier or code may hold (:func:`check_text`); one ``search`` over the
concatenated fields of a record is the fast paths' single scan."""
_CONTROL_FREE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
# A JSON string (possessive: linear time) or one bracket.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]', re.DOTALL)


def shown(value: Any, limit: int = 48) -> str:
    """``repr(value)``, cut to about ``limit`` characters (for reasons)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def control_character_reason(value: str, field: str, *, free_text: bool = False) -> str | None:
    """Why ``value`` may not be stored as field ``field``, or None if it may."""
    found = (_CONTROL_FREE_TEXT if free_text else _CONTROL).search(value)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return f"field {field!r} contains a NUL byte"
    if "\ud800" <= char <= "\udfff":
        return f"field {field!r} contains an unpaired surrogate (not valid Unicode)"
    return f"field {field!r} contains a control character (U+{ord(char):04X})"


def check_text(value: str, field: str, *, free_text: bool = False) -> str:
    """``value`` unchanged, or InvalidRecord if it holds a control character."""
    reason = control_character_reason(value, field, free_text=free_text)
    if reason is not None:
        raise InvalidRecord(reason)
    return value


def find_control_characters(obj: Any, path: str = "", *, free_text: bool = True) -> str | None:
    """The reason for the first string (key or value) in ``obj`` with a control character.

    Walks dicts and lists (JSON-decoded data, so the depth is already bounded);
    ``path`` names the place (``conclusionCode[0].coding[0].code``).
    """
    stack: list[tuple[str, Any]] = [(path, obj)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            reason = control_character_reason(item, where or "value", free_text=free_text)
            if reason is not None:
                return reason
        elif isinstance(item, dict):
            for key, value in item.items():
                name = f"{where}.{key}" if where else str(key)
                if isinstance(key, str):
                    reason = control_character_reason(key, f"{name} (key)", free_text=False)
                    if reason is not None:
                        return reason
                stack.append((name, value))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", value) for i, value in enumerate(item))
    return None


def decode_utf8(data: bytes | bytearray | memoryview) -> str:
    """Strict UTF-8 (a leading BOM stripped), or InvalidRecord "not valid UTF-8"."""
    raw = bytes(data)
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord(
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from exc


def _encoded_size(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def check_depth(text: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """InvalidRecord if JSON ``text`` nests arrays/objects deeper than ``max_depth``.

    A linear scan that skips string literals; it runs before :func:`json.loads`,
    whose C decoder would otherwise recurse once per level.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise InvalidRecord(
                    f"JSON nests arrays/objects deeper than the limit of {max_depth} levels"
                )
        elif token in "]}":
            depth = max(depth - 1, 0)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRecord(f"duplicate key {shown(key)} in a JSON object")
            seen.add(key)
    return obj


def _no_constants(name: str) -> Any:
    raise InvalidRecord(f"not valid JSON: {name} is not a JSON number")


# The fast path's helpers (see the module docstring).
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_LONG_INTEGER = re.compile(rb"[0-9]{19}")  # orjson decodes past 64 bits as a float
_FLAT_RECORD = re.compile(rb"\{(?:\{(?:\[\])?\})*\}")
_FAST_FAILED = object()


def _object_keys(obj: Any) -> int:
    """Keys of every object in decoded JSON ``obj`` (a dict or a list)."""
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            total += len(item)
            values: Any = item.values()
        else:
            values = item
        for value in values:
            if type(value) is dict or type(value) is list:
                stack.append(value)
    return total


def _decode_fast(data: bytes, max_depth: int) -> Any:
    """``data`` decoded when the fast path is sure, else :data:`_FAST_FAILED`.

    Sure means: orjson accepted it, and the reference path would accept it and
    decode the same value (no duplicate key, no nesting beyond ``max_depth``,
    no integer orjson would turn into a float, no leading BOM).
    """
    if data[:3] == UTF8_BOM:
        return _FAST_FAILED
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _FAST_FAILED
    if type(obj) is not dict and type(obj) is not list:
        # a scalar: no key, no nesting; only a long integer can differ
        return _FAST_FAILED if _LONG_INTEGER.search(data) else obj
    text = data
    if b"\\" in text:
        # Escapes live only inside strings (orjson accepted the document); drop
        # escaped backslashes, then escaped quotes, so the quotes left are delimiters.
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(text.split(b'"')[::2])  # the document less its string literals
    if _LONG_INTEGER.search(outside):
        return _FAST_FAILED
    brackets = outside.translate(None, _NOT_BRACKETS)
    if type(obj) is dict and _FLAT_RECORD.fullmatch(brackets):
        # an object whose containers are objects holding at most one leaf array (a
        # topic record, a DICOM JSON header without sequences or person names):
        # its keys are counted without walking it, and it nests 3 levels at most
        keys = len(obj)
        for value in obj.values():
            if type(value) is dict:
                keys += len(value)
        return obj if outside.count(b":") == keys else _FAST_FAILED
    if outside.count(b":") != _object_keys(obj):
        return _FAST_FAILED  # a duplicate key collapsed: the reference names it
    brackets = brackets.translate(_BRACKETS_ONLY)
    if len(brackets) > 2 * max_depth:
        for _ in range(max_depth):  # each pass removes the innermost level
            brackets = brackets.replace(b"[]", b"")
            if not brackets:
                break
        if brackets:
            return _FAST_FAILED  # too deep: the reference says so
    return obj


def decode_json(
    data: bytes | bytearray | memoryview | str,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    max_bytes: int | None = MAX_RECORD_BYTES,
) -> Any:
    """Decode one untrusted JSON document within the limits (InvalidRecord otherwise).

    ``max_bytes=None`` skips the size check (for whole files whose size the
    caller has already bounded). Bytes take the fast path first (module
    docstring); the result and every reason are those of the reference path.
    """
    if type(data) is bytes and (max_bytes is None or len(data) <= max_bytes):
        obj = _decode_fast(data, max_depth)
        if obj is not _FAST_FAILED:
            return obj
    return _decode_json_reference(data, max_depth=max_depth, max_bytes=max_bytes)


def _decode_json_reference(
    data: bytes | bytearray | memoryview | str,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    max_bytes: int | None = MAX_RECORD_BYTES,
) -> Any:
    """The reference decoder: what :func:`decode_json` accepts and why it refuses."""
    if isinstance(data, str):
        text = data
        if max_bytes is not None and len(text) > max_bytes // 4:
            size = _encoded_size(text)
            if size > max_bytes:
                raise InvalidRecord(f"record is larger than the limit of {max_bytes} bytes")
    else:
        if max_bytes is not None and len(data) > max_bytes:
            raise InvalidRecord(f"record is larger than the limit of {max_bytes} bytes")
        text = decode_utf8(data)
    text = text.removeprefix("\ufeff")
    check_depth(text, max_depth)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError as exc:  # the pre-scan makes this unreachable; belt and braces
        raise InvalidRecord("JSON nests arrays/objects too deeply") from exc
    except ValueError as exc:
        raise InvalidRecord(f"not valid JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Line:
    """One physical line of a file: 1-based ``number``, ``data`` without its newline.

    ``too_long`` is True when the line passed the limit; ``data`` then holds only
    its first ``max_bytes + 1`` bytes (the rest was skipped, never buffered).
    """

    number: int
    data: bytes
    too_long: bool = False


def iter_lines(handle: IO[bytes], max_bytes: int = MAX_RECORD_BYTES) -> Iterator[Line]:
    """The physical lines of a binary file, each bounded by ``max_bytes``.

    A line is ended by ``\\n`` (a ``\\r`` before it is removed); memory stays
    bounded by ``max_bytes`` whatever the file holds.
    """
    number = 0
    while True:
        chunk = handle.readline(max_bytes + 1)
        if not chunk:
            return
        number += 1
        if chunk.endswith(b"\n") or len(chunk) <= max_bytes:
            yield Line(number, chunk.rstrip(b"\n").removesuffix(b"\r"))
            continue
        # longer than the limit: skip the rest of this line without keeping it
        while True:
            rest = handle.readline(1 << 16)
            if not rest or rest.endswith(b"\n"):
                break
        yield Line(number, chunk, too_long=True)


__all__ = [
    "CONTROL_CHARACTERS",
    "MAX_JSON_DEPTH",
    "MAX_RECORD_BYTES",
    "UTF8_BOM",
    "Line",
    "check_depth",
    "check_text",
    "control_character_reason",
    "decode_json",
    "decode_utf8",
    "find_control_characters",
    "iter_lines",
    "shown",
]
