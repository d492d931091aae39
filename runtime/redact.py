"""Credentials hidden wherever they sit in a value, for logs and Dagster metadata.

Redacting by key name ("s3.secret-access-key" -> ***) misses secrets embedded in other
values: a catalog URI ``postgresql://user:pw@host/db`` showed its password in the UI. This
masks the password of any URI's userinfo, ``password=``-style parameters of query strings
and libpq/ODBC DSNs, whatever the key the value is stored under.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

#: scheme://user:password@host -> scheme://user:***@host (the user name stays: it is useful)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@?#]*):(?P<pw>[^\s@/?#]*)@")
#: password=..., pwd=..., secret=..., token=..., *_key=... in query strings and DSNs
_PARAM = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|pass|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key|"
    r"sasl\.password|aws_secret_access_key|sessiontoken|session[_-]?token)\s*=\s*)"
    r"(?P<val>'[^']*'|\"[^\"]*\"|[^\s&;,]+)",
    re.IGNORECASE,
)


def redact_value(value: str) -> str:
    """``value`` with every embedded credential replaced by ***."""
    if not value or ("@" not in value and "=" not in value):
        return value
    out = _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@" if m.group("pw") else m.group(0), value)
    return _PARAM.sub(lambda m: m.group("key") + MASK, out)


def redact_mapping(values: Mapping[str, Any], secret_keys: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A copy safe to show: values under ``secret_keys`` masked whole, credentials inside any
    other string value masked in place."""
    return {
        k: (MASK if k in secret_keys and v else redact_value(v) if isinstance(v, str) else v) for k, v in values.items()
    }
