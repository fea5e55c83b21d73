"""The input event contract (DESIGN.md §3-§4): field names, aliases, reason codes."""

CANONICAL_TYPES = ("view", "cart", "remove_from_cart", "purchase")
OTHER_TYPE = "other"
EVENT_TYPE_ALIASES = {
    "page_view": "view",
    "product_view": "view",
    "add_to_cart": "cart",
    "addtocart": "cart",
    "transaction": "purchase",
    "order_completed": "purchase",
    "remove": "remove_from_cart",
}

REQUIRED_FIELDS = ("event_time", "event_type", "user_id")
STRING_FIELDS = ("user_session", "category_code", "brand", "event_id", "ip_address", "country",
                 "city", "device_type", "user_agent", "page_url", "referrer_url")
ID_FIELDS = ("user_id", "product_id", "category_id")  # int or string in, string out

MAX_VALUE_BYTES = 64 * 1024
MAX_FUTURE_SECONDS = 5 * 60
# A price above this is quarantined (price_too_large): sums of prices near 1e308 overflow to
# Infinity, which is not JSON. A billion per item leaves room for any real catalogue and currency.
MAX_PRICE = 1e9

# Quarantine reason codes: one record may carry several.
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_EVENT_TIME = "missing_event_time"
MISSING_EVENT_TYPE = "missing_event_type"
MISSING_USER_ID = "missing_user_id"
UNPARSEABLE_EVENT_TIME = "unparseable_event_time"
EVENT_TIME_IN_FUTURE = "event_time_in_future"
NEGATIVE_PRICE = "negative_price"
PRICE_NOT_A_NUMBER = "price_not_a_number"
PURCHASE_WITHOUT_PRICE = "purchase_without_price"
VALUE_TOO_LARGE = "value_too_large"
PRICE_TOO_LARGE = "price_too_large"

REASON_CODES = (INVALID_JSON, NOT_AN_OBJECT, MISSING_EVENT_TIME, MISSING_EVENT_TYPE, MISSING_USER_ID,
                UNPARSEABLE_EVENT_TIME, EVENT_TIME_IN_FUTURE, NEGATIVE_PRICE, PRICE_NOT_A_NUMBER,
                PURCHASE_WITHOUT_PRICE, VALUE_TOO_LARGE, PRICE_TOO_LARGE)
