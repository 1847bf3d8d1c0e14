"""Thousands of rows in one statement, for sweeps: compiled by SQLAlchemy, sent by the driver.

SQLAlchemy's executemany prepares every row in Python (a dictionary of parameters per row, and
each value through its column type's converter), which for narrow rows costs about as much as
the database's own work. Here values go through the same converters SQLAlchemy would use
(values shared by every row once, others once per distinct value), and:

- on PostgreSQL, one statement takes every row as arrays (``INSERT ... SELECT ... FROM
  unnest(...)``, ``UPDATE ... FROM unnest(...)``), with the column types SQLAlchemy compiles:
  a third less server time than a statement per row;
- elsewhere (SQLite), the statement is compiled by SQLAlchemy and the driver's own
  executemany sends plain tuples.

Each statement is planned once per database dialect, table and set of columns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.engine import Dialect
from sqlmodel.ext.asyncio.session import AsyncSession

Convert = Callable[[Any], Any]
#: Parameters in one SQLite statement (SQLITE_MAX_VARIABLE_NUMBER since SQLite 3.32).
SQLITE_VARIABLES = 32766
#: PostgreSQL: from this many rows a column with one value in every row is sent as that value
#: (fewer statement variants for the few rows of a turn).
UNIFORM_ROWS = 16


async def insert_rows(
    session: AsyncSession,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    same: Mapping[str, Any] | None = None,
) -> None:
    """INSERT ``rows`` (tuples of the values of ``columns``) into ``table``, in the session's
    transaction, each row with the values of ``same`` too. Columns named in neither are NULL,
    so name every column that has a default."""
    await _write(session, table, None, tuple(columns), rows, dict(same or {}))


async def insert_returning(
    session: AsyncSession,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    returning: Sequence[str],
    *,
    same: Mapping[str, Any] | None = None,
    skip_conflicts_on: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """``insert_rows``, returning the ``returning`` columns of each row inserted (in no
    particular order). With ``skip_conflicts_on`` (the columns of a unique constraint), a row
    that would break it is left out (``ON CONFLICT DO NOTHING``), and not returned."""
    if not rows:
        return []
    connection = await session.connection()
    dialect = connection.dialect
    constants = dict(same or {})
    names, width = tuple(constants), len(columns)
    suffix = _suffix(dialect, tuple(skip_conflicts_on), tuple(returning))
    if dialect.name == "postgresql":
        arrays, uniform = _pg_params(dialect, table, tuple(columns), rows, constants, None)
        sql = _unnest_plan(dialect, table, None, tuple(columns), names, uniform)
        result = await connection.exec_driver_sql(sql + suffix, arrays)
        return [tuple(row) for row in result.all()]
    if dialect.paramstyle != "qmark":
        raise ValueError(f"{dialect.name}: insert_returning needs qmark or PostgreSQL")
    memos = [_memo(c) if (c := _processor(table, n, dialect)) else None for n in columns]
    extra = tuple(_apply(_processor(table, n, dialect), constants[n]) for n in names)
    quote = dialect.identifier_preparer.quote
    head = f"INSERT INTO {dialect.identifier_preparer.format_table(table)} ("
    head += ", ".join(quote(n) for n in [*columns, *names]) + ") VALUES "
    one = "(" + ", ".join("?" * (width + len(names))) + ")"
    chunk = max(1, SQLITE_VARIABLES // (width + len(names)))
    found: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        flat: list[Any] = []
        for row in part:
            flat.extend(v if m is None else m(v) for v, m in zip(row, memos, strict=True))
            flat.extend(extra)
        sql = head + ", ".join([one] * len(part)) + suffix
        result = await connection.exec_driver_sql(sql, tuple(flat))
        found.extend(tuple(row) for row in result.all())
    return found


async def update_rows(
    session: AsyncSession,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    same: Mapping[str, Any] | None = None,
) -> None:
    """UPDATE the row of ``table`` whose ``columns[0]`` equals each tuple's first value: set the
    other ``columns`` to the tuple's other values, and the columns of ``same``. The keys must
    be distinct."""
    await _write(session, table, columns[0], tuple(columns), rows, dict(same or {}))


async def _write(
    session: AsyncSession,
    table: Table,
    key: str | None,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
    constants: dict[str, Any],
) -> None:
    if not rows:
        return
    if len(rows[0]) != len(columns):
        raise ValueError(f"rows of {len(rows[0])} values for {len(columns)} columns")
    connection = await session.connection()
    dialect = connection.dialect
    names = tuple(constants)
    if dialect.name == "postgresql":
        arrays, uniform = _pg_params(dialect, table, columns, rows, constants, key)
        await connection.exec_driver_sql(
            _unnest_plan(dialect, table, key, columns, names, uniform), arrays
        )
        return
    sql, picks, converters, fixed = _executemany_plan(dialect, table, key, columns, names)
    if any(converters):
        memos = [_memo(convert) if convert else None for convert in converters]
        rows = [
            tuple(v if memo is None else memo(v) for v, memo in zip(row, memos, strict=True))
            for row in rows
        ]
    extra = tuple(
        _apply(convert, constants[name]) for name, convert in zip(names, fixed, strict=True)
    )
    if len(picks) == 1:
        only = picks[0]
        params = [((*row, *extra)[only],) for row in rows]
    else:
        pick = itemgetter(*picks)
        params = [pick(row + extra) for row in rows]
    await connection.exec_driver_sql(sql, params)


def _pg_params(
    dialect: Dialect,
    table: Table,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
    constants: Mapping[str, Any],
    key: str | None,
) -> tuple[tuple[Any, ...], frozenset[int]]:
    """PostgreSQL: each column's converted values as an array, or as one value where every
    row has the same (fewer values for the driver to encode), then the constants; and which
    columns went as one value."""
    params: list[Any] = []
    uniform: set[int] = set()
    for i, convert in enumerate(_converters(dialect, table, columns)):
        values = [row[i] for row in rows]
        if convert is not None:
            memo = _memo(convert)
            values = [memo(value) for value in values]
        if (
            len(values) >= UNIFORM_ROWS
            and columns[i] != key
            and values.count(values[0]) == len(values)
        ):
            uniform.add(i)
            params.append(values[0])
        else:
            params.append(values)
    if len(uniform) == len(columns):  # unnest needs one array
        uniform.discard(0)
        params[0] = [params[0]] * len(rows)
    names = tuple(constants)
    fixed = _converters(dialect, table, names)
    params += [_apply(convert, constants[n]) for n, convert in zip(names, fixed, strict=True)]
    return tuple(params), frozenset(uniform)


@lru_cache(maxsize=256)
def _converters(
    dialect: Dialect, table: Table, columns: tuple[str, ...]
) -> tuple[Convert | None, ...]:
    return tuple(_processor(table, name, dialect) for name in columns)


@lru_cache(maxsize=64)
def _suffix(dialect: Dialect, conflict: tuple[str, ...], returning: tuple[str, ...]) -> str:
    """`` ON CONFLICT (...) DO NOTHING`` and `` RETURNING ...``, as asked."""
    quote = dialect.identifier_preparer.quote
    suffix = ""
    if conflict:
        suffix += f" ON CONFLICT ({', '.join(quote(n) for n in conflict)}) DO NOTHING"
    if returning:
        suffix += f" RETURNING {', '.join(quote(n) for n in returning)}"
    return suffix


def _processor(table: Table, name: str, dialect: Dialect) -> Convert | None:
    """The column's converter to what the driver takes (None: the value as it is)."""
    processor: Convert | None = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
    return processor


def _apply(convert: Convert | None, value: Any) -> Any:
    return value if convert is None or value is None else convert(value)


@lru_cache(maxsize=64)
def _executemany_plan(
    dialect: Dialect,
    table: Table,
    key: str | None,
    columns: tuple[str, ...],
    constants: tuple[str, ...],
) -> tuple[str, list[int], list[Convert | None], list[Convert | None]]:
    """The SQL compiled by SQLAlchemy, where each parameter comes from in ``row + constants``,
    and the converters of the row's values and of the constants."""
    if key is None:
        keys = [*columns, *constants]
        statement: Any = table.insert()
        compiled = statement.compile(dialect=dialect, column_keys=keys)
        source = {name: name for name in keys}
    else:
        values: dict[str, Any] = {n: bindparam(f"v_{n}") for n in columns if n != key}
        values.update({name: bindparam(f"c_{name}") for name in constants})
        statement = update(table).where(table.c[key] == bindparam(f"v_{key}")).values(values)
        compiled = statement.compile(dialect=dialect)
        source = {f"v_{n}": n for n in columns} | {f"c_{n}": n for n in constants}
    if compiled.positiontup is None:  # both drivers here take positional parameters
        raise ValueError(f"{dialect.name}: a positional paramstyle is needed")
    place = {name: i for i, name in enumerate([*columns, *constants])}
    picks = []
    for parameter in compiled.positiontup:
        if parameter not in source:
            raise ValueError(f"{table.name}: no value for {parameter!r} (a column default?)")
        picks.append(place[source[parameter]])
    converters = [_processor(table, name, dialect) for name in columns]
    fixed = [_processor(table, name, dialect) for name in constants]
    return compiled.string, picks, converters, fixed


@lru_cache(maxsize=256)
def _unnest_plan(
    dialect: Dialect,
    table: Table,
    key: str | None,
    columns: tuple[str, ...],
    constants: tuple[str, ...],
    uniform: frozenset[int],
) -> str:
    """PostgreSQL: INSERT (``key`` None) or UPDATE by ``key`` with every row in one statement;
    its parameters are an array per column (one value for the ``uniform`` ones), then the
    constants."""
    quote = dialect.identifier_preparer.quote
    number = iter(range(1, len(columns) + len(constants) + 1))

    def typed(name: str, array: bool) -> str:
        kind = table.c[name].type.compile(dialect=dialect)
        return f"${next(number)}::{kind}{'[]' if array else ''}"

    arrays: list[str] = []
    value: list[str] = []  # what each column takes: u.cN from the arrays, or its one value
    for i, name in enumerate(columns):
        if i in uniform:
            value.append(typed(name, False))
        else:
            value.append(f"u.c{len(arrays)}")
            arrays.append(typed(name, True))
    fixed = [typed(name, False) for name in constants]
    aliases = ", ".join(f"c{i}" for i in range(len(arrays)))
    source = f"unnest({', '.join(arrays)}) AS u({aliases})"
    target = dialect.identifier_preparer.format_table(table)
    if key is None:
        names = ", ".join(quote(name) for name in [*columns, *constants])
        selected = ", ".join([*value, *fixed])
        return f"INSERT INTO {target} ({names}) SELECT {selected} FROM {source}"
    sets = [f"{quote(name)} = {v}" for name, v in zip(columns, value, strict=True) if name != key]
    sets += [f"{quote(name)} = {v}" for name, v in zip(constants, fixed, strict=True)]
    where = f"{target}.{quote(key)} = {value[columns.index(key)]}"
    return f"UPDATE {target} SET {', '.join(sets)} FROM {source} WHERE {where}"


def _memo(convert: Convert) -> Convert:
    """``convert`` for one column of one batch: each distinct value converted once."""
    seen: dict[tuple[Any, ...], Any] = {}

    def converted(value: Any) -> Any:
        if value is None:
            return None
        # Equal instants in two time zones are different text to SQLite: the zone is kept.
        key = (type(value), value, getattr(value, "tzinfo", None))
        try:
            return seen[key]
        except KeyError:
            result = seen[key] = convert(value)
            return result
        except TypeError:  # not hashable
            return convert(value)

    return converted
