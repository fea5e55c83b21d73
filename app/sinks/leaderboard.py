"""Users by engagement score, in live_feed, for /v1/users/segments on FerretDB (reads by _id
only): the activity query (app/sinks/user_activity.py) keeps each user's engagement score and last
segment (`rank`, from the user's newest profile row) in the user's user_activity document, and
files every change here, as open_sessions does for open sessions.

    {_id: ["rank", key], scores: [{score, count, pages: [{prefix, count}, ...]}, ...]}
        the key's non-empty scores, highest first, each with its non-empty pages in prefix order
    {_id: ["rank", key, score, prefix], members: [user_id, ...]}
        the key's users of that score whose id starts with `prefix` (its first PREFIX characters),
        ascending
    {_id: ["rank", key, "head"], members: [{user_id, **fields}, ...]}
        the key's first HEAD users in that order, with the fields /v1/users/segments returns (the
        rank's `fields`), so a request for at most HEAD users reads one document; its members
        stored packed, one JSON string each (app/sinks/packing.py: FerretDB 1.24 reads a document
        value by value, and 100 users of 11 fields nested are 1,100 values); a head an earlier
        version stored nested reads as it is
    key: ALL (every user with a profile) or a last_segment

So the pages of a score, in prefix order, list its users in _id order, and the API's order, the
most engaged first and then by _id (the user_profiles query's), is one walk from the top.
Where a user is filed is a function of its id, score and segment alone, and a page is a set: the
documents are a function of the users' latest ranks, whatever the batch cuts, and a move made
twice is made once (app/sinks/exactly_once.py 14); a head is the first HEAD of those, with their
latest fields, rebuilt whenever its key's pages change or one of its users' fields does. The index's counts are taken from the pages
it lists as written, so an index left behind by a crash is mended by the replay, which touches
the same pages again. (No list in a list: FerretDB 1.24 refuses nested arrays.) A page holds
~12 bytes a member: 16 MB at ~1,000,000 users of one score and segment whose ids share their
first PREFIX characters (numeric ids spread over 90 prefixes).
"""
from __future__ import annotations

import json

from app.sinks.packing import pack_items, unpack_item, unpack_items

ALL = "*"
PREFIX = 2
HEAD = 100  # the API's default limit
# what /v1/users/segments returns of a user (user_profiles' fields), kept in the rank and the heads
FIELDS = ("last_segment", "engagement_score", "interest_score", "intent_score", "conversion_probability",
          "behavior_pattern", "sessions", "total_events", "total_revenue", "last_seen")


def index_id(key: str) -> str:
    return json.dumps(["rank", key], separators=(",", ":"))


def head_id(key: str) -> str:
    return json.dumps(["rank", key, "head"], separators=(",", ":"))


def page_id(key: str, score: int, prefix: str) -> str:
    return json.dumps(["rank", key, score, prefix], separators=(",", ":"))


def rank_of(doc: dict | None) -> tuple[int, str | None] | None:
    """A user_activity document -> the user's (engagement score, last segment), or None."""
    rank = (doc or {}).get("rank")
    return None if rank is None else (rank["score"], rank["segment"])


def _places(rank: tuple[int, str | None] | None) -> set:
    if rank is None:
        return set()
    score, segment = rank
    return {(ALL, score)} | ({(segment, score)} if segment is not None else set())


class Changes:
    """The batch's moves: per (key, score, prefix), the users that left it and those that came."""

    def __init__(self):
        self.removed: dict = {}
        self.added: dict = {}
        self.fields: dict = {}  # user_id -> its fields, of the users whose rank changed
        self.keys: set = set()  # the keys of those users (before and after)

    def user(self, before: dict | None, after: dict) -> None:
        """One user's document before and after the batch's merge."""
        old, new = _places(rank_of(before)), _places(rank_of(after))
        user_id = after["_id"]
        if (before or {}).get("rank") != after.get("rank"):
            self.fields[user_id] = (after.get("rank") or {}).get("fields", {})
            self.keys |= {key for key, _ in old | new}
        for key, score in old - new:
            self.removed.setdefault((key, score, user_id[:PREFIX]), set()).add(user_id)
        for key, score in new - old:
            self.added.setdefault((key, score, user_id[:PREFIX]), set()).add(user_id)

    def apply(self, read, write, delete, fields_of=None) -> int:
        """The touched pages, merged with what is stored, then each touched key's index and head:
        written, or deleted once empty; `fields_of(user_id)`: the fields of a user the batch did
        not change (its stored user_activity document's). Returns the documents changed."""
        touched = set(self.removed) | set(self.added)
        if not touched and not self.fields:
            return 0
        docs, empty, sizes = [], [], {}
        for key, score, prefix in sorted(touched, key=repr):
            _id = page_id(key, score, prefix)
            members = set((read(_id) or {}).get("members", []))
            members -= self.removed.get((key, score, prefix), set())
            members |= self.added.get((key, score, prefix), set())
            if members:
                docs.append({"_id": _id, "members": sorted(members)})
            else:
                empty.append(_id)
            sizes.setdefault(key, {})[(score, prefix)] = len(members)
        indexes = {}
        for key, changed in sorted(sizes.items()):
            pages = {(s["score"], p["prefix"]): p["count"]
                     for s in (read(index_id(key)) or {}).get("scores", []) for p in s["pages"]}
            pages.update(changed)
            scores: dict = {}
            for (score, prefix), n in sorted(pages.items()):
                if n:
                    scores.setdefault(score, []).append({"prefix": prefix, "count": n})
            indexes[key] = [{"score": s, "count": sum(p["count"] for p in scores[s]), "pages": scores[s]}
                            for s in sorted(scores, reverse=True)]
            if scores:
                docs.append({"_id": index_id(key), "scores": indexes[key]})
            else:
                empty.append(index_id(key))
        docs_by_id = {d["_id"]: d for d in docs}
        for key in sorted(set(indexes) | self.keys):
            old = unpack_items((read(head_id(key)) or {}).get("members", []))
            if key not in indexes and not any(m["user_id"] in self.fields for m in old):
                continue  # its pages and its users' fields are as they were
            index = indexes[key] if key in indexes else (read(index_id(key)) or {}).get("scores", [])
            ids = [i for i, _ in _first(index, key, HEAD,
                                        lambda _id: docs_by_id.get(_id) or ({} if _id in empty else read(_id)))]
            known = {m["user_id"]: {k: v for k, v in m.items() if k != "user_id"} for m in old}
            members = [{"user_id": i, **self._fields(i, known, fields_of)} for i in ids]
            if members:
                docs.append({"_id": head_id(key), "members": pack_items(members)})
            else:
                empty.append(head_id(key))
        if docs:
            write(docs)
        if empty:
            delete(empty)
        self.removed, self.added, self.fields, self.keys = {}, {}, {}, set()  # made: the next users start anew
        return len(docs) + len(empty)

    def _fields(self, user_id: str, known: dict, fields_of) -> dict:
        if user_id in self.fields:
            return self.fields[user_id]
        if user_id in known:
            return known[user_id]
        return fields_of(user_id) if fields_of is not None else {}


def _first(index: list, key: str, limit: int, read_page, min_score: float = 0) -> list[tuple[str, int]]:
    """The first `limit` (user id, score) of a key's index (scores highest first) at or above
    `min_score`, reading its pages with read_page(_id)."""
    picked: list[tuple[str, int]] = []
    for entry in index:
        if entry["score"] < min_score:
            break
        for page in entry["pages"]:
            members = (read_page(page_id(key, entry["score"], page["prefix"])) or {}).get("members", [])
            picked.extend((user_id, entry["score"]) for user_id in members)
            if len(picked) >= limit:
                return picked[:limit]
    return picked


def head(coll, min_score: float, segment: str | None, limit: int) -> list[dict] | None:
    """The first `limit` users of `segment` (None: any) at or above `min_score`, with their fields,
    from the key's head (one read); None past HEAD."""
    if limit > HEAD:
        return None
    picked = []
    for item in (coll.find_one({"_id": head_id(ALL if segment is None else segment)}) or {}).get("members", []):
        member = unpack_item(item)
        if len(picked) >= limit:
            break
        if "engagement_score" not in member:
            continue  # a rank stored before ranks carried their fields: left out, as before
        if member["engagement_score"] < min_score:
            break  # the most engaged first: the others score lower still
        picked.append(member)
    return picked


def top(coll, min_score: float, segment: str | None, limit: int) -> list[tuple[str, int]]:
    """The (id, score) of the `limit` users of `segment` (None: any) with the highest engagement
    scores at or above `min_score`, highest first, then by _id."""
    key = ALL if segment is None else segment
    index = (coll.find_one({"_id": index_id(key)}) or {}).get("scores", [])
    return _first(index, key, limit, lambda _id: coll.find_one({"_id": _id}), min_score)
