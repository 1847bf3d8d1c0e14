"""Thousands of rows in one statement, for sweeps: compiled by SQLAlchemy, sent by the driver.

SQLAlchemy's executemany prepares every row in Python (a dictionary of parameters per row, and
each value through its column type's converter), which for narrow rows costs about as much as
the database's own work. Here the statement is compiled once for the session's database, values
go through the same converters SQLAlchemy would use (values shared by every row once, others
once per distinct value), and the driver's own executemany sends plain tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.sql.dml import Insert, Update
from sqlmodel.ext.asyncio.session import AsyncSession


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
    if not rows:
        return
    constants = dict(same or {})
    keys = [*columns, *constants]
    await _executemany(
        session, table.insert(), keys, dict(zip(keys, keys, strict=True)), rows, constants
    )


async def update_rows(
    session: AsyncSession,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    same: Mapping[str, Any] | None = None,
) -> None:
    """UPDATE the row of ``table`` whose ``columns[0]`` equals each tuple's first value: set the
    other ``columns`` to the tuple's other values, and the columns of ``same``."""
    if not rows:
        return
    key, *changed = columns
    values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in changed}
    values.update({name: bindparam(f"c_{name}") for name in same or {}})
    statement = update(table).where(table.c[key] == bindparam(f"v_{key}")).values(values)
    names = {f"v_{name}": name for name in columns} | {f"c_{name}": name for name in same or {}}
    await _executemany(session, statement, None, names, rows, dict(same or {}))


async def _executemany(
    session: AsyncSession,
    statement: Insert | Update,
    column_keys: list[str] | None,
    names: Mapping[str, str],
    rows: Sequence[tuple[Any, ...]],
    constants: Mapping[str, Any],
) -> None:
    """``names`` maps the statement's parameter names to column names: those of ``constants``
    (the same in every row), the others to their place in each row, in the order given."""
    connection = await session.connection()
    dialect = connection.dialect
    compiled = statement.compile(dialect=dialect, column_keys=column_keys)
    if compiled.positiontup is None:  # both drivers here take positional parameters
        raise ValueError(f"{dialect.name}: a positional paramstyle is needed")
    width = len(rows[0])
    place = {column: i for i, column in enumerate(c for c in names.values() if c not in constants)}
    if len(place) != width:
        raise ValueError(f"rows of {width} values for {len(place)} columns")
    tail: list[Any] = []
    picks: list[int] = []
    converters: dict[int, Callable[[Any], Any]] = {}
    for parameter in compiled.positiontup:
        if parameter not in names:
            raise ValueError(f"no value for {parameter!r} (a column default?)")
        column = names[parameter]
        convert = compiled.binds[parameter].type.dialect_impl(dialect).bind_processor(dialect)
        if column in constants:
            value = constants[column]
            tail.append(convert(value) if convert is not None and value is not None else value)
            picks.append(width + len(tail) - 1)
        else:
            picks.append(place[column])
            if convert is not None:
                converters[place[column]] = _memo(convert)
    if converters:
        rows = [
            tuple(converters[i](v) if i in converters else v for i, v in enumerate(row))
            for row in rows
        ]
    extra = tuple(tail)
    if len(picks) == 1:
        only = picks[0]
        params = [((row + extra)[only],) for row in rows]
    else:
        pick = itemgetter(*picks)
        params = [pick(row + extra) for row in rows]
    await connection.exec_driver_sql(compiled.string, params)


def _memo(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
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
