"""Google Cloud Vision adapter: LABEL_DETECTION through `google-cloud-vision`, up to 16 images per request.

One `classify` call is one `batch_annotate_images` request (two only when 16 images would exceed Google's
10 MB JSON request limit; see `_chunks`), sent with `retry=None` so the SDK never retries (its default
retries 503/504 for up to 600 s): the dispatch layer is the only retry layer.
Each image's answer is logged as Google's REST JSON (camelCase), e.g. `{"labelAnnotations": [{"mid",
"description", "score", "topicality"}]}`; an image Google could not read comes back inside the 200 as
`{"error": {...}}` and becomes a ProviderError entry (code 3 INVALID_ARGUMENT -> invalid_image).
Credentials, in order: `api_key=`, `credentials=`, GOOGLE_API_KEY, Application Default Credentials
(GOOGLE_APPLICATION_CREDENTIALS or gcloud's ADC file or the metadata server). Messages never contain the key.

Telling throttling from an exhausted daily quota (both are HTTP 429 RESOURCE_EXHAUSTED): Google names the
quota limit it hit, in the ErrorInfo detail (`metadata.quota_limit` / `quota_limit_name`, e.g.
"DefaultRequestsPerDayPerProject") and in the message ("... limit 'Requests per day' ..."). A limit per day
is a permanent `quota` error (waiting seconds cannot help); any other 429 is `throttled` (retryable).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
from typing import Any, Sequence

from robust_api.errors import (
    RETRYABLE_KINDS,
    ConfigError,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
)
from robust_api.providers.base import (
    Pricing,
    Provider,
    ProviderResponse,
    answer_in_chunks,
    base64_chunks,
)
from robust_api.providers.limits import MiB, ImageLimits
from robust_api.providers.wire import EMULATOR_KEY, retry_after_from_headers

API_KEY_ENV = "GOOGLE_API_KEY"
CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
AUTH_HINT = f"set {CREDENTIALS_ENV} (a service-account JSON file) or {API_KEY_ENV}"
MAX_REQUEST_JSON_BYTES = 10 * 1024 * 1024  # Google's limit on one images:annotate JSON body
_REQUEST_OVERHEAD_BYTES = 512  # per image: JSON keys, features, pretty-printing
VISION_SCOPE = "https://www.googleapis.com/auth/cloud-vision"
LABEL_DETECTION = 4  # vision_v1.Feature.Type.LABEL_DETECTION

# google.rpc.Code values of per-image errors -> our kinds (unknown codes: "server", retried a bounded number
# of times, rather than aborting a whole run on a code we have never seen).
_RPC_CODE_KINDS = {
    3: "invalid_image",  # INVALID_ARGUMENT: "Bad image data."
    4: "timeout",  # DEADLINE_EXCEEDED
    5: "bad_request",  # NOT_FOUND
    7: "auth",  # PERMISSION_DENIED
    8: "throttled",  # RESOURCE_EXHAUSTED
    9: "bad_request",  # FAILED_PRECONDITION
    11: "bad_request",  # OUT_OF_RANGE
    12: "bad_request",  # UNIMPLEMENTED
    16: "auth",  # UNAUTHENTICATED
}
_AUTH_REASONS = {"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED",
                 "API_KEY_IP_ADDRESS_BLOCKED", "API_KEY_ANDROID_APP_BLOCKED", "API_KEY_IOS_APP_BLOCKED",
                 "CREDENTIALS_MISSING", "ACCESS_TOKEN_EXPIRED", "ACCESS_TOKEN_TYPE_UNSUPPORTED",
                 "SERVICE_DISABLED", "BILLING_DISABLED", "CONSUMER_INVALID"}
_HTTP_PREFIX = re.compile(r"^[A-Z]+ \S+: ")
_PER_DAY = re.compile(r"per[\s_-]*day", re.IGNORECASE)


def _error(kind: str, message: str, **kw: Any) -> ProviderError:
    cls = RetryableProviderError if kind in RETRYABLE_KINDS else PermanentProviderError
    return cls("google", kind, message, **kw)


class GoogleProvider(Provider):
    """Google Cloud Vision label detection, batched (up to 16 images per request).

    Options: max_results (labels per image, default 10); timeout_s per HTTP request; max_workers threads for
    the blocking SDK calls; endpoint (e.g. "http://127.0.0.1:PORT" for the emulator; a scheme-less host means
    https); anonymous=True sends no credential at all (an emulator that requires none).
    Raises ConfigError for missing credentials (naming GOOGLE_APPLICATION_CREDENTIALS and GOOGLE_API_KEY).
    """

    name = "google"
    max_batch = 16
    # 20 MB per image but 10 MB per JSON request, and base64 adds 4/3: one image must stay under ~7.5 MB raw to
    # be sendable at all (`classify` also keeps a whole batch's base64 under MAX_REQUEST_JSON_BYTES).
    limits = ImageLimits(
        max_bytes=7 * MiB, max_side_px=16_000, max_pixels=75_000_000, formats=("JPEG", "PNG", "GIF", "BMP", "WEBP")
    )
    # Default quota 1,800 requests/min per project (third-party summary of the quotas page; providers.md s.2).
    default_rate_per_s = 30.0
    pricing = Pricing(
        1.50,
        "2026-11",
        "cloud.google.com/vision/pricing: Label Detection, units 1,001-5,000,000 per month (USD per 1,000 "
        "images); the first 1,000 units each month are free",
    )
    credential_hint = AUTH_HINT

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        api_key: str | None = None,
        credentials: Any = None,
        anonymous: bool = False,
        max_results: int = 10,
        timeout_s: float = 30.0,
        max_workers: int = 16,
    ) -> None:
        try:
            from google.cloud import vision
        except ImportError as exc:
            raise ConfigError("google: needs the google-cloud-vision SDK: pip install 'robust-api[google]'") from exc
        if int(max_results) < 1:
            raise ConfigError(f"google: max_results must be >= 1, not {max_results!r}")
        self.max_results = int(max_results)
        self.timeout_s = float(timeout_s)
        self.endpoint = endpoint
        api_key = api_key or (None if credentials is not None or anonymous else os.environ.get(API_KEY_ENV))
        self._secret = api_key
        client_options: dict[str, Any] = {}
        if endpoint:
            client_options["api_endpoint"] = endpoint
        if api_key:
            client_options["api_key"] = api_key  # sent as the x-goog-api-key header, never in the URL
            credentials = None
        elif anonymous:
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        elif credentials is None:
            credentials = self._default_credentials()
        # REST, not the default gRPC: it reaches plain-HTTP endpoints (the emulator) and its errors carry the
        # HTTP response (Retry-After) with them.
        self._client = vision.ImageAnnotatorClient(
            credentials=credentials, transport="rest", client_options=client_options or None
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="robust-api-google")

    @staticmethod
    def _default_credentials() -> Any:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            credentials, _project = google.auth.default(scopes=[VISION_SCOPE])
        except DefaultCredentialsError as exc:  # its text names what ADC looked for (paths, never secrets)
            raise ConfigError(f"google: no usable credentials: {AUTH_HINT} ({exc})") from None
        return credentials

    @classmethod
    def for_emulator(cls, url: str, **options: Any) -> "GoogleProvider":
        """An adapter pointed at a local GoogleEmulator, sending its default key (EMULATOR_KEY) as an API key."""
        if not options.get("anonymous") and options.get("credentials") is None:
            options.setdefault("api_key", EMULATOR_KEY)
        return cls(endpoint=url, **options)

    def settings(self) -> dict[str, Any]:
        return {"feature": "LABEL_DETECTION", "max_results": self.max_results}

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        transport = getattr(self._client, "transport", None)
        if transport is not None:
            await asyncio.to_thread(transport.close)

    # -- calls -------------------------------------------------------------------------------------
    async def classify(self, images: Sequence[bytes]) -> list[ProviderResponse | ProviderError]:
        """Label up to 16 images in one request; per-image failures are ProviderError entries.

        Raises ConfigError for more than max_batch images (the dispatch layer splits batches), and
        Retryable/PermanentProviderError when the whole request fails.
        """
        images = list(images)
        if len(images) > self.max_batch:
            raise ConfigError(f"google: at most {self.max_batch} images per call, got {len(images)}")
        if not images:
            return []
        loop = asyncio.get_running_loop()
        # A private pool: the default executor may be busy with work (e.g. an in-process emulator's labeller)
        # that these blocking calls wait on.
        return await loop.run_in_executor(self._executor, self._classify_sync, images)

    def _classify_sync(self, images: list[bytes]) -> list[ProviderResponse | ProviderError]:
        chunks = base64_chunks(images, MAX_REQUEST_JSON_BYTES, _REQUEST_OVERHEAD_BYTES)
        return answer_in_chunks(chunks, len(images), self._annotate)

    def _annotate(self, images: list[bytes]) -> list[ProviderResponse | ProviderError]:
        feature = {"type_": LABEL_DETECTION, "max_results": self.max_results}
        requests = [{"image": {"content": data}, "features": [feature]} for data in images]
        try:
            batch = self._client.batch_annotate_images(requests=requests, retry=None, timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - every SDK/transport failure is mapped to one typed error
            raise self._call_error(exc) from None
        responses = list(batch.responses)
        if len(responses) != len(images):
            raise _error("malformed", f"{len(responses)} answers for {len(images)} images")
        return [self._entry(item) for item in responses]

    def _entry(self, item: Any) -> ProviderResponse | ProviderError:
        from google.protobuf.json_format import MessageToDict

        pb = type(item).pb(item)
        if pb.HasField("error") and pb.error.code != 0:
            kind = _RPC_CODE_KINDS.get(pb.error.code, "server")
            message = self._redact(pb.error.message or f"error code {pb.error.code}")
            if kind == "auth":
                message = f"{message} ({AUTH_HINT})"
            return _error(kind, message)
        response = MessageToDict(pb)  # camelCase keys, as Google's REST JSON spells them
        # proto3 JSON omits zero values: put back a score of 0 so every label has the documented fields.
        for label in response.get("labelAnnotations", []):
            label.setdefault("score", 0.0)
            label.setdefault("topicality", 0.0)
        return ProviderResponse(response=response, model_version=None, request_id=None)

    # -- error mapping -----------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _call_error(self, exc: BaseException) -> ProviderError:
        """Map one exception of the SDK or its transport to our taxonomy (see the module docstring)."""
        import requests
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc
        from google.protobuf.json_format import ParseError

        if isinstance(exc, gexc.GoogleAPICallError):
            return self._api_error(exc)
        if isinstance(exc, auth_exc.TransportError):  # could not reach the token endpoint
            return _error("connection", self._redact(f"credential refresh failed to connect: {exc}"))
        if isinstance(exc, auth_exc.GoogleAuthError):
            return _error("auth", self._redact(f"credentials rejected or unusable: {exc}; {AUTH_HINT}"))
        if isinstance(exc, requests.exceptions.Timeout):
            return _error("timeout", f"no response within {self.timeout_s:g} s")
        if isinstance(exc, requests.exceptions.RequestException):
            return _error("connection", self._redact(f"{type(exc).__name__}: {exc}"))
        if isinstance(exc, (ParseError, ValueError, UnicodeDecodeError)):
            return _error("malformed", self._redact(f"unreadable response body ({type(exc).__name__}: {exc})"))
        if isinstance(exc, (ConnectionError, TimeoutError)):  # OSError-level failures below requests
            kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
            return _error(kind, self._redact(f"{type(exc).__name__}: {exc}"))
        return _error("malformed", self._redact(f"unexpected failure ({type(exc).__name__}: {exc})"))

    def _api_error(self, exc: Any) -> ProviderError:
        from google.api_core import exceptions as gexc

        status = exc.code if isinstance(exc.code, int) else None
        # The REST transport prefixes the server's message with "POST <url>: "; keep the server's words only.
        message = self._redact(_HTTP_PREFIX.sub("", str(exc.message or type(exc).__name__)))
        reason = exc.reason or ""
        metadata = exc.metadata or {}
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        retry_after = retry_after_from_headers(headers)
        request_id = headers.get("x-request-id") or headers.get("X-Goog-Request-Id")
        kw = {"status": status, "request_id": request_id}
        if reason in _AUTH_REASONS or isinstance(exc, (gexc.Unauthorized, gexc.Forbidden)):
            return _error("auth", f"{message} ({AUTH_HINT})", **kw)
        if isinstance(exc, gexc.TooManyRequests):  # 429, including ResourceExhausted
            limit = " ".join(str(metadata.get(k, "")) for k in ("quota_limit", "quota_limit_name"))
            if _PER_DAY.search(limit) or _PER_DAY.search(message):
                return _error("quota", f"daily quota exhausted: {message}", **kw)
            return _error("throttled", message, retry_after_s=retry_after, **kw)
        if isinstance(exc, (gexc.GatewayTimeout, gexc.DeadlineExceeded)) or status == 408:
            return _error("timeout", message, retry_after_s=retry_after, **kw)
        if isinstance(exc, gexc.ServerError):  # 500, 502, 503 ...
            return _error("server", message, retry_after_s=retry_after, **kw)
        if isinstance(exc, gexc.ClientError):  # 400 INVALID_ARGUMENT, 404, 413 ...
            return _error("bad_request", message, **kw)
        return _error("server", message, retry_after_s=retry_after, **kw)


GOOGLE_LIMITS = GoogleProvider.limits  # kept importable under its old name (tests use it)
