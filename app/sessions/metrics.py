"""Session metrics, exactly as DESIGN.md §6. Pure Python over a session accumulator."""
from __future__ import annotations

from dataclasses import dataclass, field

# The session's event path (behaviour patterns, DESIGN.md §15): its event types in the order
# counted (event time within a batch), a run of one type as one step, the first PATH_STEPS steps.
PATH_STEPS = 8
PATH_SEPARATOR = ">"
TYPE_COUNTERS = {"view": "view_count", "cart": "cart_count", "remove_from_cart": "remove_cart_count",
                 "purchase": "purchase_count"}


@dataclass
class SessionAccumulator:
    """Everything a session's metrics are computed from; small enough to live in the state store."""
    start_ms: int
    end_ms: int
    total_events: int = 0
    view_count: int = 0
    cart_count: int = 0
    remove_cart_count: int = 0
    purchase_count: int = 0
    other_count: int = 0
    products: set = field(default_factory=set)
    categories: set = field(default_factory=set)
    total_amount: float | None = None
    path: list = field(default_factory=list)

    def add(self, event_ms: int, event_type: str, product_id, category_id, price) -> None:
        self.start_ms = min(self.start_ms, event_ms)
        self.end_ms = max(self.end_ms, event_ms)
        self.total_events += 1
        counter = TYPE_COUNTERS.get(event_type, "other_count")
        setattr(self, counter, getattr(self, counter) + 1)
        if product_id is not None:
            self.products.add(product_id)
        if category_id is not None:
            self.categories.add(category_id)
        if len(self.path) < PATH_STEPS and (not self.path or self.path[-1] != event_type):
            self.path.append(event_type)
        if event_type == "purchase":
            self.total_amount = (self.total_amount or 0.0) + (price or 0.0)

    def to_state(self) -> dict:
        state = dict(self.__dict__)
        state["products"], state["categories"] = sorted(self.products), sorted(self.categories)
        state["path"] = list(self.path)
        return state

    @classmethod
    def from_state(cls, state: dict) -> "SessionAccumulator":
        # A state written before paths existed has none: the path starts from the next event.
        return cls(**{**state, "products": set(state["products"]), "categories": set(state["categories"]),
                      "path": list(state.get("path", []))})


def _rate(numerator: int, denominator: int) -> float:
    return round(100.0 * numerator / denominator, 2) if denominator else 0.0


def event_path(acc: SessionAccumulator) -> str:
    return PATH_SEPARATOR.join(acc.path)


def session_metrics(acc: SessionAccumulator) -> dict:
    duration_minutes = (acc.end_ms - acc.start_ms) / 60_000.0
    return {
        # Not rounded: the segment thresholds compare against the exact duration.
        "session_duration_minutes": duration_minutes,
        "total_events": acc.total_events,
        "view_count": acc.view_count,
        "cart_count": acc.cart_count,
        "remove_cart_count": acc.remove_cart_count,
        "purchase_count": acc.purchase_count,
        "other_count": acc.other_count,
        "unique_products": len(acc.products),
        "unique_categories": len(acc.categories),
        "total_amount": None if acc.total_amount is None else round(acc.total_amount, 2),
        "engagement_rate": round(acc.total_events / max(duration_minutes, 1.0), 2),
        "cart_conversion_rate": _rate(acc.cart_count, acc.view_count),
        "purchase_conversion_rate": _rate(acc.purchase_count, acc.cart_count),
        "overall_conversion_rate": _rate(acc.purchase_count, acc.view_count),
    }
