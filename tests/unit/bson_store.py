"""A collection as the job's merger and the API see it, in memory: documents by _id through BSON
(naive UTC datetimes back, as FerretDB gives them), read / write / delete / find_one by _id. Like
FerretDB 1.24, it refuses a document with a list in a list."""
from __future__ import annotations

import bson


class BsonStore:
    def __init__(self):
        self.docs: dict = {}

    def read(self, _id):
        return bson.decode(self.docs[_id]) if _id in self.docs else None

    def write(self, docs):
        for d in docs:
            _no_nested_arrays(d)
        self.docs.update({d["_id"]: bson.encode(d) for d in docs})

    def delete(self, ids):
        for i in ids:
            self.docs.pop(i, None)

    def find_one(self, query):
        return self.read(query["_id"])

    def decoded(self) -> dict:
        return {k: bson.decode(v) for k, v in self.docs.items()}


class Cut(Exception):
    """A write cut short by CuttingStore."""


class CuttingStore(BsonStore):
    """A BsonStore that, once armed, applies a prefix of one write (or delete) and raises Cut: the
    merger process cut short mid-batch."""

    def __init__(self):
        super().__init__()
        self.crash_at: tuple[int, int] | None = None  # (the write call to cut, documents it applies)
        self.calls = 0

    def _cut(self, items, apply) -> None:
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at[0]:
            apply(items[:self.crash_at[1]])
            raise Cut
        apply(items)

    def write(self, docs):
        self._cut(docs, super().write)

    def delete(self, ids):
        self._cut(ids, super().delete)


def _no_nested_arrays(value, in_list: bool = False) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _no_nested_arrays(v)
    elif isinstance(value, (list, tuple)):
        if in_list:
            raise ValueError("nested arrays are not supported (FerretDB 1.24)")
        for v in value:
            _no_nested_arrays(v, True)
