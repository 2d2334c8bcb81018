"""AWS Rekognition DetectLabels adapter through boto3.

Credentials and region come from boto3's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
AWS_PROFILE, SSO, instance roles; AWS_REGION / AWS_DEFAULT_REGION); this module never reads keys itself.
botocore's retries are off (`retries={"total_max_attempts": 1, "mode": "standard"}`: exactly one HTTP
request per call), so the dispatch layer is the only retry layer.
The logged response is boto3's parsed DetectLabels output without `ResponseMetadata`:
`{"Labels": [{"Name", "Confidence" (0-100), "Parents", ...}], "LabelModelVersion"}`.

Errors (raised by `classify`; the request id comes from ResponseMetadata.RequestId / x-amzn-RequestId):
  ThrottlingException, ProvisionedThroughputExceededException, HTTP 429 -> Retryable throttled
  InternalServerError, other 5xx                                       -> Retryable server (504 -> timeout)
  AccessDeniedException, UnrecognizedClientException, InvalidSignatureException, expired tokens, 401/403
                                   -> Permanent auth ("... check AWS credentials: AWS_ACCESS_KEY_ID/AWS_PROFILE and AWS_REGION")
  InvalidImageFormatException, ImageTooLargeException                  -> Permanent invalid_image
  LimitExceededException                                               -> Permanent quota (not modelled for
                                      DetectLabels; AWS uses it for service limits, our emulator for its quota knob)
  InvalidParameterException, other 4xx, client-side parameter errors   -> Permanent bad_request
  connect/read timeout -> Retryable timeout;  refused / closed connection -> Retryable connection
  unparsable body, or a 200 without a Labels list                      -> Retryable malformed
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
from typing import Any, Sequence

from robust_api.errors import ConfigError, PermanentProviderError, ProviderError, RetryableProviderError
from robust_api.providers.base import Pricing, Provider, ProviderResponse
from robust_api.providers.limits import ImageLimits
from robust_api.providers.wire import EMULATOR_KEY, retry_after_from_headers

AUTH_HINT = "check AWS credentials: AWS_ACCESS_KEY_ID/AWS_PROFILE and AWS_REGION"
EMULATOR_SECRET = "emulator-secret"  # the emulator checks only the access key id; not a secret

_THROTTLED = {
    "ThrottlingException", "ProvisionedThroughputExceededException", "Throttling", "ThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "SlowDown",
}
_SERVER = {"InternalServerError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException"}
_AUTH = {
    "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException", "SignatureDoesNotMatch",
    "IncompleteSignature", "InvalidClientTokenId", "MissingAuthenticationTokenException", "ExpiredTokenException",
    "ExpiredToken", "AuthFailure",
}
_INVALID_IMAGE = {"InvalidImageFormatException", "ImageTooLargeException"}
_BAD_REQUEST = {"InvalidParameterException", "ValidationException", "SerializationException", "InvalidS3ObjectException"}
_QUOTA = {"LimitExceededException"}  # no DetectLabels daily quota exists; the emulator uses this for its quota knob


# At DEBUG, botocore.endpoint logs every request's headers (the Authorization header's Credential scope holds the
# access key id; X-Amz-Security-Token the session token) and botocore.auth logs the canonical request (the
# token again). Credentials must never reach logs, so these loggers get a redacting filter.
_CREDENTIAL_IN_LOG = re.compile(
    r"(Credential=)[^/,\s'\"]+|('X-Amz-Security-Token': b?')[^']*|(x-amz-security-token:)\S*", re.IGNORECASE
)
_REDACTED_LOGGERS = ("botocore.endpoint", "botocore.auth")


class _RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "credential=" in message.lower() or "security-token" in message.lower():
            record.msg = _CREDENTIAL_IN_LOG.sub(lambda m: next(g for g in m.groups() if g) + "***", message)
            record.args = None
        return True


def _install_log_redaction() -> None:
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactCredentials) for f in logger.filters):
            logger.addFilter(_RedactCredentials())


class AWSProvider(Provider):
    """Rekognition DetectLabels for one image per call (Rekognition has no multi-image request).

    Options: region (else AWS_REGION / AWS_DEFAULT_REGION / the profile's region), max_labels and
    min_confidence (None = the service defaults, 1000 and 55), endpoint_url (e.g. an emulator; `endpoint` is
    an alias, the name `make_provider` passes),
    profile (an AWS_PROFILE name) or a ready boto3 `session`, connect/read timeouts, max_workers threads.
    Raises ConfigError when no region or no credentials are found, or boto3 is missing.
    """

    name = "aws"
    max_batch = 1
    # Raw bytes 1..5,242,880; JPEG/PNG; sides 80..10,000 px for DetectLabels (see shared/reference/providers.md).
    limits = ImageLimits(max_bytes=5_242_880, min_side_px=80, max_side_px=10_000, formats=("JPEG", "PNG"))
    # DetectLabels TPS quotas differ by region and account (Service Quotas console); 5/s is a safe default.
    default_rate_per_s = 5.0
    pricing = Pricing(
        1.00,
        "2026-11",
        "AWS Rekognition Image pricing, DetectLabels (Group 2 APIs), first 1M images/month, us-east-1 (USD per 1,000)",
    )
    credential_hint = "configure AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and AWS_REGION"

    def __init__(
        self,
        *,
        region: str | None = None,
        max_labels: int | None = None,
        min_confidence: float | None = None,
        endpoint_url: str | None = None,
        endpoint: str | None = None,
        profile: str | None = None,
        session: Any = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        max_workers: int = 16,
    ) -> None:
        try:
            import boto3
            import botocore.exceptions
            from botocore.config import Config
        except ImportError as exc:
            raise ConfigError("aws: needs `pip install robust-api[aws]`") from exc
        _install_log_redaction()
        if max_labels is not None and (not isinstance(max_labels, int) or max_labels < 0):
            raise ConfigError(f"aws: max_labels must be a non-negative integer, not {max_labels!r}")
        if min_confidence is not None and not 0 <= float(min_confidence) <= 100:
            raise ConfigError(f"aws: min_confidence must be in [0, 100], not {min_confidence!r}")
        try:
            session = session or boto3.session.Session(profile_name=profile)
            # botocore reads AWS_DEFAULT_REGION (and the profile) only; AWS_REGION is what other AWS SDKs and
            # Lambda set, so accept it too.
            region = region or session.region_name or os.environ.get("AWS_REGION")
            if not region:
                raise ConfigError("aws: no region: set AWS_REGION (or AWS_DEFAULT_REGION) or pass region=")
            self._credentials = session.get_credentials()
            if self._credentials is None:
                raise ConfigError(
                    "aws: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                    "(any source of boto3's default chain works)"
                )
            config = Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                max_pool_connections=max_workers,
            )
            # boto3 clients are thread-safe (sessions are not): one client, shared by the worker threads.
            self._client = session.client(
                "rekognition", region_name=region, endpoint_url=endpoint_url or endpoint, config=config
            )
        except botocore.exceptions.BotoCoreError as exc:  # ProfileNotFound, PartialCredentialsError, ...
            raise ConfigError(f"aws: {type(exc).__name__}: {self._redact(str(exc))}; {AUTH_HINT}") from None
        self.region = region
        self.max_labels = max_labels
        self.min_confidence = None if min_confidence is None else float(min_confidence)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="robust-api-aws")

    @classmethod
    def for_emulator(cls, url: str, *, access_key_id: str | None = None, **options: Any) -> "AWSProvider":
        """An adapter pointed at a local AwsEmulator, signing with dummy keys (access key id EMULATOR_KEY)
        in us-east-1; the environment's AWS credentials are not used."""
        import boto3

        session = boto3.session.Session(
            aws_access_key_id=access_key_id or EMULATOR_KEY,
            aws_secret_access_key=EMULATOR_SECRET,
            region_name="us-east-1",
        )
        options.setdefault("region", "us-east-1")
        return cls(endpoint_url=url, session=session, **options)

    def settings(self) -> dict[str, Any]:
        return {"operation": "DetectLabels", "max_labels": self.max_labels, "min_confidence": self.min_confidence}

    async def classify(self, images: Sequence[bytes]) -> list[ProviderResponse | ProviderError]:
        """Label each image (one HTTP request each); raises Retryable/PermanentProviderError for a failed call."""
        images = list(images)
        if len(images) > self.max_batch:
            raise ConfigError(f"aws: at most {self.max_batch} image per call, got {len(images)}")
        loop = asyncio.get_running_loop()
        # A private pool: the default executor may be busy with work these blocking calls wait on.
        return [await loop.run_in_executor(self._executor, self._call, data) for data in images]

    def _call(self, data: bytes) -> ProviderResponse:
        from botocore import exceptions as bce

        request: dict[str, Any] = {"Image": {"Bytes": data}}
        if self.max_labels is not None:
            request["MaxLabels"] = self.max_labels
        if self.min_confidence is not None:
            request["MinConfidence"] = self.min_confidence
        try:
            result = self._client.detect_labels(**request)
        except bce.ClientError as exc:
            raise self._client_error(exc) from None
        except (bce.ConnectTimeoutError, bce.ReadTimeoutError) as exc:
            raise RetryableProviderError(self.name, "timeout", self._redact(f"no response in time: {exc}")) from None
        except (bce.ConnectionError, bce.HTTPClientError) as exc:
            raise RetryableProviderError(self.name, "connection", self._redact(f"connection failed: {exc}")) from None
        except bce.ResponseParserError as exc:
            raise RetryableProviderError(self.name, "malformed", self._redact(f"unreadable body: {exc}")[:300]) from None
        except bce.ParamValidationError as exc:
            raise PermanentProviderError(self.name, "bad_request", self._redact(str(exc))) from None
        except (bce.NoCredentialsError, bce.PartialCredentialsError, bce.TokenRetrievalError) as exc:
            raise PermanentProviderError(self.name, "auth", f"{type(exc).__name__}; {AUTH_HINT}") from None
        metadata = result.pop("ResponseMetadata", {}) or {}
        request_id = _request_id(metadata)
        if not isinstance(result.get("Labels"), list):
            # botocore turns a 200 body that is not JSON into {} or {"message": body} rather than raising.
            raise RetryableProviderError(
                self.name, "malformed", "response has no Labels list", request_id=request_id, status=200
            )
        version = result.get("LabelModelVersion")
        return ProviderResponse(response=result, model_version=None if version is None else str(version),
                                request_id=request_id)

    def _client_error(self, exc: Any) -> ProviderError:
        """Map a modelled or unmodelled AWS error (`__type` code + HTTP status) to our taxonomy."""
        error = exc.response.get("Error", {}) or {}
        metadata = exc.response.get("ResponseMetadata", {}) or {}
        code = str(error.get("Code", "") or "")
        status = metadata.get("HTTPStatusCode")
        detail = self._redact(f"HTTP {status} {code}: {error.get('Message', '') or ''}".rstrip(": "))
        kw: dict[str, Any] = {"request_id": _request_id(metadata), "status": status}
        if code in _THROTTLED or status == 429:
            return RetryableProviderError(self.name, "throttled", detail, retry_after_s=_retry_after_s(metadata), **kw)
        if code in _AUTH or status in (401, 403):
            return PermanentProviderError(self.name, "auth", f"{detail}; {AUTH_HINT}", **kw)
        if code in _INVALID_IMAGE:
            return PermanentProviderError(self.name, "invalid_image", detail, **kw)
        if code in _QUOTA:
            return PermanentProviderError(self.name, "quota", detail, **kw)
        if code in _SERVER or (status is not None and status >= 500):
            kind = "timeout" if status == 504 else "server"
            return RetryableProviderError(self.name, kind, detail, retry_after_s=_retry_after_s(metadata), **kw)
        return PermanentProviderError(self.name, "bad_request", detail, **kw)

    def _redact(self, text: str) -> str:
        """Remove the access key id, secret and session token from a message (AWS errors may echo the key id)."""
        credentials = getattr(self, "_credentials", None)
        if credentials is None:
            return text
        try:
            frozen = credentials.get_frozen_credentials()
        except Exception:  # refreshing can fail; then nothing known to redact
            return text
        for secret in (frozen.access_key, frozen.secret_key, frozen.token):
            if secret:
                text = text.replace(secret, "***")
        return text

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)
        self._client.close()


def _request_id(metadata: dict) -> str | None:
    headers = {k.lower(): v for k, v in (metadata.get("HTTPHeaders") or {}).items()}
    return metadata.get("RequestId") or headers.get("x-amzn-requestid") or headers.get("x-amz-request-id")


def _retry_after_s(metadata: dict) -> float | None:
    """AWS does not send Retry-After in practice; honour it if a proxy or future service version does."""
    return retry_after_from_headers(metadata.get("HTTPHeaders"))


AWS_LIMITS = AWSProvider.limits  # kept importable under its old name (tests use it)
