"""parse_events / valid_events / quarantined_records (DESIGN.md §3-§4) over raw Kafka-shaped rows.

Most cases share one DataFrame (one Spark job) built by the module fixture; each case is a
named raw record, and the tests look its parsed row up by name.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from chispa import assert_column_equality, assert_df_equality
from pyspark.sql import functions as F

from app.events.parse import canonical_event_type, parse_event_time, parse_events, quarantined_records, valid_events

RAW_SCHEMA = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"
TOPIC, PARTITION, FIRST_OFFSET = "ecommerce_events", 3, 1000
KAFKA_TS = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
KIB64 = 64 * 1024
UTC = timezone.utc
NOW = datetime(2024, 5, 1, 12, 30, 0, tzinfo=UTC)  # the parse's "now", fixed: see parse_events(now=...)


def raw_rows(values):
    """values -> Kafka-like rows on TOPIC/PARTITION with consecutive offsets from FIRST_OFFSET."""
    return [(None, v if isinstance(v, (bytes, type(None))) else v.encode("utf-8"),
             TOPIC, PARTITION, FIRST_OFFSET + i, KAFKA_TS) for i, v in enumerate(values)]


_ABSENT = object()  # event(field=_ABSENT) leaves the field out


def event(**fields):
    """A valid event's JSON text; keyword arguments replace, add or remove fields."""
    base = {"event_time": "2019-10-01T00:00:00Z", "event_type": "view", "user_id": 541312140}
    return json.dumps({k: v for k, v in {**base, **fields}.items() if v is not _ABSENT})


def padded_event(total_bytes: int) -> str:
    """A valid event whose UTF-8 value is exactly total_bytes long."""
    shell = event(brand="")
    return event(brand="x" * (total_bytes - len(shell.encode())))


TIME_CASES = [
    ('"2019-10-01 00:00:00 UTC"', datetime(2019, 10, 1, 0, 0, 0, tzinfo=UTC)),
    ('"2019-10-01T00:00:01"', datetime(2019, 10, 1, 0, 0, 1, tzinfo=UTC)),                   # ISO T, naive = UTC
    ('"2019-10-01 00:00:02"', datetime(2019, 10, 1, 0, 0, 2, tzinfo=UTC)),                   # space, naive = UTC
    ('"2019-10-01T00:00:03.250"', datetime(2019, 10, 1, 0, 0, 3, 250000, tzinfo=UTC)),       # fraction
    ('"2019-10-01 00:00:04.123456"', datetime(2019, 10, 1, 0, 0, 4, 123456, tzinfo=UTC)),    # space + micros
    ('"2019-10-01T00:00:05Z"', datetime(2019, 10, 1, 0, 0, 5, tzinfo=UTC)),                  # Z
    ('"2019-10-01T00:00:06.5Z"', datetime(2019, 10, 1, 0, 0, 6, 500000, tzinfo=UTC)),        # fraction + Z
    ('"2019-10-01T02:00:07+02:00"', datetime(2019, 10, 1, 0, 0, 7, tzinfo=UTC)),             # +02:00 offset
    ('"2019-09-30T20:00:08-04:00"', datetime(2019, 10, 1, 0, 0, 8, tzinfo=UTC)),             # negative offset
    ("1569888009000", datetime(2019, 10, 1, 0, 0, 9, tzinfo=UTC)),                           # epoch millis number
    ('"1569888010000"', datetime(2019, 10, 1, 0, 0, 10, tzinfo=UTC)),                        # numeric string
    ("1569888011123", datetime(2019, 10, 1, 0, 0, 11, 123000, tzinfo=UTC)),                  # millis precision
]


def _multibyte(**fields):
    return json.dumps(json.loads(event(**fields)), ensure_ascii=False)


CASES = {
    # --- one record per event_time format (the raw JSON literal is spliced in: number or string)
    **{f"time_{i}": f'{{"event_time": {literal}, "event_type": "view", "user_id": 1}}'
       for i, (literal, _) in enumerate(TIME_CASES)},
    # --- valid records, fields
    "rees46_row": json.dumps({
        "event_time": "2019-10-01 00:00:04 UTC", "event_type": "view", "product_id": 1004237,
        "category_id": 2053013555631882655, "category_code": "electronics.smartphone", "brand": "apple",
        "price": 1081.98, "user_id": 535871217, "user_session": "c6bd7419-2748-4c56-95b4-8cec9ff8b80d"}),
    "string_ids": event(user_id="535871217", product_id="p-1", category_id="2053013555631882655"),
    "empty_optional_strings": event(category_code="", brand="", user_session=""),
    "given_event_id": event(event_id="evt-42"),
    "blank_event_id": event(event_id=""),
    "properties_object": event(properties={"campaign": "fall", "tags": [1, 2], "nested": {"a": None}}),
    "properties_string": event(properties='{"campaign": "fall", "tags": [1, 2]}'),
    "context_fields": event(ip_address="10.0.0.1", country="PL", city="Warsaw", device_type="mobile",
                            user_agent="Mozilla/5.0", page_url="https://shop/p/1", referrer_url="https://g.co"),
    "purchase_price_zero": event(event_type="purchase", price=0),
    "view_without_price": event(event_type="view"),
    "future_4_minutes": event(event_time=(NOW + timedelta(minutes=4)).strftime("%Y-%m-%dT%H:%M:%SZ")),
    "future_4_min_59_s": event(event_time=(NOW + timedelta(minutes=4, seconds=59)).strftime("%Y-%m-%dT%H:%M:%SZ")),
    "exactly_64kib": padded_event(KIB64),
    # --- event type aliases (DESIGN §3), case and surrounding blanks ignored
    "type_view": event(event_type="view"),
    "type_cart": event(event_type="cart"),
    "type_remove_from_cart": event(event_type="remove_from_cart"),
    "type_purchase": event(event_type="purchase", price=1.5),
    "type_page_view": event(event_type="page_view"),
    "type_product_view": event(event_type="product_view"),
    "type_add_to_cart": event(event_type="add_to_cart"),
    "type_addtocart": event(event_type="addtocart"),
    "type_transaction": event(event_type="transaction", price=1.5),
    "type_order_completed": event(event_type="order_completed", price=1.5),
    "type_remove": event(event_type="remove"),
    "type_mixed_case": event(event_type="  Add_To_Cart "),
    "type_unknown": event(event_type="wishlist_add"),
    # --- quarantine, one reason each
    "invalid_json_text": "this is not json",
    "invalid_json_truncated": '{"event_time": "2019-10-01T00:00:00Z", "event_type": ',
    "invalid_json_empty": "",
    "not_object_array": '[{"event_time": "2019-10-01T00:00:00Z", "event_type": "view", "user_id": 1}]',
    "not_object_number": "42",
    "not_object_string": '"view"',
    "missing_event_time_absent": event(event_time=_ABSENT),
    "missing_event_time_empty": event(event_time=""),
    "missing_event_type_absent": event(event_type=_ABSENT),
    "missing_event_type_empty": event(event_type=""),
    "missing_user_id_absent": event(user_id=_ABSENT),
    "missing_user_id_empty": event(user_id=""),
    "missing_user_id_blank": event(user_id="   "),
    "unparseable_time_words": event(event_time="yesterday at noon"),
    "unparseable_time_bad_date": event(event_time="2019-13-45 25:61:00"),
    "future_1_hour": event(event_time=(NOW + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")),
    "future_5_min_1_s": event(event_time=(NOW + timedelta(minutes=5, seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")),
    "negative_price": event(price=-0.01),
    "price_near_double_max": event(price=1e308),
    "price_above_ceiling": event(price=1e9 + 1),
    "price_at_ceiling": event(price=1e9),
    "price_text": event(price="abc"),
    "price_nan": event(price="NaN"),
    "price_boolean": event(price=True),
    "purchase_no_price": event(event_type="purchase"),
    "purchase_null_price": event(event_type="purchase", price=None),
    "too_large": padded_event(KIB64 + 1),
    # --- several reasons at once
    "multi_reasons": json.dumps({"event_type": "purchase", "user_id": "", "price": -5}),
    "multi_time_and_price": json.dumps({"event_time": "soon", "event_type": "order_completed", "user_id": 7}),
    "multi_invalid_and_large": "x" * (KIB64 + 10),
    "null_value": None,
    # --- oversize multi-byte text: truncation must count UTF-8 bytes and not cut a character
    "large_2_byte": _multibyte(brand="é" * 40_000),
    "large_3_byte": _multibyte(brand="a" + "€" * 30_000),
    "large_4_byte": _multibyte(brand="😀" * 20_000),
    "large_4_byte_shifted": _multibyte(brand="ab" + "😀" * 20_000),
}
MULTIBYTE = ["large_2_byte", "large_3_byte", "large_4_byte", "large_4_byte_shifted"]
NAMES = list(CASES)


def offset_of(name: str) -> int:
    return FIRST_OFFSET + NAMES.index(name)


@pytest.fixture(scope="module")
def parsed(spark):
    raw = spark.createDataFrame(raw_rows(CASES.values()), RAW_SCHEMA)
    parsed = raw.transform(parse_events(now=F.lit(NOW))).cache()
    yield parsed
    parsed.unpersist()


@pytest.fixture(scope="module")
def rows(parsed):
    collected = (parsed
                 .withColumn("ts_micros", F.unix_micros("event_timestamp"))
                 .withColumn("kafka_ts_micros", F.unix_micros("kafka_timestamp"))
                 .collect())
    by_offset = {r.kafka_offset: r for r in collected}
    assert len(by_offset) == len(CASES), "parse_events must keep one row per record"
    return {name: by_offset[offset_of(name)] for name in NAMES}


def micros(ts: datetime) -> int:
    return round(ts.timestamp() * 1_000_000)


# ---------------------------------------------------------------- event_time formats




def test_every_event_time_format_gives_the_exact_utc_instant(spark, parsed, rows):
    offsets = [offset_of(f"time_{i}") for i in range(len(TIME_CASES))]
    actual = (parsed
              .filter(F.col("kafka_offset").isin(offsets))
              .select("kafka_offset", "quarantine_reasons", "event_timestamp"))
    expected = spark.createDataFrame(
        [(offset, [], ts) for offset, (_, ts) in zip(offsets, TIME_CASES)],
        "kafka_offset long, quarantine_reasons array<string>, event_timestamp timestamp")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    # Also as epoch micros, independent of any Python-side timezone conversion.
    got = [rows[f"time_{i}"].ts_micros for i in range(len(TIME_CASES))]
    assert got == [micros(ts) for _, ts in TIME_CASES]


def test_parse_event_time_column_helper(spark):
    df = spark.createDataFrame(
        [("2019-10-01 00:00:00 UTC", datetime(2019, 10, 1, tzinfo=UTC)),
         ("2019-10-01T02:00:00+02:00", datetime(2019, 10, 1, tzinfo=UTC)),
         (" 1569888000000 ", datetime(2019, 10, 1, tzinfo=UTC)),
         ("garbage", None),
         (None, None)],
        "event_time string, expected_ts timestamp",
    ).withColumn("actual_ts", parse_event_time(F.col("event_time")))
    assert_column_equality(df, "actual_ts", "expected_ts")


def test_out_of_range_epoch_millis_is_quarantined_and_does_not_fail_the_batch(spark):
    # A poison message must never stop the stream (§4): under ANSI these overflowed the cast.
    values = [event(event_time=99999999999999999999), event(event_time="9999999999999999"),
              event(event_time=-99999999999999999999)]
    result = (spark.createDataFrame(raw_rows(values), RAW_SCHEMA)
              .transform(parse_events())
              .select("quarantine_reasons").collect())
    assert [r.quarantine_reasons for r in result] == [["unparseable_event_time"]] * 3


# ---------------------------------------------------------------- event types


@pytest.mark.parametrize("name, expected", [
    ("type_view", "view"), ("type_cart", "cart"), ("type_remove_from_cart", "remove_from_cart"),
    ("type_purchase", "purchase"),
    ("type_page_view", "view"), ("type_product_view", "view"),
    ("type_add_to_cart", "cart"), ("type_addtocart", "cart"),
    ("type_transaction", "purchase"), ("type_order_completed", "purchase"),
    ("type_remove", "remove_from_cart"),
    ("type_mixed_case", "cart"),
    ("type_unknown", "other"),
])
def test_event_type_is_canonical(rows, name, expected):
    row = rows[name]
    assert row.quarantine_reasons == []
    assert row.event_type == expected


def test_unknown_event_type_keeps_its_raw_name(rows):
    assert rows["type_unknown"].raw_event_type == "wishlist_add"


def test_canonical_event_type_column_helper(spark):
    df = spark.createDataFrame(
        [("PAGE_VIEW", "view"), ("addtocart", "cart"), ("transaction", "purchase"), ("remove", "remove_from_cart"),
         ("cart", "cart"), ("something_else", "other"), ("", None), ("  ", None), (None, None)],
        "event_type string, expected_type string",
    ).withColumn("actual_type", canonical_event_type(F.col("event_type")))
    assert_column_equality(df, "actual_type", "expected_type")


# ---------------------------------------------------------------- fields


def test_rees46_row_comes_through_typed(rows):
    row = rows["rees46_row"]
    assert row.quarantine_reasons == []
    assert row.ts_micros == micros(datetime(2019, 10, 1, 0, 0, 4, tzinfo=UTC))
    assert (row.event_type, row.user_id, row.product_id) == ("view", "535871217", "1004237")
    # 19 digits: must be the exact text, not rounded through a double (2053013555631882752).
    assert row.category_id == "2053013555631882655"
    assert (row.category_code, row.brand, row.price) == ("electronics.smartphone", "apple", 1081.98)
    assert row.user_session == "c6bd7419-2748-4c56-95b4-8cec9ff8b80d"


def test_string_ids_stay_strings(rows):
    row = rows["string_ids"]
    assert (row.user_id, row.product_id, row.category_id) == ("535871217", "p-1", "2053013555631882655")


def test_int_user_id_becomes_string(rows):
    assert rows["type_view"].user_id == "541312140"


def test_empty_optional_strings_become_null(rows):
    row = rows["empty_optional_strings"]
    assert row.quarantine_reasons == []
    assert (row.category_code, row.brand, row.user_session) == (None, None, None)


def test_event_id_is_kept_when_given(rows):
    assert rows["given_event_id"].event_id == "evt-42"


@pytest.mark.parametrize("name", ["type_view", "blank_event_id"])
def test_event_id_defaults_to_topic_partition_offset(rows, name):
    assert rows[name].event_id == f"{TOPIC}:{PARTITION}:{offset_of(name)}"


def test_properties_object_comes_through_as_json_text(rows):
    text = rows["properties_object"].properties
    assert json.loads(text) == {"campaign": "fall", "tags": [1, 2], "nested": {"a": None}}


def test_properties_json_string_comes_through_as_json_text(rows):
    text = rows["properties_string"].properties
    assert json.loads(text) == {"campaign": "fall", "tags": [1, 2]}


def test_context_fields_are_carried(rows):
    row = rows["context_fields"]
    assert (row.ip_address, row.country, row.city, row.device_type, row.user_agent, row.page_url,
            row.referrer_url) == ("10.0.0.1", "PL", "Warsaw", "mobile", "Mozilla/5.0", "https://shop/p/1",
                                  "https://g.co")


def test_kafka_coordinates_are_carried(rows):
    row = rows["rees46_row"]
    assert (row.kafka_topic, row.kafka_partition, row.kafka_offset) == (TOPIC, PARTITION, offset_of("rees46_row"))
    assert row.kafka_ts_micros == micros(KAFKA_TS)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("name", [
    "rees46_row", "string_ids", "empty_optional_strings", "given_event_id", "properties_object",
    "properties_string", "context_fields", "purchase_price_zero", "view_without_price",
    "future_4_minutes", "future_4_min_59_s", "exactly_64kib", "price_at_ceiling",
])
def test_valid_records_have_no_reasons(rows, name):
    assert rows[name].quarantine_reasons == []


@pytest.mark.parametrize("name, reasons", [
    ("invalid_json_text", ["invalid_json"]),
    ("invalid_json_truncated", ["invalid_json"]),
    ("invalid_json_empty", ["invalid_json"]),
    ("not_object_array", ["not_an_object"]),
    ("not_object_number", ["not_an_object"]),
    ("not_object_string", ["not_an_object"]),
    ("missing_event_time_absent", ["missing_event_time"]),
    ("missing_event_time_empty", ["missing_event_time"]),
    ("missing_event_type_absent", ["missing_event_type"]),
    ("missing_event_type_empty", ["missing_event_type"]),
    ("missing_user_id_absent", ["missing_user_id"]),
    ("missing_user_id_empty", ["missing_user_id"]),
    ("missing_user_id_blank", ["missing_user_id"]),
    ("unparseable_time_words", ["unparseable_event_time"]),
    ("unparseable_time_bad_date", ["unparseable_event_time"]),
    ("future_1_hour", ["event_time_in_future"]),
    ("future_5_min_1_s", ["event_time_in_future"]),
    ("negative_price", ["negative_price"]),
    ("price_near_double_max", ["price_too_large"]),
    ("price_above_ceiling", ["price_too_large"]),
    ("price_text", ["price_not_a_number"]),
    ("price_nan", ["price_not_a_number"]),
    ("price_boolean", ["price_not_a_number"]),
    ("purchase_no_price", ["purchase_without_price"]),
    ("purchase_null_price", ["purchase_without_price"]),
    ("too_large", ["value_too_large"]),
    ("multi_reasons", ["missing_event_time", "missing_user_id", "negative_price"]),
    ("multi_time_and_price", ["purchase_without_price", "unparseable_event_time"]),
    ("multi_invalid_and_large", ["invalid_json", "value_too_large"]),
])
def test_quarantine_reasons(rows, name, reasons):
    assert sorted(rows[name].quarantine_reasons) == reasons


def test_null_kafka_value_is_quarantined_not_dropped(rows):
    row = rows["null_value"]
    assert (row.quarantine_reasons, row.raw_size) == (["invalid_json"], 0)


def test_valid_events_keeps_only_valid_records_without_raw_columns(rows, parsed):
    valid = valid_events(parsed)
    assert not {"quarantine_reasons", "raw_value", "raw_size"} & set(valid.columns)
    expected = {r.event_id for r in rows.values() if not r.quarantine_reasons}
    assert {r.event_id for r in valid.select("event_id").collect()} == expected
    assert rows["rees46_row"].event_id in expected and rows["too_large"].event_id not in expected


# ---------------------------------------------------------------- quarantined_records


@pytest.fixture(scope="module")
def quarantined(parsed):
    return quarantined_records(parsed)


def test_quarantined_records_are_exactly_the_records_with_reasons(rows, quarantined):
    expected = {f"{TOPIC}:{PARTITION}:{offset_of(n)}" for n, r in rows.items() if r.quarantine_reasons}
    assert sorted(r._id for r in quarantined.select("_id").collect()) == sorted(expected)


def test_quarantined_records_keep_raw_value_size_reasons_and_coordinates(spark, quarantined):
    names = ["invalid_json_text", "too_large"]
    actual = quarantined.filter(F.col("kafka_offset").isin([offset_of(n) for n in names]))
    expected = spark.createDataFrame(
        [(f"{TOPIC}:{PARTITION}:{offset_of('invalid_json_text')}", "this is not json", 16, False, ["invalid_json"],
          TOPIC, PARTITION, offset_of("invalid_json_text"), KAFKA_TS),
         (f"{TOPIC}:{PARTITION}:{offset_of('too_large')}", CASES["too_large"][:KIB64], KIB64 + 1, True,
          ["value_too_large"], TOPIC, PARTITION, offset_of("too_large"), KAFKA_TS)],
        "_id string, raw_value string, raw_size int, raw_value_truncated boolean, reasons array<string>, "
        "kafka_topic string, kafka_partition int, kafka_offset long, kafka_timestamp timestamp",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_quarantined_raw_value_is_truncated_to_64_kib_of_utf8_bytes(quarantined):
    offsets = [offset_of(n) for n in MULTIBYTE]
    got = {r.kafka_offset: r for r in quarantined.filter(F.col("kafka_offset").isin(offsets)).collect()}
    for name in MULTIBYTE:
        original, row = CASES[name], got[offset_of(name)]
        kept = row.raw_value.encode("utf-8")
        assert row.raw_size == len(original.encode("utf-8")) > KIB64
        assert (row.reasons, row.raw_value_truncated) == (["value_too_large"], True)
        assert KIB64 - 4 < len(kept) <= KIB64, (name, len(kept))
        assert original.startswith(row.raw_value), name
