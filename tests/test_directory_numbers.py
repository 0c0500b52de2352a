"""The number normaliser: properties, then the formats trunks actually send."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cti.directory.numbers import normalise_number

digits = st.text(alphabet="0123456789", min_size=1, max_size=18).filter(lambda d: not d.startswith("00"))
separators = st.sampled_from(["", " ", "-", ".", "(", ")"])


@given(digits, st.lists(separators, min_size=0, max_size=5), st.sampled_from(["", "+", "00"]))
def test_separators_and_international_prefix_are_ignored(number: str, seps: list[str], prefix: str) -> None:
    decorated = prefix + "".join(d + (seps[i % len(seps)] if seps else "") for i, d in enumerate(number))
    assert normalise_number(decorated) == number


@given(st.text(max_size=30))
def test_result_is_none_or_ascii_digits_and_idempotent(raw: str) -> None:
    out = normalise_number(raw)
    if out is not None:
        assert out.isascii() and out.isdigit()
        assert normalise_number(out) == out or out.startswith("00")


@pytest.mark.parametrize("raw", ["<unknown>", "", "   ", "anonymous", "12a4", "+", "١٢٣"])
def test_not_a_number(raw: str) -> None:
    assert normalise_number(raw) is None
