"""app/sinks/packing.py: list items stored one JSON string each (FerretDB's cost is per value)."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import bson
import pytest
from hypothesis import given, strategies as st

from app.sinks.packing import pack_items, packed, unpack_items, unpacked

_dates = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))  # BSON keeps milliseconds
_leaf = st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False) | st.text(max_size=8) | _dates
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6).filter(lambda k: k != "$date"), inner, max_size=3), max_leaves=12)
_item = st.dictionaries(st.text(max_size=6).filter(lambda k: k != "$date"), _value, max_size=5)


def _aware(value):
    """What a stored item reads back as: every date aware, in UTC."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc)
    if isinstance(value, dict):
        return {k: _aware(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_aware(v) for v in value]
    return value


@given(st.lists(_item, max_size=4))
def test_items_read_back_as_written_through_bson_with_their_dates_aware(items):
    stored = bson.decode(bson.encode({"items": pack_items(items)}))["items"]
    assert all(isinstance(s, str) for s in stored)
    assert unpack_items(stored) == [_aware(i) for i in items]
    assert pack_items(unpack_items(stored)) == stored  # the same document gives the same text


def test_a_list_stored_nested_reads_as_it_is_and_other_fields_are_left_alone():
    doc = {"_id": "x", "items": [{"a": 1}, '{"b":{"$date":0}}'], "hours": [datetime(2026, 1, 1)]}
    back = unpacked(doc, ("items",))
    assert back["items"] == [{"a": 1}, {"b": datetime(1970, 1, 1, tzinfo=timezone.utc)}]
    assert back["hours"] is doc["hours"] and unpacked(None, ("items",)) is None
    assert packed({"_id": "x"}, ("items",)) == {"_id": "x"}
    assert math.isnan(unpack_items(pack_items([{"p": float("nan")}]))[0]["p"])


def test_a_value_json_cannot_hold_stops_the_write_naming_its_type():
    with pytest.raises(TypeError, match="Decimal"):
        from decimal import Decimal
        pack_items([{"price": Decimal("1.5")}])
