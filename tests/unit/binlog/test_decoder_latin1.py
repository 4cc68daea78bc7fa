"""The fast ``latin1`` decode of the binlog decoder gives exactly what ``mysql_latin1`` gives.

The decoder reads ``latin1`` columns through a C-level charmap table (a profile
of the sidecar showed the per-character ``str.translate`` as a fifth of its
reading thread); every byte, and any string of them, must decode the same.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cachesync.binlog import decoder
from cachesync.values import mysql_latin1


def test_every_byte_decodes_as_mysql_latin1() -> None:
    for b in range(256):
        assert decoder._latin1(bytes([b])) == mysql_latin1(bytes([b])), hex(b)
    assert decoder._latin1(b"\x80\x81\x8d\x8f\x90\x9d\xff") == "€\x81\x8d\x8f\x90\x9dÿ"


@given(st.binary(max_size=300))
def test_any_bytes_decode_as_mysql_latin1(raw: bytes) -> None:
    assert decoder._latin1(raw) == mysql_latin1(raw)
