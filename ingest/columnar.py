"""Column-at-a-time validation of the records that need no cleaning: the fast lane before ``clean_record``.

Most records come from well-behaved producers. Parsing a whole chunk with Arrow's JSON
reader and checking each contract constraint as one vectorised operation costs a small
fraction of validating record by record. The lane is conservative: it accepts a record
only where every check passes and nothing about it is ambiguous (a null that may be a
missing field with a default, a string that may need trimming, a field outside the
contract, a map with a null or missing value, a map that may be null rather than left
out); every other record goes to ``clean_record``, which decides it and says why. An
accepted record gives the same silver row as ``clean_record`` would, which the tests check
on a corpus of hostile records.

The checks are derived from the contract's fields. A contract with a type, a
constraint or a validator this module does not know gets no fast lane at all.
"""

from __future__ import annotations

import io
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime
from typing import Annotated, Any, Literal

import annotated_types as at
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from pydantic import AllowInfNan, AwareDatetime
from pydantic.fields import FieldInfo

from edgelake.contracts import EARLIEST_EVENT_TIME, MAX_CLOCK_SKEW, Event
from edgelake.lake.tables import TIMESTAMP, arrow_type, silver_table

Kind = Literal["str", "int", "float", "bool", "datetime", "map"]
Check = Callable[[pa.Array], pa.Array]  # values -> where they pass (null where the value is null)

# Every character Python's str.strip() removes (all lie below U+3001).
_WHITESPACE = "".join(f"\\x{{{ord(c):x}}}" for c in map(chr, range(0x3001)) if c.isspace())
# Non-empty and nothing to trim at either end.
_AS_SENT = rf"(?s)^[^{_WHITESPACE}](.*[^{_WHITESPACE}])?$"
# The one date-time spelling accepted here; the Arrow cast rejects impossible dates.
_DATETIME = r"^\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"


class Unsupported(TypeError):
    """A contract the fast lane cannot check column-wise; its records all go to ``clean_record``."""


@dataclass(frozen=True)
class _Column:
    """One contract field: how to read it from JSON and what its values must satisfy."""

    name: str
    kind: Kind
    silver_type: pa.DataType
    null_ok: bool  # a null (or absent) value is the field's default None, unambiguously
    checks: tuple[Check, ...] = ()
    min_items: int = 0  # maps only
    item_kind: Kind = "float"  # maps only: their values' kind, "float" or "str"
    empty_default: bool = False  # maps only: an absent map is the field's default, an empty one

    @property
    def missing_ok(self) -> bool:
        """Whether a null value may stand for a valid one (absent maps are told from nulls by the caller)."""
        return self.null_ok or self.empty_default

    @property
    def wire_type(self) -> pa.DataType | None:
        """The type Arrow reads the JSON value as; None for maps, which Arrow infers as structs."""
        return {"str": pa.string(), "datetime": pa.string(), "int": pa.int64(), "float": pa.float64(),
                "bool": pa.bool_(), "map": None}[self.kind]


@dataclass(frozen=True)
class Accepted:
    """The records of a chunk the fast lane accepts, as silver columns plus ``event_date``, and the rest."""

    indices: list[int]  # positions in the chunk, in order
    table: pa.Table
    rest: list[int] = field(default_factory=list)


class ColumnarContract:
    """The fast lane of one event type."""

    def __init__(self, event_type: type[Event]) -> None:
        """Raise ``Unsupported`` for a contract with something the fast lane cannot check."""
        decorators = event_type.__pydantic_decorators__
        if any(getattr(decorators, kind) for kind in ("validators", "field_validators", "root_validators", "model_validators")):
            raise Unsupported(f"{event_type.__name__} has validators")
        config = event_type.model_config
        if not (config.get("strict") and config.get("extra") == "forbid" and config.get("allow_inf_nan") is False):
            raise Unsupported(f"{event_type.__name__} is not strict, closed and finite")
        self.event_type = event_type
        self.columns = [_column(name, info) for name, info in event_type.model_fields.items()]
        self._names = {column.name for column in self.columns}
        self._schema = silver_table(event_type).schema
        self._has_maps = any(column.kind == "map" for column in self.columns)
        wire = [pa.field(c.name, c.wire_type) for c in self.columns if c.wire_type is not None]
        self._parse_options = pj.ParseOptions(
            explicit_schema=pa.schema(wire), unexpected_field_behavior="infer" if self._has_maps else "error"
        )

    def accept(self, values: list[bytes], now: datetime) -> Accepted:
        """The records among ``values`` that pass every check as sent; ``now`` bounds event times."""
        candidates = [i for i, value in enumerate(values) if value[:1] == b"{" and value[-1:] == b"}" and b"\n" not in value]
        found = list(self._accepted(values, candidates, now, regroup=self._has_maps))
        indices = [i for block, _ in found for i in block]
        taken = set(indices)
        rest = [i for i in range(len(values)) if i not in taken]
        if not found:
            return Accepted([], self._silver_schema().empty_table(), rest)
        return Accepted(indices, pa.concat_tables([table for _, table in found]), rest)

    def _accepted(
        self, values: list[bytes], candidates: list[int], now: datetime, regroup: bool
    ) -> Iterator[tuple[list[int], pa.Table]]:
        """Accepted records by block, as their positions and silver columns.

        A record whose map lacks a key other objects of its block have, that holds a JSON
        null somewhere and that spells one of the keys it lacks, may have given that key
        ``null``; with ``regroup``, such records are read again in blocks of records having
        the same keys.
        """
        for block, table in self._parsed(values, candidates):
            checked = self._passes(table, now)
            if checked is None:
                continue
            ok, gaps, keys, key_names, unread = checked
            for name, null in unread.items():
                if null[ok].any():
                    ok &= ~null | _lacking(name, [values[i] for i in block])
            sure = ~gaps | np.fromiter((b"null" not in values[i] for i in block), dtype=bool, count=len(block))
            for i in np.flatnonzero(ok & ~sure):
                sure[i] = all(_lacking(key_names[j], [values[block[i]]])[0] for j in np.flatnonzero(~keys[i]))
            kept = np.flatnonzero(ok & sure)
            if len(kept):
                yield [block[i] for i in kept], self._silver(table.take(kept))
            unsure = np.flatnonzero(ok & ~sure)
            if regroup and len(unsure):
                _, group_of = np.unique(keys[unsure], axis=0, return_inverse=True)
                for group in range(group_of.max() + 1):
                    again = [block[i] for i in unsure[group_of.reshape(-1) == group]]
                    yield from self._accepted(values, again, now, regroup=False)

    def _parsed(self, values: list[bytes], block: list[int]) -> Iterator[tuple[list[int], pa.Table]]:
        """Blocks of records Arrow reads as exactly one object each within the contract's fields;
        a block that fails is halved until the records that fail are alone."""
        if not block:
            return
        data = b"\n".join(values[i] for i in block)
        try:
            table = pj.read_json(
                io.BytesIO(data),
                read_options=pj.ReadOptions(block_size=max(1 << 20, 2 * max(len(values[i]) for i in block))),
                parse_options=self._parse_options,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            table = None
        if table is not None and table.num_rows == len(block) and self._names.issuperset(table.column_names):
            yield block, table
        elif len(block) > 1:
            middle = len(block) // 2
            yield from self._parsed(values, block[:middle])
            yield from self._parsed(values, block[middle:])

    def _passes(
        self, table: pa.Table, now: datetime
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], dict[str, np.ndarray]] | None:
        """Where every column passes if a map's missing keys are absent, where some map misses
        a key of the block, which keys the maps have (and those keys' names), and, per map whose
        default is empty, where it reads as null (taken here for an omitted map; the caller
        settles which it was); None where no row can pass."""
        rows = table.num_rows
        ok = np.ones(rows, dtype=bool)
        gaps = np.zeros(rows, dtype=bool)
        keys = [np.zeros((rows, 0), dtype=bool)]
        key_names: list[str] = []
        unread: dict[str, np.ndarray] = {}
        for column in self.columns:
            values = table.column(column.name).combine_chunks() if column.name in table.column_names else None
            if column.kind == "map":
                passes, present, names = _map_passes(column, values, rows)
                gaps |= ~present.all(axis=1)
                keys.append(present)
                key_names.extend(names)
                if column.empty_default and values is not None:  # a map no object of the block has is omitted in all
                    unread[column.name] = ~pc.is_valid(values).to_numpy(zero_copy_only=False)
            else:
                passes = _passes(column, values, rows, now)
            if passes is None:
                return None
            ok &= passes.to_numpy(zero_copy_only=False)
        return ok, gaps, np.hstack(keys), key_names, unread

    def _silver(self, table: pa.Table) -> pa.Table:
        """Accepted rows as the silver table's contract columns plus ``event_date``."""
        arrays = []
        for column in self.columns:
            values = table.column(column.name).combine_chunks() if column.name in table.column_names else None
            arrays.append(_silver_values(column, values, table.num_rows))
        event_time = arrays[[c.name for c in self.columns].index("event_time")]
        arrays.append(pc.cast(event_time, pa.date32()))
        return pa.Table.from_arrays(arrays, schema=self._silver_schema())

    def _silver_schema(self) -> pa.Schema:
        return pa.schema([*(self._schema.field(c.name) for c in self.columns), self._schema.field("event_date")])


def columnar_contract(event_type: type[Event]) -> ColumnarContract | None:
    """The fast lane of ``event_type``, or None if its contract has something the lane cannot check."""
    try:
        return ColumnarContract(event_type)
    except Unsupported:
        return None


def _column(name: str, info: FieldInfo) -> _Column:
    annotation, optional = _without_none(info.annotation)
    base, metadata = _unannotated(annotation, list(info.metadata))
    null_ok = optional and not info.is_required() and info.default is None and info.default_factory is None
    empty_default = info.default_factory is dict
    silver_type = arrow_type(info)
    if typing.get_origin(base) is dict:
        key, item = typing.get_args(base)
        item_base, item_metadata = _unannotated(item, [])
        if key is not str or item_base not in (float, str):
            raise Unsupported(f"field '{name}': only maps of strings to floats or strings are checked column-wise")
        min_items = 0
        for constraint in metadata:
            if not isinstance(constraint, at.MinLen):
                raise Unsupported(f"field '{name}': constraint {constraint!r}")
            min_items = constraint.min_length
        item_kind: Kind = "str" if item_base is str else "float"
        checks = _string_checks(name, item_metadata) if item_base is str else _number_checks(name, item_metadata, finite=True)
        return _Column(name, "map", silver_type, null_ok, checks, min_items, item_kind, empty_default)
    if typing.get_origin(base) is Literal:
        options = typing.get_args(base)
        if metadata or not (all(type(o) is str for o in options) or all(type(o) is int for o in options)):
            raise Unsupported(f"field '{name}': a literal of mixed or non-string, non-integer values")
        allowed = pa.array(options)
        return _Column(name, "str" if type(options[0]) is str else "int", silver_type, null_ok, (lambda v: pc.is_in(v, allowed),))
    if base is str:
        return _Column(name, "str", silver_type, null_ok, _string_checks(name, metadata))
    if base is bool and not metadata:
        return _Column(name, "bool", silver_type, null_ok)
    if base is int:
        return _Column(name, "int", silver_type, null_ok, _number_checks(name, metadata, finite=False))
    if base is float:
        return _Column(name, "float", silver_type, null_ok, _number_checks(name, metadata, finite=True))
    if base is AwareDatetime and not metadata:
        return _Column(name, "datetime", silver_type, null_ok, (lambda v: pc.match_substring_regex(v, _DATETIME),))
    raise Unsupported(f"field '{name}': type {base!r}")


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``| None``, and whether it allowed None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise Unsupported(f"union {annotation!r}")
        return args[0], True
    return annotation, False


def _unannotated(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """The bare type of an ``Annotated`` one, with every constraint found on the way."""
    while typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        for item in extra:
            metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return annotation, metadata


def _string_checks(name: str, metadata: list[Any]) -> tuple[Check, ...]:
    checks: list[Check] = [lambda v: pc.match_substring_regex(v, _AS_SENT)]
    for constraint in metadata:
        if isinstance(constraint, at.MinLen):
            checks.append(partial(lambda v, n: pc.greater_equal(pc.utf8_length(v), n), n=constraint.min_length))
        elif isinstance(constraint, at.MaxLen):
            checks.append(partial(lambda v, n: pc.less_equal(pc.utf8_length(v), n), n=constraint.max_length))
        elif _only_pattern(constraint):
            checks.append(partial(lambda v, p: pc.match_substring_regex(v, p), p=constraint.pattern))
        else:
            raise Unsupported(f"field '{name}': constraint {constraint!r}")
    return tuple(checks)


def _number_checks(name: str, metadata: list[Any], finite: bool) -> tuple[Check, ...]:
    checks: list[Check] = [pc.is_finite] if finite else []
    bounds = {at.Ge: (pc.greater_equal, "ge"), at.Gt: (pc.greater, "gt"), at.Le: (pc.less_equal, "le"), at.Lt: (pc.less, "lt")}
    for constraint in metadata:
        if isinstance(constraint, AllowInfNan) and not constraint.allow_inf_nan:
            continue
        if type(constraint) not in bounds:
            raise Unsupported(f"field '{name}': constraint {constraint!r}")
        compare, attribute = bounds[type(constraint)]
        bound = getattr(constraint, attribute)
        checks.append(partial(lambda v, compare, bound: compare(v, bound), compare=compare, bound=bound))
    return tuple(checks)


def _only_pattern(constraint: Any) -> bool:
    """Whether a constraint is pydantic's general metadata holding a pattern and nothing else."""
    return type(constraint).__name__ == "_PydanticGeneralMetadata" and set(vars(constraint)) == {"pattern"}


def _passes(column: _Column, values: pa.Array | None, rows: int, now: datetime) -> pa.Array | None:
    """Where a column's values pass (a boolean array without nulls); None where no row can."""
    if values is None or pa.types.is_null(values.type):
        return pa.array(np.full(rows, column.null_ok))
    ok = pa.array(np.ones(rows, dtype=bool))
    for check in column.checks:
        ok = pc.and_kleene(ok, check(values))
    if column.kind == "datetime":
        instants = _instants(values, ok)
        if instants is None:
            return None
        latest = now + MAX_CLOCK_SKEW
        ok = pc.and_kleene(ok, pc.and_(pc.greater_equal(instants, EARLIEST_EVENT_TIME), pc.less_equal(instants, latest)))
    return pc.if_else(pc.is_null(values), column.null_ok, pc.fill_null(ok, False))


def _instants(values: pa.Array, ok: pa.Array) -> pa.Array | None:
    """Date-time strings as UTC timestamps (a placeholder where ``ok`` is false); None if one is impossible."""
    spelled = pc.if_else(pc.fill_null(ok, False), values, "2000-01-01T00:00:00Z")
    try:
        return pc.cast(spelled, TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _map_passes(column: _Column, values: pa.Array | None, rows: int) -> tuple[pa.Array, np.ndarray, list[str]]:
    """Rows whose object has at least ``min_items`` keys, every value of the map's kind (a number or a string) that
    passes, which of the block's keys each has, and those keys.

    Arrow reads the objects of a block as structs with every key any of them has: a key an
    object lacks reads as null, like a key given ``null``. Here a null is taken for an
    absent key; the caller settles which it was.
    """
    if values is None or pa.types.is_null(values.type):
        return pa.array(np.full(rows, column.missing_ok)), np.ones((rows, 0), dtype=bool), []
    struct_valid = pc.is_valid(values)
    if not pa.types.is_struct(values.type):
        return pc.and_(pc.invert(struct_valid), pa.scalar(column.missing_ok)), np.ones((rows, 0), dtype=bool), []
    present = _present(values)
    ok = present.sum(axis=1) >= column.min_items
    for j, child in enumerate(values.flatten()):
        if pa.types.is_null(child.type):
            continue
        if column.item_kind == "str":
            if not pa.types.is_string(child.type):
                ok &= ~present[:, j]
                continue
            as_kind = child
        elif pa.types.is_float64(child.type) or pa.types.is_int64(child.type):
            as_kind = pc.cast(child, pa.float64(), safe=False)
        else:
            ok &= ~present[:, j]
            continue
        for check in column.checks:
            ok &= pc.fill_null(check(as_kind), True).to_numpy(zero_copy_only=False)
    return pc.if_else(struct_valid, pa.array(ok), column.missing_ok), present, [field.name for field in values.type]


def _lacking(key: str, records: list[bytes]) -> np.ndarray:
    """Which JSON objects certainly lack ``key``: they hold neither its plain spelling nor a backslash (any escaped one)."""
    spelled = f'"{key}"'.encode()
    return np.fromiter((spelled not in record and b"\\" not in record for record in records), dtype=bool, count=len(records))


def _present(values: pa.StructArray) -> np.ndarray:
    """Which keys (columns) each object (row) of a struct array has."""
    matrix = np.zeros((len(values), values.type.num_fields), dtype=bool)
    for j, child in enumerate(values.flatten()):
        matrix[:, j] = child.is_valid().to_numpy(zero_copy_only=False)
    return matrix


def _silver_values(column: _Column, values: pa.Array | None, rows: int) -> pa.Array:
    if column.kind == "map":
        if values is None or not pa.types.is_struct(values.type):  # no accepted row has a map (``_map_passes``)
            return _empty_maps(rows, column.silver_type) if column.empty_default else pa.nulls(rows, column.silver_type)
        return _map_values(values, column.silver_type, column.item_kind)
    if values is None or pa.types.is_null(values.type):
        return pa.nulls(rows, column.silver_type)
    if column.kind == "datetime":
        return pc.cast(values, TIMESTAMP)
    return pc.cast(values, column.silver_type)


def _empty_maps(rows: int, map_type: pa.DataType) -> pa.Array:
    """``rows`` empty maps: the silver value of a map left out."""
    return pa.MapArray.from_arrays(
        pa.array(np.zeros(rows + 1, dtype=np.int32)), pa.array([], pa.string()), pa.array([], map_type.item_type), type=map_type
    )


def _map_values(values: pa.StructArray, map_type: pa.DataType, item_kind: Kind) -> pa.Array:
    """Struct rows as map rows of the keys each has, in the struct's field order; a null row is an empty map."""
    present = _present(values)
    items = np.zeros(present.shape, dtype=np.float64 if item_kind == "float" else object)
    for j, child in enumerate(values.flatten()):
        # A key whose values are of another kind is absent from every accepted row (``_map_passes``).
        if item_kind == "str" and pa.types.is_string(child.type):
            items[:, j] = child.to_numpy(zero_copy_only=False)
        elif item_kind == "float" and (pa.types.is_float64(child.type) or pa.types.is_int64(child.type)):
            items[:, j] = pc.fill_null(pc.cast(child, pa.float64(), safe=False), 0.0).to_numpy(zero_copy_only=False)
    names = np.array([values.type.field(j).name for j in range(values.type.num_fields)], dtype=object)
    keys = np.broadcast_to(names, present.shape)[present]
    offsets = np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int32)
    return pa.MapArray.from_arrays(
        pa.array(offsets), pa.array(keys, pa.string()), pa.array(items[present], map_type.item_type), type=map_type
    )
