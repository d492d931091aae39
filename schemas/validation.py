"""Pandera models for the lake tables, derived from the table specs.

Used by the hourly asset checks: a sealed hour must satisfy these before anything
downstream reads it. Validation runs on pandas (pandera's mature backend); list columns
are checked element-wise.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa_
import pyarrow as pa
from pandera.errors import SchemaError, SchemaErrors

from schemas.model import Exchange, Market
from schemas.symbols import CANONICAL_RE
from schemas.tables import NON_NEGATIVE, TableSpec

_EVENT_ID = r"^[0-9a-f]{32}$"


def _levels_ok(series: pd.Series) -> bool:
    for levels in series:
        if levels is None:
            return False
        for lvl in levels:
            if lvl["px"] <= 0 or lvl["qty"] < 0:
                return False
    return True


def _fullmatch(pattern: str) -> pa_.Check:
    """The whole value must match: str_matches (re.match) lets "BTC-USDT\n" through a `$`."""
    return pa_.Check(
        lambda s: s.str.fullmatch(pattern).fillna(False).astype(bool), element_wise=False, error=f"fullmatch {pattern}"
    )


def _column(field: pa.Field) -> pa_.Column:
    t = field.type
    checks: list[pa_.Check] = []
    if field.name == "event_id":
        checks.append(_fullmatch(_EVENT_ID))
    elif field.name == "exchange":
        checks.append(pa_.Check.isin([e.value for e in Exchange]))
    elif field.name == "market":
        checks.append(pa_.Check.isin([m.value for m in Market]))
    elif field.name == "symbol":
        checks.append(_fullmatch(CANONICAL_RE.pattern))
    elif field.name in NON_NEGATIVE:
        checks.append(pa_.Check.ge(0))
    elif field.name in ("price_scale", "size_scale"):
        checks.append(pa_.Check.in_range(0, 18))
    if pa.types.is_list(t):
        return pa_.Column(
            object,
            checks=[pa_.Check(_levels_ok, element_wise=False, error="level with px<=0 or qty<0")],
            nullable=field.nullable,
        )
    if pa.types.is_timestamp(t):
        dtype = pd.DatetimeTZDtype("us", "UTC")
    elif pa.types.is_string(t):
        dtype = object
    elif field.nullable:
        dtype = None  # pandas turns an int column with nulls into float64 (pre-unit rows: base_qty)
    elif pa.types.is_int32(t):
        dtype = "int32"
    else:
        dtype = "int64"
    return pa_.Column(dtype, checks=checks, nullable=field.nullable, coerce=False)


def pandera_schema(spec: TableSpec) -> pa_.DataFrameSchema:
    return pa_.DataFrameSchema(
        {f.name: _column(f) for f in spec.schema},
        strict=True,
        name=spec.name,
        unique=None,
    )


def validate_table(spec: TableSpec, table: pa.Table) -> pd.DataFrame:
    """Validate an Arrow table against the spec; raises pandera.errors.SchemaErrors (lazy)."""
    df = table.to_pandas(types_mapper=None, timestamp_as_object=False)
    for f in spec.schema:
        if pa.types.is_timestamp(f.type) and f.name in df:
            df[f.name] = df[f.name].astype(pd.DatetimeTZDtype("us", "UTC"))
    return pandera_schema(spec).validate(df, lazy=True)


@dataclass(frozen=True, slots=True)
class Violations:
    """Why rows do not match their spec, in the shapes the checks report it."""

    summary: str  # "<n> schema violations", or the one error pandera raised eagerly
    failure_cases: list[dict]  # the first failure cases, values as strings (empty for an eager error)
    error: str  # pandera's whole message


def schema_violations(spec: TableSpec, table: pa.Table, head: int = 20) -> Violations | None:
    """validate_table as a value: None when every row matches, else what did not. The one place
    that catches pandera's errors, so that its callers (the hourly schema check, the bulk loader's
    verification) import pandera only through this module, where they validate."""
    try:
        validate_table(spec, table)
    except SchemaErrors as exc:
        cases = exc.failure_cases
        return Violations(
            f"{len(cases)} schema violations", cases.head(head).astype(str).to_dict(orient="records"), str(exc)
        )
    except SchemaError as exc:
        return Violations(f"schema violation: {exc}", [], str(exc))
    return None
