"""The one narrow interface every provider adapter implements: encoded images in, raw responses out.

Adapters know their SDK, wire format and limits; they know nothing about noise, retries, rate limits,
logging or statistics (all of that lives above them, in `robust_api.dispatch` and `robust_api.engine`).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

from robust_api.errors import ProviderError
from robust_api.providers.limits import ImageLimits  # re-exported: the type of every adapter's `limits`


@dataclass(frozen=True)
class ProviderResponse:
    """One image's raw response, JSON-compatible exactly as received, plus what the provider says about itself."""

    response: dict[str, Any]
    model_version: str | None = None
    request_id: str | None = None


@dataclass
class Pricing:
    """List price per 1,000 calls in USD and the date it was read (prices change; override in your config)."""

    usd_per_1000: float
    as_of: str
    source: str = ""


class Provider(abc.ABC):
    """An image labeller reachable by batch calls.

    `classify(images)` sends `len(images) <= max_batch` encoded images (bytes in one of `limits.formats`) and
    returns one entry per image, in order: a ProviderResponse, or a ProviderError for a per-image failure
    inside an otherwise successful call (Google and Clarifai report these in a 200 response).
    A failure of the whole call raises RetryableProviderError or PermanentProviderError.
    The adapter's SDK must not retry on its own: the dispatch layer is the only retry layer.
    """

    name: ClassVar[str]
    max_batch: ClassVar[int] = 1
    limits: ImageLimits  # a class attribute, or per instance when it depends on settings (Azure API version)
    default_rate_per_s: ClassVar[float] = 10.0
    pricing: ClassVar[Pricing] = Pricing(0.0, "n/a")
    credential_hint: ClassVar[str] = ""

    def settings(self) -> dict[str, Any]:
        """Model settings that can change the label (API version, model id, max results): part of the cache key."""
        return {}

    @abc.abstractmethod
    async def classify(self, images: Sequence[bytes]) -> list[ProviderResponse | ProviderError]:
        """Label a batch of encoded images; see the class docstring for the contract."""

    async def aclose(self) -> None:
        """Release connections; the default has nothing to release."""


def base64_chunks(images: list[bytes], max_bytes: int, overhead_per_image: int = 0) -> Iterator[list[bytes]]:
    """Consecutive groups of images whose base64 size (plus `overhead_per_image` each) stays under max_bytes;
    an image larger than that on its own still forms a group (the provider then answers for it)."""
    chunk: list[bytes] = []
    size = 0
    for data in images:
        encoded = 4 * ((len(data) + 2) // 3) + overhead_per_image
        if chunk and size + encoded > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(data)
        size += encoded
    if chunk:
        yield chunk


def answer_in_chunks(
    chunks: Iterable[list[bytes]], total: int, send: Callable[[list[bytes]], list[ProviderResponse | ProviderError]]
) -> list[ProviderResponse | ProviderError]:
    """Send the chunks of one batch in order (for request-size caps). When a chunk fails after earlier ones
    were answered (and paid for), keep those answers and give each remaining image the failure, so the
    dispatcher re-sends only those; a failure of the first chunk is raised as the whole call's."""
    out: list[ProviderResponse | ProviderError] = []
    for chunk in chunks:
        try:
            out.extend(send(chunk))
        except ProviderError as exc:
            if not out:
                raise
            out.extend([exc] * (total - len(out)))
            break
    return out


@dataclass
class ProviderSpec:
    """How to build a provider from the CLI or RobustAPI: name, optional endpoint override, extra options."""

    name: str
    endpoint: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
