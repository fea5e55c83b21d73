"""A lean Arrow path for applyInPandasWithState in the Python worker of PySpark 4.2.0.

Spark's worker turns each group's rows into pandas Series, concatenates them into a DataFrame,
and wraps each group's state in a one-row pandas DataFrame on the way back: about a millisecond
of pandas set-up per group, whatever the group's size (measured on 4.0.0: 20,000 one-user groups
of 3 rows, 1,183 groups/s on 2 cores; py-spy: 90% of the worker's time in pandas constructors; not
measured on 4.2.0 yet). With state keyed by user, that is a millisecond per user per batch. This
path hands our state function the group's columns as Python lists and takes its output as tuples;
rows and states of many groups go back as one Arrow batch. The bytes exchanged with the JVM are
laid out exactly as pyspark's own ApplyInPandasWithStateSerializer lays them out, so the JVM side
and the checkpoint are the same.
Written against 4.0.0, ported to 4.2.0: the operator's wire format is unchanged; 4.2 reads
useLargeVarTypes from RunnerConf.use_large_var_types (no more worker.use_large_var_types), and its
own wrapper hands its serializer the Spark return type, not the Arrow one (ours pair up as before).

It replaces private functions of pyspark, so it is opt-in (LEAN_ARROW=true, default false) and
only on the one PySpark version it was written against (SUPPORTED_PYSPARK): `arrow_path` decides
at start-up, and asking for it on any other version is a configuration error (a silent fallback
would hide a several-fold drop in per-user throughput from whoever asked for the fast path).

How it is switched on: the state function then carries a `LeanUdf`. Unpickling it in the worker
(before Spark wraps the function) installs three replacements, once per worker process, and marks
the UDF being set up as lean. The replacements fall back to Spark's own code for any other UDF; a
worker whose PySpark is not SUPPORTED_PYSPARK (a driver/worker mismatch) installs nothing and runs
Spark's pandas path with the same state function.
"""
from __future__ import annotations

import json
from itertools import groupby
from typing import NamedTuple

from app.config import InvalidConfigError

SUPPORTED_PYSPARK = "4.2.0"
_pending: list = []       # the LeanUdf unpickled for the UDF Spark is about to wrap
_lean_serializer: list = [None]  # the LeanUdf this worker's current UDF runs, or None
_originals: dict = {}


class ArrowPath(NamedTuple):
    """Which per-group path applyInPandasWithState's Python worker runs, and why (for the log)."""
    lean: bool
    reason: str


def arrow_path(requested: bool, pyspark_version: str | None = None) -> ArrowPath:
    """LEAN_ARROW and the installed pyspark -> the path; InvalidConfigError when the lean path is
    asked for on a pyspark it was not written against."""
    if pyspark_version is None:
        import pyspark
        pyspark_version = pyspark.__version__
    if not requested:
        return ArrowPath(False, f"stock pandas path of pyspark {pyspark_version} (LEAN_ARROW=false, the default)")
    if pyspark_version != SUPPORTED_PYSPARK:
        raise InvalidConfigError(f"LEAN_ARROW=true needs pyspark {SUPPORTED_PYSPARK} (it replaces private worker "
                                 f"functions of that version) but this is pyspark {pyspark_version}: "
                                 "set LEAN_ARROW=false")
    return ArrowPath(True, f"lean Arrow path (LEAN_ARROW=true, on pyspark {pyspark_version}, the one it is "
                           "written for)")


class LeanUdf:
    """core(key tuple, {column: list} | None when timed out, GroupState) -> list of output tuples.
    `columns` names the operator's input columns in order; None skips a column the core never reads.
    `new_keys(keys)`, optional: called with the keys of each Arrow batch's groups that have no state
    yet, before their groups run (to start their reads early), and with None when a task begins."""

    def __init__(self, core, columns, new_keys=None):
        self.core, self.columns, self.new_keys = core, tuple(columns), new_keys

    def __reduce__(self):
        return _restore, (self.core, self.columns, self.new_keys)


def _restore(core, columns, new_keys=None) -> LeanUdf:
    udf = LeanUdf(core, columns, new_keys)
    if install():
        _pending[:] = [udf]
    return udf


def install() -> bool:
    """Installs the lean path in this process; False when this PySpark is not the supported one."""
    import pyspark
    if pyspark.__version__ != SUPPORTED_PYSPARK:
        return False
    if _originals:
        return True
    import pyspark.worker as worker
    from pyspark.sql.pandas.serializers import ApplyInPandasWithStateSerializer as S
    _originals.update(wrap=worker.wrap_grouped_map_pandas_udf_with_state, load=S.load_stream, dump=S.dump_stream)
    worker.wrap_grouped_map_pandas_udf_with_state = _wrap
    S.load_stream, S.dump_stream = _load_stream, _dump_stream
    return True


def _wrap(f, return_type, runner_conf):
    if not _pending:
        _lean_serializer[0] = None
        return _originals["wrap"](f, return_type, runner_conf)
    udf = _lean_serializer[0] = _pending.pop()
    from pyspark.sql.pandas.types import to_arrow_type
    arrow_type = to_arrow_type(return_type, timezone="UTC", prefers_large_types=runner_conf.use_large_var_types)

    def wrapped(key_columns, value_chunks, state):
        key = tuple(column[0] for column in key_columns)
        columns = None
        if not state.hasTimedOut:
            columns = {name: [] for name in udf.columns if name}
            for chunk in value_chunks:
                for name, values in zip(udf.columns, chunk):
                    if name:
                        columns[name] += values
        return [((udf.core(key, columns, state), state), arrow_type)]

    return wrapped


def _load_stream(self, stream):
    """As pyspark's load_stream, with each group's columns as Python lists instead of pandas Series
    (each Arrow batch is converted once, then sliced per group)."""
    udf = _lean_serializer[0]
    if udf is None:
        yield from _originals["load"](self, stream)
        return
    from pyspark.sql.pandas.serializers import ArrowStreamSerializer
    from pyspark.sql.streaming.state import GroupState

    def construct_state(info: dict) -> GroupState:
        properties = json.loads(info["properties"])
        properties["optionalValue"] = self.pickleSer.loads(info["object"]) if info["object"] else None
        return GroupState(keyAsUnsafe=info["keyRowAsUnsafe"], valueSchema=self.state_object_schema, **properties)

    key_at = [i for i, name in enumerate(udf.columns) if name in ("quarantined", "state_key")]

    def chunks_and_states(batches):
        current = None
        if udf.new_keys is not None:
            udf.new_keys(None)
        for batch in batches:
            data = [column.to_pylist() if name else [None] * len(column)
                    for name, column in zip(udf.columns, batch.columns[:-1])]
            infos = batch.column(batch.num_columns - 1).to_pylist()
            if udf.new_keys is not None:  # groups starting in this batch without a state entry
                udf.new_keys([tuple(data[i][info["startOffset"]] for i in key_at) for info in infos
                              if info and info["numRows"] and not info["object"]
                              and (current is None or info is not infos[0])])
            for info in infos:
                if not info:
                    break  # no more groups in this batch
                state = current or construct_state(info)
                current = None if info["isLastChunk"] else state
                start, rows = info["startOffset"], info["numRows"]
                yield [column[start:start + rows] for column in data], state

    for state, chunks in groupby(chunks_and_states(ArrowStreamSerializer.load_stream(self, stream)),
                                 key=lambda x: x[1]):
        yield chunks, state


def _dump_stream(self, iterator, stream):
    """As pyspark's dump_stream, from output tuples: one Arrow batch per ~maxRecordsPerBatch rows."""
    if _lean_serializer[0] is None:
        return _originals["dump"](self, iterator, stream)
    import pyarrow as pa
    from pyspark.serializers import write_int
    from pyspark.sql.pandas.serializers import ArrowStreamSerializer, SpecialLengths

    def batch_of(rows: list, states: list, data_type):
        n = max(1, len(rows), len(states))
        count_type, state_type = self.result_count_pdf_arrow_type, self.result_state_pdf_arrow_type
        padded_rows = rows + [None] * (n - len(rows))
        data = pa.StructArray.from_arrays(
            [pa.array([row[i] if row is not None else None for row in padded_rows], f.type)
             for i, f in enumerate(data_type)], fields=list(data_type))
        padded_states = states + [(None,) * 4] * (n - len(states))
        state_info = pa.StructArray.from_arrays(
            [pa.array([s[i] for s in padded_states], f.type) for i, f in enumerate(state_type)],
            fields=list(state_type))
        counts = pa.StructArray.from_arrays([pa.array([len(rows)] * n, count_type[0].type),
                                             pa.array([len(states)] * n, count_type[1].type)],
                                            fields=list(count_type))
        return pa.RecordBatch.from_arrays([counts, data, state_info], ["_0", "_1", "_2"])

    def state_info(state) -> tuple:
        value = self.pickleSer.dumps(state._value_schema.toInternal(state._value)) if state.exists else None
        return state.json(), state._keyAsUnsafe, value, state.oldTimeoutTimestamp

    def batches():
        rows, states, data_type = [], [], None
        for result in iterator:
            (group_rows, state), data_type = result[0]
            rows.extend(group_rows)
            states.append(state_info(state))  # after the function ran: the state is final
            if len(rows) > self.arrow_max_records_per_batch:
                yield batch_of(rows, states, data_type)
                rows, states = [], []
        if rows or states:
            yield batch_of(rows, states, data_type)

    def with_start_marker(items):
        first = True
        for item in items:
            if first:
                write_int(SpecialLengths.START_ARROW_STREAM, stream)
                first = False
            yield item

    return ArrowStreamSerializer.dump_stream(self, with_start_marker(batches()), stream)
