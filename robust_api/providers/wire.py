"""Wire facts shared by the adapters and the emulators that imitate them.

The emulators (robust_api.providers.emulator) import from here; adapters never import the emulators.
- `EMULATOR_KEY`: the credential every emulator expects by default and `Provider.for_emulator` sends.
- Retry-After: `parse_retry_after` reads one header value, `retry_after_from_headers` a whole header map
  (Azure's millisecond variants first), `format_retry_after` writes the value an emulator sends.
"""
from __future__ import annotations

import datetime
import email.utils
import time
from typing import Mapping

EMULATOR_KEY = "emulator-key"  # the credential the emulators expect by default; not a secret

# Header names, lower case, with the factor that turns their value into seconds, in order of precedence.
# Azure sends retry-after-ms / x-ms-retry-after-ms beside (or instead of) the standard Retry-After.
RETRY_AFTER_HEADERS: tuple[tuple[str, float], ...] = (
    ("retry-after-ms", 1e-3),
    ("x-ms-retry-after-ms", 1e-3),
    ("retry-after", 1.0),
)


def parse_retry_after(value: str | None, *, scale: float = 1.0) -> float | None:
    """One Retry-After value in seconds: delta-seconds (times `scale`, e.g. 1e-3 for the -ms headers) or an
    HTTP date (RFC 9110); negative values and dates in the past give 0; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value) * scale)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" and zone-less dates: HTTP dates are in UTC
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from a response's headers (any letter case): the first readable of retry-after-ms,
    x-ms-retry-after-ms and Retry-After; None when none is present or readable."""
    if not headers:
        return None
    lower = {str(k).lower(): v for k, v in headers.items()}
    for name, scale in RETRY_AFTER_HEADERS:
        seconds = parse_retry_after(lower.get(name), scale=scale)
        if seconds is not None:
            return seconds
    return None


def format_retry_after(seconds: float) -> str:
    """A Retry-After header value for `seconds` (delta-seconds form, as the providers send it)."""
    return f"{seconds:g}"


__all__ = ["EMULATOR_KEY", "RETRY_AFTER_HEADERS", "format_retry_after", "parse_retry_after", "retry_after_from_headers"]
