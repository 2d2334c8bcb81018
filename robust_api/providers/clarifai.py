"""Clarifai adapter: PostModelOutputs on the public general image recognition model through `clarifai-grpc`.

Transport: clarifai-grpc's JSON channel (`GRPCJSONChannel` over a `requests` session we build), because it
reaches plain-HTTP endpoints (the emulator) as well as https://api.clarifai.com and needs no gRPC runtime.
The channel's stock session retries failed connections twice and has no timeout; ours retries nothing
(`max_retries=0`: the dispatch layer is the only retry layer) and times out after `timeout_s`.
Auth: `Authorization: Key <PAT>` from `pat=` or CLARIFAI_PAT. The PAT never appears in our messages, and a
filter on the "clarifai" logger redacts it from the SDK's DEBUG logs (which print request headers).

Each image's answer is logged as `{"status": <call status>, "outputs": [<its output>]}` (proto field names,
integer status codes, as Clarifai's JSON spells them; the echoed input bytes are dropped), so the decision
module reads `outputs[0].data.concepts`. model_version = `outputs[0].model.model_version.id`.

Status codes (clarifai_grpc.grpc.api.status.status_code_pb2) -> our kinds:
  SUCCESS 10000 ok; MIXED_STATUS 10010 / FAILURE 10020 with one output per input -> each output's own status;
  throttled: CONN_THROTTLED 11005, CONN_EXCEED_HOURLY_LIMIT 11003;
  quota (permanent): CONN_EXCEED_MONTHLY_LIMIT 11004, CONN_EXCEEDS_LIMITS 11006, LICENSE_VOLUME_EXCEEDED 60006,
    BILLING_* 69000/69001/99005 (Clarifai has no daily limit; the monthly plan limit is its quota);
  auth: CONN_TOKEN_INVALID 11001, CONN_CREDENTIALS_INVALID 11002, CONN_INSUFFICIENT_SCOPES 11007,
    CONN_KEY_INVALID 11008, CONN_KEY_NOT_FOUND 11009, MODEL_PERMISSION_DENIED 21201;
  server (retryable): MODEL_DEPLOYING 21351, MODEL_QUEUED_FOR_DEPLOYMENT 21352, MODEL_BUSY_PLEASE_RETRY 21354,
    MODEL_LOADING 21355, MODEL_PREDICTION_FAILED 21313, RPC_REQUEST_QUEUE_FULL 40030, RPC_SERVER_UNAVAILABLE
    40031, RPC_CANCELED 40035, internal 98xxx / 99009, bare FAILURE 10020 without per-input statuses;
  timeout: RPC_REQUEST_TIMEOUT 40032, DATABASE_STATEMENT_TIMEOUT 40011, INTERNAL_UNEXPECTED_TIMEOUT 98009;
  invalid_image: input codes 30001-39999 (e.g. INPUT_DOWNLOAD_FAILED 30002, INPUT_UNSUPPORTED_FORMAT 30101,
    INPUT_INVALID_ARGUMENT 30104, INPUT_OVER_LIMIT 30105, ALL_INPUT_INVALID_BYTES 30300), FILETYPE_UNSUPPORTED
    46003, MP_DOWNLOAD_MAX_SIZE_EXCEEDED_ERROR 47103, MP_IMAGE_DECODE_ERROR 47104, MP_IMAGE_PROCESSING_ERROR 47106;
  bad_request: everything else (e.g. CONN_INVALID_REQUEST 11102, MODEL_DOES_NOT_EXIST 21200).
A body that is not JSON (the channel's ApiError) -> malformed; requests timeouts -> timeout; other
transport failures -> connection.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
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
from robust_api.providers.limits import ImageLimits
from robust_api.providers.wire import EMULATOR_KEY, retry_after_from_headers

PAT_ENV = "CLARIFAI_PAT"
AUTH_HINT = f"set {PAT_ENV} to a Clarifai personal access token"
DEFAULT_BASE_URL = "https://api.clarifai.com"
# Our own ceiling on one request's base64 payload (Clarifai documents 128 inputs, not a byte limit): large
# batches are split so one HTTP body stays a size proxies and the API handle comfortably.
MAX_REQUEST_BASE64_BYTES = 16 * 1024 * 1024

_SUCCESS = 10000
_MIXED_STATUS = 10010
_FAILURE = 10020
_THROTTLED = {11003, 11005}
_QUOTA = {11004, 11006, 60006, 69000, 69001, 99005}
_AUTH = {11001, 11002, 11007, 11008, 11009, 21201}
_SERVER = {10020, 21313, 21351, 21352, 21354, 21355, 40030, 40031, 40035, 99009}
_TIMEOUT = {40011, 40032, 98009}
_INVALID_IMAGE = {46003, 47103, 47104, 47106}


def status_kind(code: int) -> str | None:
    """Our error kind for a Clarifai status code (None for success); see the module docstring."""
    if code in (_SUCCESS, 0):
        return None
    if code in _THROTTLED:
        return "throttled"
    if code in _QUOTA:
        return "quota"
    if code in _AUTH:
        return "auth"
    if code in _TIMEOUT:
        return "timeout"
    if code in _SERVER or 98000 <= code < 99000:
        return "server"
    if code in _INVALID_IMAGE or 30000 < code < 40000:
        return "invalid_image"
    return "bad_request"


def _error(kind: str, message: str, **kw: Any) -> ProviderError:
    cls = RetryableProviderError if kind in RETRYABLE_KINDS else PermanentProviderError
    return cls("clarifai", kind, message, **kw)


class _SDKLogFilter(logging.Filter):
    """On the SDK's "clarifai" logger: redacts known PATs (its DEBUG lines print the Authorization header) and
    demotes its ERROR traceback for a non-JSON body to DEBUG (we raise a typed `malformed` error for it, and
    the dispatcher retries it; a traceback on the user's terminal would be noise)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
                return True
            redacted = message
            for secret in self.secrets:
                redacted = redacted.replace(secret, "***")
            if redacted != message:
                record.msg, record.args = redacted, None
        if record.exc_info and record.pathname.replace("\\", "/").endswith("clarifai_grpc/channel/http_client.py"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"  # handlers compare levelno after filters
        return True


_REDACT = _SDKLogFilter()
logging.getLogger("clarifai").addFilter(_REDACT)


class ClarifaiProvider(Provider):
    """Clarifai concepts for up to 128 images per request (split further to keep each body <= 16 MB).

    Options: user_id "clarifai", app_id "main", model_id "general-image-recognition", version_id (pin a model
    version; default: the model's current one); pat (else CLARIFAI_PAT); endpoint (default
    https://api.clarifai.com; "http://127.0.0.1:PORT" for the emulator); timeout_s per HTTP request; max_workers threads for the blocking SDK calls.
    Raises ConfigError when no PAT is configured.
    """

    name = "clarifai"
    max_batch = 128
    # < 20 MB (read as decimal megabytes, the stricter reading), <= 85 Mpixel.
    limits = ImageLimits(
        max_bytes=20_000_000 - 1, max_pixels=85_000_000, formats=("JPEG", "PNG", "TIFF", "BMP", "WEBP", "GIF")
    )
    default_rate_per_s = 15.0  # "exceeded limit of 15 requests per second" on all plans (providers.md s.4)
    pricing = Pricing(
        1.20,
        "2026-11",
        "clarifai.com/pricing: pay-as-you-go predict on a Clarifai-hosted visual classifier (USD per 1,000 "
        "inputs); plan credits and tiers change it",
    )
    credential_hint = AUTH_HINT

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        pat: str | None = None,
        user_id: str = "clarifai",
        app_id: str = "main",
        model_id: str = "general-image-recognition",
        version_id: str | None = None,
        timeout_s: float = 30.0,
        max_workers: int = 16,
    ) -> None:
        try:
            import requests
            from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
            from clarifai_grpc.grpc.api import service_pb2_grpc
        except ImportError as exc:
            raise ConfigError("clarifai: needs clarifai-grpc and requests: pip install 'robust-api[clarifai]'") from exc
        pat = pat or os.environ.get(PAT_ENV)
        if not pat:
            raise ConfigError(f"clarifai: no credentials found: {AUTH_HINT} (or pass pat=)")
        self._pat = pat
        _REDACT.secrets.add(pat)
        self.user_id, self.app_id, self.model_id, self.version_id = user_id, app_id, model_id, version_id or None
        self.timeout_s = float(timeout_s)
        self.base_url = (endpoint or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"clarifai: the endpoint must start with https:// or http://, not {self.base_url!r}")
        self._last_http = threading.local()  # status and headers of the HTTP response in this worker thread
        session = _make_session(self.timeout_s, pool_size=max_workers)
        session.hooks["response"].append(self._remember_response)
        self._session = session
        # get_json_channel also sets the module-global response deserializer V2Stub needs; then swap in our
        # session (its own retries connection failures twice and never times out) before the stub binds it.
        channel = ClarifaiChannel.get_json_channel(base_url=self.base_url)
        channel.session.close()
        channel.session = session
        self._stub = service_pb2_grpc.V2Stub(channel)
        self._requests = requests
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="robust-api-clarifai")

    @classmethod
    def for_emulator(cls, url: str, **options: Any) -> "ClarifaiProvider":
        """An adapter pointed at a local ClarifaiEmulator, with its default PAT (EMULATOR_KEY)."""
        options.setdefault("pat", EMULATOR_KEY)
        return cls(endpoint=url, **options)

    def settings(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "app_id": self.app_id, "model_id": self.model_id,
                "version_id": self.version_id}

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    # -- calls -------------------------------------------------------------------------------------
    async def classify(self, images: Sequence[bytes]) -> list[ProviderResponse | ProviderError]:
        """Label up to 128 images; per-input failures are ProviderError entries.

        Raises ConfigError for more than max_batch images (the dispatch layer splits batches), and
        Retryable/PermanentProviderError when the whole request fails.
        """
        images = list(images)
        if len(images) > self.max_batch:
            raise ConfigError(f"clarifai: at most {self.max_batch} images per call, got {len(images)}")
        if not images:
            return []
        loop = asyncio.get_running_loop()
        # A private pool: the default executor may be busy with work (e.g. an in-process emulator's labeller)
        # that these blocking calls wait on.
        return await loop.run_in_executor(self._executor, self._classify_sync, images)

    def _classify_sync(self, images: list[bytes]) -> list[ProviderResponse | ProviderError]:
        return answer_in_chunks(base64_chunks(images, MAX_REQUEST_BASE64_BYTES), len(images), self._predict)

    def _predict(self, images: list[bytes]) -> list[ProviderResponse | ProviderError]:
        from clarifai_grpc.grpc.api import resources_pb2, service_pb2

        request = service_pb2.PostModelOutputsRequest(
            user_app_id=resources_pb2.UserAppIDSet(user_id=self.user_id, app_id=self.app_id),
            model_id=self.model_id,
            version_id=self.version_id or "",
            inputs=[resources_pb2.Input(data=resources_pb2.Data(image=resources_pb2.Image(base64=data)))
                    for data in images],
        )
        self._last_http.status, self._last_http.headers = None, {}
        try:
            response = self._stub.PostModelOutputs(request, metadata=(("authorization", "Key " + self._pat),))
        except Exception as exc:  # noqa: BLE001 - every SDK/transport failure is mapped to one typed error
            raise self._transport_error(exc) from None
        return self._entries(response, len(images))

    def _remember_response(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self._last_http.status = response.status_code
        self._last_http.headers = dict(response.headers)

    # -- responses ---------------------------------------------------------------------------------
    def _entries(self, response: Any, n: int) -> list[ProviderResponse | ProviderError]:
        from google.protobuf.json_format import MessageToDict

        code = int(response.status.code)
        request_id = response.status.req_id or None
        outputs = list(response.outputs)
        if code in (_SUCCESS, _MIXED_STATUS, _FAILURE) and len(outputs) == n and (code != _FAILURE or any(
            int(o.status.code) not in (0, _SUCCESS) for o in outputs
        )):
            status = MessageToDict(response.status, preserving_proto_field_name=True, use_integers_for_enums=True)
            return [self._entry(output, status, code, request_id) for output in outputs]
        if code == _SUCCESS:
            raise _error("malformed", f"{len(outputs)} outputs for {n} inputs", request_id=request_id,
                         status=self._last_http.status)
        raise self._status_error(response.status, request_id)

    def _entry(self, output: Any, status: dict, call_code: int, request_id: str | None) -> ProviderResponse | ProviderError:
        from google.protobuf.json_format import MessageToDict

        out_code = int(output.status.code) or call_code
        kind = status_kind(out_code if out_code != _MIXED_STATUS else _SUCCESS)
        if kind is not None:
            return _error(kind, self._describe(output.status, out_code), request_id=request_id)
        out = MessageToDict(output, preserving_proto_field_name=True, use_integers_for_enums=True)
        image = out.get("input", {}).get("data", {}).get("image", {})
        image.pop("base64", None)  # never log image bytes (Clarifai echoes a placeholder, but don't rely on it)
        # proto3 JSON omits zero values: put back a value of 0 so every concept has the documented fields.
        for concept in out.get("data", {}).get("concepts", []):
            concept.setdefault("value", 0.0)
        version = output.model.model_version.id or None
        return ProviderResponse(response={"status": status, "outputs": [out]}, model_version=version,
                                request_id=request_id)

    @staticmethod
    def _describe(status: Any, code: int) -> str:
        from clarifai_grpc.grpc.api.status import status_code_pb2

        try:
            name = status_code_pb2.StatusCode.Name(code)
        except ValueError:
            name = "UNKNOWN"
        parts = [f"{name} {code}", status.description, status.details]
        return ": ".join(p for p in parts if p)

    def _status_error(self, status: Any, request_id: str | None) -> ProviderError:
        code = int(status.code)
        kind = status_kind(code) or "malformed"
        message = self._redact(self._describe(status, code))
        if kind == "auth":
            message = f"{message} ({AUTH_HINT})"
        retry_after = retry_after_from_headers(self._last_http.headers) if kind in RETRYABLE_KINDS else None
        return _error(kind, message, request_id=request_id, status=self._last_http.status, retry_after_s=retry_after)

    # -- transport failures ------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return text.replace(self._pat, "***")

    def _transport_error(self, exc: BaseException) -> ProviderError:
        from clarifai_grpc.channel.errors import ApiError

        requests = self._requests
        # The channel turns every requests exception into ApiError(url, params, method, response); the original
        # is its __context__. Never format the ApiError itself: its args hold the whole request (images).
        cause = exc.__context__ if isinstance(exc, ApiError) else exc
        status = self._last_http.status
        if isinstance(cause, requests.exceptions.Timeout):
            return _error("timeout", f"no response within {self.timeout_s:g} s")
        if isinstance(cause, requests.exceptions.RequestException):
            return _error("connection", self._redact(f"{type(cause).__name__}: {cause}"))
        if isinstance(cause, (ConnectionError, TimeoutError)):
            kind = "timeout" if isinstance(cause, TimeoutError) else "connection"
            return _error(kind, self._redact(f"{type(cause).__name__}: {cause}"))
        if isinstance(exc, ApiError) or isinstance(cause, ValueError):
            return _error("malformed", f"response body is not Clarifai JSON (HTTP {status})", status=status)
        return _error("malformed", self._redact(f"unreadable response ({type(exc).__name__})"), status=status)


def _make_session(timeout_s: float, pool_size: int) -> Any:
    """A requests session with a default timeout and no transport-level retries (requests is imported lazily:
    it is an optional dependency of robust-api)."""
    import requests

    class TimeoutSession(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout_s)
            return super().request(*args, **kwargs)

    session = TimeoutSession()
    adapter = requests.adapters.HTTPAdapter(max_retries=0, pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


CLARIFAI_LIMITS = ClarifaiProvider.limits  # kept importable under its old name (tests use it)
