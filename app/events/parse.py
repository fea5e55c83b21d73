"""Parse and validate raw Kafka records (DESIGN.md §3-§4). Pure DataFrame transforms."""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, functions as F, types as T

from app.events import contract as C

JSON_FIELDS = ("event_time", "event_type", "user_id", "user_session", "product_id", "category_id",
               "category_code", "brand", "price", "event_id", "ip_address", "country", "city",
               "device_type", "user_agent", "page_url", "referrer_url", "properties")
# Every field is read as a string: Spark renders a JSON number or object as its text, so
# "int or string" ids and "object or JSON string" properties need no special casing.
EVENT_JSON_SCHEMA = T.StructType(
    [T.StructField(name, T.StringType()) for name in JSON_FIELDS]
    + [T.StructField("_corrupt_record", T.StringType())]
)
_EPOCH_MILLIS = r"^-?[0-9]+(\.[0-9]+)?$"
_MIN_EPOCH_MILLIS, _MAX_EPOCH_MILLIS = -62135596800000, 253402300799999  # 0001-01-01 .. 9999-12-31Z


def blank_to_null(col: Column) -> Column:
    trimmed = F.trim(col)
    return F.when(trimmed != "", trimmed)


def parse_event_time(col: Column) -> Column:
    """Epoch millis, 'yyyy-MM-dd HH:mm:ss UTC', or ISO-8601 (T or space, fraction, Z/offset; naive = UTC)."""
    text = F.trim(col)
    millis = text.try_cast("double")
    # Out-of-range millis would overflow (an exception under ANSI) and stop the stream: unparseable.
    in_range = millis.between(_MIN_EPOCH_MILLIS, _MAX_EPOCH_MILLIS)
    as_millis = F.when(in_range, F.timestamp_millis(millis.cast("long")))
    return F.when(text.rlike(_EPOCH_MILLIS), as_millis).otherwise(text.try_cast("timestamp"))


def canonical_event_type(col: Column) -> Column:
    name = F.lower(F.trim(col))
    mapping = F.create_map(*[F.lit(x) for pair in C.EVENT_TYPE_ALIASES.items() for x in pair])
    canonical = F.when(name.isin(*C.CANONICAL_TYPES), name).otherwise(mapping[name])
    return F.when(name.isNotNull() & (name != ""), F.coalesce(canonical, F.lit(C.OTHER_TYPE)))


def _reason(condition: Column, code: str) -> Column:
    return F.when(condition, F.lit(code))


def _produced_at() -> Column:
    """The record's Kafka timestamp (kafka_timestamp), null when the record has none (-1: before the epoch)."""
    ts = F.col("kafka_timestamp")
    return F.when(F.unix_micros(ts) >= 0, ts)


def parse_events(max_future_seconds: int = C.MAX_FUTURE_SECONDS, now: Column | None = None):
    """Raw Kafka rows (key, value, topic, partition, offset, timestamp) -> one row per record
    with typed fields and `quarantine_reasons` (empty array = valid).

    `now` is what "in the future" is measured from: by default the record's own Kafka timestamp
    (when it was produced), so the verdict is a function of the record, the same live and in a
    backlog caught up a day later (DESIGN §5). Not the micro-batch's current_timestamp(): that
    quarantined by when a batch ran, so a catch-up after an outage let through events a live run
    had quarantined. A record without a timestamp (-1: Kafka's format before 0.10) gets no future
    check."""
    now = _produced_at() if now is None else now

    def transform(raw: DataFrame) -> DataFrame:
        value = F.col("value").cast("string")
        # inline(array(...)) is a Generate node, which the optimizer cannot collapse into the
        # projections below: without it each of the ~70 uses of a field re-parses the JSON.
        json_struct = F.from_json(value, EVENT_JSON_SCHEMA,
                                  {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt_record"})
        parsed = raw.select(
            F.col("topic").alias("kafka_topic"),
            F.col("partition").alias("kafka_partition"),
            F.col("offset").alias("kafka_offset"),
            F.col("timestamp").alias("kafka_timestamp"),
            value.alias("raw_value"),
            F.coalesce(F.octet_length(F.col("value")), F.lit(0)).alias("raw_size"),
            F.inline_outer(F.array(F.struct(json_struct.alias("j")))),
        )
        starts_like_object = F.ltrim(F.col("raw_value")).startswith("{")
        is_json_scalar_or_array = F.get_json_object(
            F.concat(F.lit('{"v":'), F.col("raw_value"), F.lit("}")), "$.v").isNotNull()
        is_object = starts_like_object & F.col("j").isNotNull() & F.col("j._corrupt_record").isNull()
        event_time_text = blank_to_null(F.col("j.event_time"))
        event_ts = parse_event_time(event_time_text)
        event_type = canonical_event_type(F.col("j.event_type"))
        price_text = blank_to_null(F.col("j.price"))
        price = price_text.try_cast("double")
        price_is_number = price.isNotNull() & ~F.isnan(price) & (F.abs(price) != float("inf"))
        user_id = blank_to_null(F.col("j.user_id"))

        reasons = F.array(
            _reason(~is_object & ~starts_like_object & is_json_scalar_or_array, C.NOT_AN_OBJECT),
            _reason(~is_object & ~(~starts_like_object & is_json_scalar_or_array), C.INVALID_JSON),
            _reason(is_object & event_time_text.isNull(), C.MISSING_EVENT_TIME),
            _reason(is_object & event_type.isNull(), C.MISSING_EVENT_TYPE),
            _reason(is_object & user_id.isNull(), C.MISSING_USER_ID),
            _reason(is_object & event_time_text.isNotNull() & event_ts.isNull(), C.UNPARSEABLE_EVENT_TIME),
            _reason(is_object & (event_ts > now + F.expr(f"INTERVAL {int(max_future_seconds)} SECONDS")),
                    C.EVENT_TIME_IN_FUTURE),
            _reason(is_object & price_text.isNotNull() & ~price_is_number, C.PRICE_NOT_A_NUMBER),
            _reason(is_object & price_is_number & (price < 0), C.NEGATIVE_PRICE),
            _reason(is_object & price_is_number & (price > C.MAX_PRICE), C.PRICE_TOO_LARGE),
            _reason(is_object & (event_type == "purchase") & price_text.isNull(), C.PURCHASE_WITHOUT_PRICE),
            _reason(F.col("raw_size") > C.MAX_VALUE_BYTES, C.VALUE_TOO_LARGE),
        )
        return parsed.select(
            "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "raw_value", "raw_size",
            F.filter(reasons, lambda r: r.isNotNull()).alias("quarantine_reasons"),
            F.coalesce(blank_to_null(F.col("j.event_id")),
                       F.concat_ws(":", "kafka_topic", "kafka_partition", "kafka_offset")).alias("event_id"),
            event_ts.alias("event_timestamp"),
            event_type.alias("event_type"),
            F.trim(F.col("j.event_type")).alias("raw_event_type"),
            user_id.alias("user_id"),
            blank_to_null(F.col("j.user_session")).alias("user_session"),
            blank_to_null(F.col("j.product_id")).alias("product_id"),
            blank_to_null(F.col("j.category_id")).alias("category_id"),
            blank_to_null(F.col("j.category_code")).alias("category_code"),
            blank_to_null(F.col("j.brand")).alias("brand"),
            F.when(price_is_number, price).alias("price"),
            *[blank_to_null(F.col(f"j.{name}")).alias(name)
              for name in ("ip_address", "country", "city", "device_type", "user_agent", "page_url", "referrer_url")],
            F.col("j.properties").alias("properties"),
        )

    return transform


def valid_events(parsed: DataFrame) -> DataFrame:
    return parsed.filter(F.size("quarantine_reasons") == 0).drop("quarantine_reasons", "raw_value", "raw_size")


def utf8_prefix(text: Column, max_bytes: int) -> Column:
    """The longest prefix of `text` that is at most `max_bytes` UTF-8 bytes, never cutting a character
    (a character-count substring would keep up to 4x the bytes of multi-byte text)."""
    data = text.cast("binary")

    def starts_char(pos: int) -> Column:  # false only for a continuation byte 10xxxxxx
        return ~F.substring(F.hex(F.substring(data, pos, 1)), 1, 1).isin("8", "9", "A", "B")

    keep = (F.when(starts_char(max_bytes + 1), max_bytes)
            .when(starts_char(max_bytes), max_bytes - 1)
            .when(starts_char(max_bytes - 1), max_bytes - 2)
            .otherwise(max_bytes - 3))
    return F.substring(data, F.lit(1), keep).cast("string")


def quarantine_columns(kafka_timestamp: Column | None = None) -> list[Column]:
    """A quarantined document's fields: the raw value (truncated past 64 KiB, with its size),
    reasons and Kafka coordinates."""
    return [
        F.concat_ws(":", "kafka_topic", "kafka_partition", "kafka_offset").alias("_id"),
        utf8_prefix(F.col("raw_value"), C.MAX_VALUE_BYTES).alias("raw_value"),
        F.col("raw_size"),
        (F.col("raw_size") > C.MAX_VALUE_BYTES).alias("raw_value_truncated"),
        F.col("quarantine_reasons").alias("reasons"),
        "kafka_topic", "kafka_partition", "kafka_offset",
        F.col("kafka_timestamp") if kafka_timestamp is None else kafka_timestamp,
    ]


def quarantined_records(parsed: DataFrame) -> DataFrame:
    """Bad records as quarantined documents."""
    return parsed.filter(F.size("quarantine_reasons") > 0).select(*quarantine_columns())
