"""`common.header_integer`: the one reader of a header's integer accepts ASCII digits and nothing else."""

from __future__ import annotations

import pytest

from common.header_integer import MAX_DIGITS, header_integer


@pytest.mark.parametrize("value,expected", [("0", 0), ("42", 42), (b"42", 42), (" 7\t", 7), ("0012", 12),
                                            ("9" * MAX_DIGITS, int("9" * MAX_DIGITS))])
def test_ascii_digits_are_read(value, expected):
    assert header_integer(value) == expected


@pytest.mark.parametrize("value", [
    None, "", " ", "²", "¹", "³", "1²", "٣", "１", "-1", "+1", "1.5", "1e3", "0x10", "1 2", "abc",
    "9" * (MAX_DIGITS + 1), "9" * 5000,  # int() of > 4300 digits raises: bounded before it is called
    "é".encode("latin-1"), "²".encode(), b"\x00",
])  # fmt: skip
def test_anything_else_is_none_never_an_exception(value):
    assert header_integer(value) is None
