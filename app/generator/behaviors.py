"""Synthetic sessions, one builder per behavior segment (DESIGN.md §3 events, §7 rules).

Pure: no I/O. Every session lands well inside its segment, far from any threshold,
so a test (or a human reading mongosh output) can tell a rule bug from a data quirk.
"""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

from faker import Faker

# REES46 October 2019 products: (product_id, category_id, category_code, brand, price).
# Empty category_code / brand are kept because the real data has many of them.
CATALOGUE = (
    (44600062, 2103807459595387724, "", "shiseido", 35.79),
    (17300353, 2053013553853497655, "", "creed", 380.96),
    (31500053, 2053013558031024687, "", "luminarc", 41.16),
    (1004237, 2053013555631882655, "electronics.smartphone", "apple", 1081.98),
    (1004545, 2053013555631882655, "electronics.smartphone", "huawei", 566.01),
    (1005011, 2053013555631882655, "electronics.smartphone", "samsung", 900.64),
    (1307067, 2053013558920217191, "computers.notebook", "lenovo", 251.74),
    (1306631, 2053013558920217191, "computers.notebook", "hp", 580.89),
    (1307135, 2053013558920217191, "computers.notebook", "hp", 320.35),
    (1480613, 2053013561092866779, "computers.desktop", "pulser", 908.62),
    (1480714, 2053013561092866779, "computers.desktop", "pulser", 921.49),
    (6200260, 2053013552293216471, "appliances.environment.air_heater", "midea", 47.62),
    (6200688, 2053013552293216471, "appliances.environment.air_heater", "oasis", 28.7),
    (2700239, 2053013563911439225, "appliances.kitchen.refrigerators", "atlant", 283.12),
    (2700618, 2053013563911439225, "appliances.kitchen.refrigerators", "indesit", 349.79),
    (2701605, 2053013563911439225, "appliances.kitchen.refrigerators", "indesit", 424.64),
    (3601505, 2053013563810775923, "appliances.kitchen.washer", "samsung", 463.15),
    (3600575, 2053013563810775923, "appliances.kitchen.washer", "hotpoint-ariston", 275.37),
    (3600163, 2053013563810775923, "appliances.kitchen.washer", "indesit", 179.67),
    (5100855, 2053013553341792533, "electronics.clocks", "apple", 617.52),
    (21403078, 2053013561579406073, "electronics.clocks", "casio", 39.05),
    (21402696, 2053013561579406073, "electronics.clocks", "", 24.97),
    (28719074, 2053013565480109009, "apparel.shoes.keds", "baden", 102.71),
    (28718079, 2053013565362668491, "apparel.shoes.keds", "respect", 66.67),
    (3701388, 2053013565983425517, "appliances.environment.vacuum", "dauscher", 33.21),
    (3701244, 2053013565983425517, "appliances.environment.vacuum", "elenberg", 33.44),
    (3701062, 2053013565983425517, "appliances.environment.vacuum", "gorenje", 90.07),
    (3900821, 2053013552326770905, "appliances.environment.water_heater", "aqua", 33.2),
    (3900746, 2053013552326770905, "appliances.environment.water_heater", "haier", 102.38),
    (3900990, 2053013552326770905, "appliances.environment.water_heater", "ariston", 122.18),
    (1801995, 2053013554415534427, "electronics.video.tv", "haier", 193.03),
    (1801555, 2053013554415534427, "electronics.video.tv", "lg", 462.25),
    (1801551, 2053013554415534427, "electronics.video.tv", "haier", 463.31),
    (4803399, 2053013554658804075, "electronics.audio.headphone", "jbl", 33.21),
    (4804295, 2053013554658804075, "electronics.audio.headphone", "xiaomi", 23.13),
    (4802639, 2053013554658804075, "electronics.audio.headphone", "sony", 218.77),
    (28714755, 2053013565228450757, "apparel.shoes", "respect", 51.22),
    (28717908, 2053013565782098913, "apparel.shoes", "burgerschuhe", 102.45),
    (28716595, 2053013565782098913, "apparel.shoes", "baden", 76.96),
    (16800186, 2053013558316237377, "furniture.kitchen.table", "", 347.5),
    (16800331, 2053013558316237377, "furniture.kitchen.table", "", 154.16),
    (16900137, 2053013558433677895, "furniture.kitchen.table", "", 72.82),
    (2900536, 2053013554776244595, "appliances.kitchen.microwave", "elenberg", 51.46),
    (2900475, 2053013554776244595, "appliances.kitchen.microwave", "gorenje", 295.99),
    (2900418, 2053013554776244595, "appliances.kitchen.microwave", "ava", 53.23),
    (13500240, 2053013557099889147, "furniture.bedroom.bed", "brw", 93.18),
    (13500046, 2053013557099889147, "furniture.bedroom.bed", "", 60.75),
    (13500041, 2053013557099889147, "furniture.bedroom.bed", "brw", 80.31),
)
_BY_CATEGORY: dict[int, list[tuple]] = {}
for _product in CATALOGUE:
    _BY_CATEGORY.setdefault(_product[1], []).append(_product)
_CATEGORY_IDS = sorted(_BY_CATEGORY)

SHOP_URL = "https://shop.example.com"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
# "" is direct traffic. A fixed list, because Faker's url() costs ~0.2 ms (a third of a session).
REFERRERS = ("", "", "https://www.google.com/", "https://www.bing.com/", "https://www.facebook.com/",
             "https://www.instagram.com/", "https://t.co/", "https://news.ycombinator.com/")
# Well under the 30-min session gap, so a generated session never splits in two.
MAX_STEP_S = 170

_RNG = random.Random()
_FAKE = Faker("en_US")  # Faker is slow to build: one per process, reseeded per session


def _session_profile(user_id: int, rng: random.Random) -> dict:
    """Who is browsing: the same person (address, place, device) in every session of a user, so
    honest returning users raise no MULTIPLE_IPS or LOCATION_JUMP; built once per session because
    Faker calls cost tens of µs each."""
    person = random.Random(user_id)
    _FAKE.seed_instance(person.getrandbits(32))
    _lat, _lon, city, country, _tz = _FAKE.location_on_land()
    device = person.choices(("mobile", "desktop", "tablet"), weights=(55, 35, 10))[0]
    return {"ip_address": _FAKE.ipv4_public(), "country": country, "city": city,
            "device_type": device, "user_agent": _FAKE.user_agent(), "referrer_url": rng.choice(REFERRERS)}


def _step_offsets(n_events: int, duration_s: int, rng: random.Random) -> list[int]:
    """Whole-second offsets from 0 to exactly duration_s, every step <= MAX_STEP_S."""
    if n_events == 1:
        return [0]
    weights = [rng.uniform(0.5, 1.5) for _ in range(n_events - 1)]
    steps = [duration_s * w / sum(weights) for w in weights]
    # Pour whatever exceeds the cap into the shorter steps, in proportion to their room:
    # the total is unchanged and, since duration_s <= steps * cap, no step overflows.
    excess = sum(max(s - MAX_STEP_S, 0) for s in steps)
    room = sum(MAX_STEP_S - s for s in steps if s < MAX_STEP_S)
    if excess:
        steps = [min(s, MAX_STEP_S) + (excess * (MAX_STEP_S - s) / room if s < MAX_STEP_S else 0)
                 for s in steps]
    offsets, elapsed = [0], 0.0
    for step in steps:
        elapsed += step
        offsets.append(round(elapsed))
    return offsets


def _duration_s(n_events: int, low_s: int, high_s: int, rng: random.Random) -> int:
    """A duration in [low_s, high_s] that n_events can cover without a step over the cap."""
    return rng.randint(low_s, min(high_s, (n_events - 1) * (MAX_STEP_S - 20)))


def _event_types(views: int, carts: int, removes: int, purchases: int, rng: random.Random) -> list[str]:
    """Always opens with a view; a remove directly follows the cart it undoes; purchases close."""
    units = [["view"]] * views + [["cart"]] * (carts - removes) + [["cart", "remove_from_cart"]] * removes
    rng.shuffle(units)
    return ["view"] + [t for unit in units for t in unit] + ["purchase"] * purchases


def _assign_products(types: list[str], rng: random.Random) -> list[tuple]:
    """Views wander (mostly within one favourite category); carts take the last viewed product,
    removes undo the last cart, purchases check out what is still in the basket."""
    favourite = _BY_CATEGORY[rng.choice(_CATEGORY_IDS)]
    viewed, basket, products = [], [], []
    for event_type in types:
        if event_type == "view":
            pool = favourite if rng.random() < 0.6 else CATALOGUE
            product = rng.choice(viewed) if viewed and rng.random() < 0.2 else rng.choice(pool)
            viewed.append(product)
        elif event_type == "cart":
            product = viewed[-1]
            basket.append(product)
        elif event_type == "remove_from_cart":
            product = basket.pop()
        else:
            product = basket.pop(0) if basket else viewed[-1]
        products.append(product)
    return products


def build_session(user_id: int, session_id: str, base_time: datetime, types: list[str],
                  duration_s: int, rng: random.Random, offsets: list[int] | None = None,
                  products: list[tuple] | None = None) -> list[dict]:
    """Events for one session: the given event types spread over duration_s from base_time."""
    if base_time.tzinfo is None:  # DESIGN §3: naive means UTC
        base_time = base_time.replace(tzinfo=timezone.utc)
    start = base_time.astimezone(timezone.utc)
    profile = _session_profile(user_id, rng)
    offsets = offsets or _step_offsets(len(types), duration_s, rng)
    events = []
    for event_type, product, offset in zip(types, products or _assign_products(types, rng), offsets):
        product_id, category_id, category_code, brand, price = product
        events.append({
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_time": (start + timedelta(seconds=offset)).strftime(TIME_FORMAT),
            "event_type": event_type, "product_id": product_id, "category_id": category_id,
            "category_code": category_code, "brand": brand, "price": price,
            "user_id": user_id, "user_session": session_id,
            "page_url": f"{SHOP_URL}/product/{product_id}", **profile,
        })
    return events


def generate_bouncer_session(user_id, session_id, base_time, rng=None) -> list[dict]:
    """1-2 views under 40 s apart: nothing else happens."""
    rng = rng or _RNG
    n_events = rng.randint(1, 2)
    duration_s = rng.randint(2, 35) if n_events == 2 else 0
    return build_session(user_id, session_id, base_time, ["view"] * n_events, duration_s, rng)


def generate_browser_session(user_id, session_id, base_time, rng=None) -> list[dict]:
    """3-8 events over 2-9 min, no purchase; ~40% leave one product in the cart (abandoned cart)."""
    rng = rng or _RNG
    n_events = rng.randint(3, 8)
    carts = 1 if rng.random() < 0.4 else 0
    types = _event_types(n_events - 1 - carts, carts, 0, 0, rng)
    return build_session(user_id, session_id, base_time, types,
                         _duration_s(n_events, 120, 540, rng), rng)


def generate_engaged_shopper_session(user_id, session_id, base_time, rng=None) -> list[dict]:
    """5-20 events over 3-20 min with 1-2 carts (sometimes one undone) and one purchase."""
    rng = rng or _RNG
    n_events = rng.randint(5, 20)
    carts = rng.randint(1, 2)
    removes = 1 if carts == 2 and rng.random() < 0.3 else 0
    types = _event_types(n_events - 2 - carts - removes, carts, removes, 1, rng)
    return build_session(user_id, session_id, base_time, types,
                         _duration_s(n_events, 180, 1200, rng), rng)


def generate_power_user_session(user_id, session_id, base_time, rng=None) -> list[dict]:
    """35-60 events over 35-70 min with several carts and 1-3 purchases."""
    rng = rng or _RNG
    n_events = rng.randint(35, 60)
    purchases = rng.randint(1, 3)
    carts = rng.randint(purchases, purchases + 3)
    removes = rng.randint(0, carts - purchases)
    types = _event_types(n_events - 1 - carts - removes - purchases, carts, removes, purchases, rng)
    return build_session(user_id, session_id, base_time, types,
                         _duration_s(n_events, 35 * 60, 70 * 60, rng), rng)


SESSION_BUILDERS = {
    "bouncer": generate_bouncer_session,
    "browser": generate_browser_session,
    "engaged_shopper": generate_engaged_shopper_session,
    "power_user": generate_power_user_session,
}


# Risky sessions (DESIGN.md §12): each builder returns the events and the alert types the default
# profile rules must raise for them (app/rules/profiles_v1.yaml), so a test can compare.
HIGH_VALUE = tuple(p for p in CATALOGUE if p[4] >= 500)


def generate_bot_session(user_id, session_id, base_time, rng=None) -> list[dict]:
    """A scraper: 35-50 product views one second apart (machine speed), from one address."""
    rng = rng or _RNG
    n_events = rng.randint(35, 50)
    return build_session(user_id, session_id, base_time, ["view"] * n_events, n_events - 1, rng,
                         offsets=list(range(n_events)))


def generate_fraud_session(user_id, session_id, base_time, rng=None) -> list[dict]:
    """A stolen account: views from three addresses in two countries within ~6 minutes, then a cart
    and a purchase of one expensive product."""
    rng = rng or _RNG
    product = rng.choice(HIGH_VALUE)
    types = ["view"] * 5 + ["cart", "purchase"]
    offsets = [0, 40, 80, 120, 160, 240, 360]
    events = build_session(user_id, session_id, base_time, types, offsets[-1], rng, offsets=offsets,
                           products=[rng.choice(CATALOGUE) for _ in range(4)] + [product] * 3)
    home = events[0]
    _FAKE.seed_instance(rng.getrandbits(32))
    country = next(c for c in (_FAKE.location_on_land()[3] for _ in range(100)) if c != home["country"])
    addresses = [a for a in (_FAKE.ipv4_public() for _ in range(10)) if a != home["ip_address"]][:2]
    for i, event in enumerate(events):
        if i >= 2:  # hops to another address, then another, and to another country
            event["ip_address"] = addresses[(i - 2) % 2]
        if i >= 3:
            event.update(country=country, city="elsewhere")
    return events


RISK_BUILDERS = {"bot": generate_bot_session, "fraud": generate_fraud_session}
RISK_SEGMENTS = {"bot": "browser", "fraud": "engaged_shopper"}  # what the segment rules make of them
