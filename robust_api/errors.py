"""Typed errors of robust-api: library code raises these; only the CLI turns them into one line + exit code.

Every message is safe to print: no credentials, no image bytes.
"""
from __future__ import annotations

from pathlib import Path


class RobustAPIError(Exception):
    """Base class of every documented robust-api error."""


class ConfigError(RobustAPIError):
    """Invalid user-supplied settings (unknown provider, bad sigma, missing extra, ...)."""


class ImageError(RobustAPIError):
    """An image that cannot be loaded, converted or encoded within a provider's limits."""


class ResponseFormatError(RobustAPIError):
    """A provider response whose shape is not the documented one (decision rules cannot read it)."""


class LogError(RobustAPIError):
    """A query log (JSONL or legacy pickle) that cannot be read; names the file and, when known, the line."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class CheckpointError(RobustAPIError):
    """A file that is not a loadable denoiser checkpoint, or whose sha256 does not match its registry entry."""


class ProviderError(RobustAPIError):
    """A failed provider call.

    `kind` is one of RETRYABLE_KINDS or PERMANENT_KINDS; `request_id` is the provider's id when it sent one;
    `retry_after_s` is the provider's Retry-After hint (seconds) when it sent one.
    """

    retryable: bool = False

    def __init__(
        self,
        provider: str,
        kind: str,
        message: str,
        *,
        request_id: str | None = None,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.provider = provider
        self.kind = kind
        self.request_id = request_id
        self.status = status
        self.retry_after_s = retry_after_s
        self.reason = message
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{provider}: {kind}: {message}{rid}")


RETRYABLE_KINDS = ("throttled", "server", "timeout", "connection", "malformed")
PERMANENT_KINDS = ("auth", "invalid_image", "bad_request", "quota")


class RetryableProviderError(ProviderError):
    """Throttling, 5xx, timeout, connection reset or an unreadable body: worth another attempt."""

    retryable = True

    def __init__(self, provider: str, kind: str, message: str, **kw) -> None:
        if kind not in RETRYABLE_KINDS:
            raise ValueError(f"not a retryable kind: {kind}")
        super().__init__(provider, kind, message, **kw)


class PermanentProviderError(ProviderError):
    """Auth failure, invalid image, bad request or exhausted daily quota: retrying cannot help; fail fast."""

    retryable = False

    def __init__(self, provider: str, kind: str, message: str, **kw) -> None:
        if kind not in PERMANENT_KINDS:
            raise ValueError(f"not a permanent kind: {kind}")
        super().__init__(provider, kind, message, **kw)
