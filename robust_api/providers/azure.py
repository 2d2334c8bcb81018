"""Azure AI Vision adapter: Image Analysis 4.0 (default) or Computer Vision v3.2 tags, through Microsoft's SDKs.

- 4.0: `azure-ai-vision-imageanalysis` `ImageAnalysisClient.analyze(image_data, [VisualFeatures.TAGS])`;
  the response is logged as the raw JSON body: `{"modelVersion", "metadata", "tagsResult": {"values": [...]}}`.
- 3.2: `azure-cognitiveservices-vision-computervision` `tag_image_in_stream` (operation "tag") or
  `analyze_image_in_stream(visual_features=[tags])` (operation "analyze"); raw JSON `{"tags": [...], "requestId", ...}`.
Both SDKs' own retries are off (azure-core `retry_total=0`; msrest `retry_policy.retries = 0`), so one
`classify` call is exactly one HTTP request: the dispatch layer is the only retry layer.
Credentials: `endpoint=` / `key=`, else AZURE_VISION_ENDPOINT / AZURE_VISION_KEY, else VISION_ENDPOINT /
VISION_KEY (the names in Azure's samples). Messages never contain the key.

Errors (raised by `classify`; the request id comes from apim-request-id / x-ms-request-id or `requestId`):
  401, 403 (other)                    -> Permanent auth ("... check AZURE_VISION_KEY / AZURE_VISION_ENDPOINT")
  403 "Out of call volume quota ..."  -> Permanent quota
  429                                 -> Retryable throttled, retry_after_s from retry-after(-ms) or "Try again in N"
  5xx                                 -> Retryable server (504 and 408 -> timeout)
  400 InvalidImageFormat / InvalidImageSize / NotSupportedImage / UnsupportedMediaType, 413, "image size"
                                      -> Permanent invalid_image
  404                                 -> Permanent bad_request ("... check AZURE_VISION_ENDPOINT")
  other 4xx                           -> Permanent bad_request
  read/connect timeout                -> Retryable timeout;  refused / reset -> Retryable connection
  200 with a body that is not JSON or lacks the tags list -> Retryable malformed
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import os
import re
from typing import Any, Mapping, Sequence

from robust_api.errors import ConfigError, PermanentProviderError, ProviderError, RetryableProviderError
from robust_api.providers.base import Pricing, Provider, ProviderResponse
from robust_api.providers.limits import MiB, ImageLimits
from robust_api.providers.wire import EMULATOR_KEY, retry_after_from_headers

ENDPOINT_ENV = ("AZURE_VISION_ENDPOINT", "VISION_ENDPOINT")
KEY_ENV = ("AZURE_VISION_KEY", "VISION_KEY")
AUTH_HINT = "check AZURE_VISION_KEY / AZURE_VISION_ENDPOINT"
API_VERSIONS = ("4.0", "3.2")
V32_OPERATIONS = ("tag", "analyze")

# Image-validation codes Azure puts in `error.code` or `error.innererror.code`.
_INVALID_IMAGE_CODES = {"invalidimageformat", "invalidimagesize", "notsupportedimage", "unsupportedmediatype"}
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?) second", re.IGNORECASE)


class AzureProvider(Provider):
    """Azure AI Vision tags for one image per call (Azure has no multi-image request).

    Options: api_version "4.0" (default) or "3.2"; operation "tag" (default) or "analyze" (3.2 only);
    model_version (default "latest"; pin e.g. "2023-10-01" to freeze the labels); language (default "en");
    connect_timeout_s / read_timeout_s per HTTP request; max_workers threads for the blocking SDK calls.
    Raises ConfigError for missing credentials, unknown options or a missing SDK.
    """

    name = "azure"
    max_batch = 1
    # Per API version (the 4.0 service accepts more); `limits` is the stricter 3.2 set on the class and each
    # instance takes its own version's. Bounds stated as "under"/"larger than" are moved one unit inward.
    limits_by_version = {
        "3.2": ImageLimits(  # < 4 MB, > 50x50, < 16000x16000; JPEG/PNG/GIF/BMP
            max_bytes=4 * MiB - 1, min_side_px=51, max_side_px=15_999, formats=("JPEG", "PNG", "GIF", "BMP")
        ),
        "4.0": ImageLimits(  # < 20 MB, > 50x50, < 16000x16000; also WEBP/ICO/TIFF/MPO
            max_bytes=20 * MiB - 1,
            min_side_px=51,
            max_side_px=15_999,
            formats=("JPEG", "PNG", "GIF", "BMP", "WEBP", "ICO", "TIFF", "MPO"),
        ),
    }
    limits = limits_by_version["3.2"]
    # Azure's FAQ: S1 allows "up to 20 TPS" (often quoted 10); F0 allows 20 per minute. Set rate for your tier.
    default_rate_per_s = 10.0
    pricing = Pricing(
        1.00,
        "2026-11",
        "Azure AI Vision price list, Image Analysis S1, Tags, 0-1M transactions/month (USD per 1,000); "
        "each analyze feature is billed as one transaction",
    )
    credential_hint = "set AZURE_VISION_ENDPOINT and AZURE_VISION_KEY"

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        key: str | None = None,
        api_version: str = "4.0",
        operation: str = "tag",
        model_version: str = "latest",
        language: str = "en",
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        max_workers: int = 16,
    ) -> None:
        api_version = str(api_version)
        if api_version not in API_VERSIONS:
            raise ConfigError(f"azure: api_version must be one of {API_VERSIONS}, not {api_version!r}")
        if operation not in V32_OPERATIONS:
            raise ConfigError(f"azure: operation must be one of {V32_OPERATIONS}, not {operation!r}")
        endpoint = endpoint or _first_env(ENDPOINT_ENV)
        key = key or _first_env(KEY_ENV)
        missing = [names[0] for names, value in ((ENDPOINT_ENV, endpoint), (KEY_ENV, key)) if not value]
        if missing:
            raise ConfigError(
                f"azure: missing credentials: set {' and '.join(missing)} "
                "(or VISION_ENDPOINT / VISION_KEY, or pass endpoint= and key=)"
            )
        assert endpoint is not None and key is not None
        if not endpoint.startswith(("https://", "http://")):
            raise ConfigError("azure: the endpoint must start with https:// (e.g. https://NAME.cognitiveservices.azure.com)")
        self.endpoint = endpoint.rstrip("/")
        self.api_version = api_version
        self.operation = operation if api_version == "3.2" else "analyze"
        self.model_version = model_version
        self.language = language
        self._key = key
        self.limits = self.limits_by_version[api_version]  # per instance: depends on the API version
        if api_version == "4.0":
            self._client = self._make_v4_client(connect_timeout_s, read_timeout_s)
        else:
            self._client = self._make_v32_client(connect_timeout_s, read_timeout_s)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="robust-api-azure")

    @classmethod
    def for_emulator(cls, url: str, **options: Any) -> "AzureProvider":
        """An adapter pointed at a local AzureEmulator (its default key, EMULATOR_KEY)."""
        options.setdefault("key", EMULATOR_KEY)
        return cls(endpoint=url, **options)

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"api_version": self.api_version, "feature": "tags", "model_version": self.model_version,
                               "language": self.language}
        if self.api_version == "3.2":
            out["operation"] = self.operation
        return out

    # -- clients -----------------------------------------------------------------------------------
    def _make_v4_client(self, connect_timeout_s: float, read_timeout_s: float) -> Any:
        try:
            from azure.ai.vision.imageanalysis import ImageAnalysisClient
            from azure.core.credentials import AzureKeyCredential
        except ImportError as exc:
            raise ConfigError("azure: Image Analysis 4.0 needs `pip install robust-api[azure]`") from exc
        # retry_total=0: azure-core would otherwise retry 429/5xx/connection errors up to 3 times.
        return ImageAnalysisClient(
            self.endpoint,
            AzureKeyCredential(self._key),
            retry_total=0,
            connection_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
        )

    def _make_v32_client(self, connect_timeout_s: float, read_timeout_s: float) -> Any:
        try:
            from azure.cognitiveservices.vision.computervision import ComputerVisionClient
            from msrest.authentication import CognitiveServicesCredentials
        except ImportError as exc:
            raise ConfigError("azure: Computer Vision v3.2 needs `pip install robust-api[azure]`") from exc
        client = ComputerVisionClient(self.endpoint, CognitiveServicesCredentials(self._key))
        # msrest's urllib3 Retry would retry connection errors 3 times (status retries are already inert for POST).
        client.config.retry_policy.retries = 0
        client.config.connection.timeout = (connect_timeout_s, read_timeout_s)
        return client

    # -- calls -------------------------------------------------------------------------------------
    async def classify(self, images: Sequence[bytes]) -> list[ProviderResponse | ProviderError]:
        """Tag each image (one HTTP request each); raises Retryable/PermanentProviderError for a failed call."""
        images = list(images)
        if len(images) > self.max_batch:
            raise ConfigError(f"azure: at most {self.max_batch} image per call, got {len(images)}")
        loop = asyncio.get_running_loop()
        call = self._call_v4 if self.api_version == "4.0" else self._call_v32
        # A private pool: the default executor may be busy with work (e.g. an in-process emulator's labeller)
        # that these blocking calls wait on.
        return [await loop.run_in_executor(self._executor, call, data) for data in images]

    def _call_v4(self, data: bytes) -> ProviderResponse:
        from azure.ai.vision.imageanalysis.models import VisualFeatures
        from azure.core.exceptions import (
            DecodeError,
            HttpResponseError,
            ServiceRequestError,
            ServiceRequestTimeoutError,
            ServiceResponseError,
            ServiceResponseTimeoutError,
        )

        def keep_raw(pipeline_response: Any, _deserialized: Any, _headers: Any) -> tuple[Any, Mapping[str, str]]:
            http = pipeline_response.http_response
            return http.json(), http.headers

        try:
            body, headers = self._client.analyze(
                image_data=data,
                visual_features=[VisualFeatures.TAGS],
                language=self.language,
                model_version=self.model_version,
                cls=keep_raw,
            )
        except DecodeError as exc:  # a 200 whose body is not JSON (DecodeError subclasses HttpResponseError)
            raise self._malformed(f"unreadable body: {_short(exc)}", _response_headers(exc)) from exc
        except HttpResponseError as exc:
            raise self._http_error(exc.status_code, _response_headers(exc), _response_text(exc)) from exc
        except (ServiceRequestTimeoutError, ServiceResponseTimeoutError) as exc:
            raise RetryableProviderError(self.name, "timeout", _redact(f"no response in time: {exc}", self._key)) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise RetryableProviderError(self.name, "connection", _redact(f"connection failed: {exc}", self._key)) from exc
        except ValueError as exc:  # the SDK's response.json() on a truncated body
            raise self._malformed(f"unreadable body: {exc}", {}) from exc
        return self._response(body, headers, ("tagsResult", "values"))

    def _call_v32(self, data: bytes) -> ProviderResponse:
        import requests
        from azure.cognitiveservices.vision.computervision.models import VisualFeatureTypes
        from msrest.exceptions import ClientRequestError, DeserializationError, HttpOperationError

        try:
            if self.operation == "tag":
                raw = self._client.tag_image_in_stream(
                    io.BytesIO(data), language=self.language, model_version=self.model_version, raw=True
                )
            else:
                raw = self._client.analyze_image_in_stream(
                    io.BytesIO(data), visual_features=[VisualFeatureTypes.tags], language=self.language,
                    model_version=self.model_version, raw=True,
                )
        except HttpOperationError as exc:  # ComputerVisionErrorResponseException and friends
            response = exc.response
            status = getattr(response, "status_code", None)
            headers = dict(getattr(response, "headers", {}) or {})
            if status == 200:
                raise self._malformed(f"unreadable body: {exc}", headers) from exc
            raise self._http_error(status, headers, getattr(response, "text", "") or "") from exc
        except DeserializationError as exc:
            raise self._malformed(f"unreadable body: {_short(exc)}", {}) from exc
        except ClientRequestError as exc:
            inner = getattr(exc, "inner_exception", None)
            kind = "timeout" if isinstance(inner, requests.Timeout) else "connection"
            raise RetryableProviderError(self.name, kind, _redact(f"request failed: {inner or exc}", self._key)) from exc
        try:
            body = raw.response.json()
        except ValueError as exc:
            raise self._malformed(f"unreadable body: {exc}", dict(raw.response.headers)) from exc
        return self._response(body, dict(raw.response.headers), ("tags",))

    # -- response and error mapping ----------------------------------------------------------------
    def _response(self, body: Any, headers: Mapping[str, str], path: tuple[str, ...]) -> ProviderResponse:
        """The raw JSON as received, after checking it holds the tags list at `path`."""
        node = body
        for step in path:
            node = node.get(step) if isinstance(node, dict) else None
        if not isinstance(node, list):
            raise self._malformed(f"response has no {'.'.join(path)} list", headers)
        model_version = body.get("modelVersion")
        return ProviderResponse(
            response=body,
            model_version=str(model_version) if model_version is not None else None,
            request_id=_request_id(headers, body),
        )

    def _malformed(self, message: str, headers: Mapping[str, str]) -> RetryableProviderError:
        return RetryableProviderError(
            self.name, "malformed", _redact(message, self._key)[:300], request_id=_request_id(headers, None), status=200
        )

    def _http_error(self, status: int | None, headers: Mapping[str, str], text: str) -> ProviderError:
        """Map one non-200 Azure answer to our taxonomy (the table is in the module docstring)."""
        body = _json_or_none(text)
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code", "") or "")
        inner = error.get("innererror") if isinstance(error.get("innererror"), dict) else {}
        inner_code = str(inner.get("code", "") or "")
        message = str(error.get("message", "") or (text[:200] if text else ""))
        request_id = _request_id(headers, body)
        shown = "/".join(c for c in (code, inner_code) if c and c != str(status))
        detail = _redact(f"HTTP {status}{' ' + shown if shown else ''}: {message}", self._key)
        kw: dict[str, Any] = {"request_id": request_id, "status": status}
        codes = {code.lower(), inner_code.lower()}
        if status in (401, 403):
            if status == 403 and "quota" in message.lower():
                return PermanentProviderError(self.name, "quota", f"{detail} (upgrade the tier or wait for the quota to reset)", **kw)
            return PermanentProviderError(self.name, "auth", f"{detail}; {AUTH_HINT}", **kw)
        if status == 429:
            wait = _retry_after_s(headers)
            if wait is None:
                match = _TRY_AGAIN.search(message)
                wait = float(match.group(1)) if match else None
            return RetryableProviderError(self.name, "throttled", detail, retry_after_s=wait, **kw)
        if status is not None and (status >= 500 or status == 408):
            kind = "timeout" if status in (408, 504) else "server"
            return RetryableProviderError(self.name, kind, detail, retry_after_s=_retry_after_s(headers), **kw)
        if codes & _INVALID_IMAGE_CODES or status == 413 or "image size" in message.lower():
            return PermanentProviderError(self.name, "invalid_image", detail, **kw)
        if status == 404:
            return PermanentProviderError(self.name, "bad_request", f"{detail}; check AZURE_VISION_ENDPOINT", **kw)
        return PermanentProviderError(self.name, "bad_request", detail, **kw)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)
        close = getattr(self._client, "close", None)
        if close is not None:
            close()


def _first_env(names: Sequence[str]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _short(exc: BaseException) -> str:
    """The exception's own message without the wrapped exception's repr."""
    message = getattr(exc, "message", None)
    if isinstance(message, str) and message:
        return message
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _response_headers(exc: Any) -> dict[str, str]:
    response = getattr(exc, "response", None)
    return dict(getattr(response, "headers", {}) or {})


def _response_text(exc: Any) -> str:
    response = getattr(exc, "response", None)
    if response is None:
        return ""
    try:
        return response.text()
    except Exception:  # a body that cannot be decoded is just not informative
        return ""


def _request_id(headers: Mapping[str, str], body: Any) -> str | None:
    lower = {k.lower(): v for k, v in headers.items()}
    for name in ("apim-request-id", "x-ms-request-id", "x-request-id"):
        if lower.get(name):
            return str(lower[name])
    if isinstance(body, dict) and body.get("requestId"):
        return str(body["requestId"])
    return None


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from retry-after-ms / x-ms-retry-after-ms / Retry-After (seconds or HTTP date)."""
    return retry_after_from_headers(headers)


# Kept importable under their old names (tests use them).
AZURE_V32_LIMITS = AzureProvider.limits_by_version["3.2"]
AZURE_V4_LIMITS = AzureProvider.limits_by_version["4.0"]
