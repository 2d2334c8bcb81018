"""A local Google Cloud Vision `images:annotate` server that speaks the REST wire format the real SDK sends.

What `google-cloud-vision` (transport="rest") sends, and this emulator accepts: `POST /v1/images:annotate`
with `?$alt=json;enum-encoding=int`, integer feature enums (`"type": 4`) or their names
(`"LABEL_DETECTION"`), camelCase `maxResults`, base64 `image.content`, at most 16 requests per call.
Credentials: an API key in `x-goog-api-key` or `?key=`, or a bearer token equal to `knobs.api_key`.
Answers: `{"responses":[{"labelAnnotations":[{"mid","description","score","topicality"}]}]}`; an image
that does not decode gets a per-image `{"error":{"code":3,"message":"Bad image data."}}` inside the 200.
Whole-call errors use Google's `{"error":{"code","message","status","details"}}` envelope.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from aiohttp import web

from robust_api.providers.emulator.base import Emulator, EmulatorKnobs, Labeller

MAX_REQUESTS_PER_CALL = 16
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # "Request payload size exceeds the limit: 10485760 bytes."
LABEL_DETECTION = 4  # google.cloud.vision_v1.Feature.Type.LABEL_DETECTION
DEFAULT_MAX_RESULTS = 10
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_SERVICE = "vision.googleapis.com"


def _quota_message(limit: str) -> str:
    return (
        f"Quota exceeded for quota metric 'Requests' and limit '{limit}' of service "
        f"'{_SERVICE}' for consumer 'project_number:0'."
    )


def _error_body(code: int, status: str, message: str, details: list[dict] | None = None) -> dict:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def google_mid(name: str) -> str:
    """A stable fake Knowledge Graph id for a label (real mids look like '/m/01yrx')."""
    return "/m/0" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:6]


def google_description(name: str) -> str:
    """Google capitalises the first letter only: 'tabby cat' -> 'Tabby cat'."""
    name = name.strip()
    return name[:1].upper() + name[1:]


class GoogleEmulator(Emulator):
    """Google Cloud Vision label detection over REST.

    require_key: when True (default) a request with no credential at all (the SDK's AnonymousCredentials)
    is refused with 401 UNAUTHENTICATED; when False it is accepted, but a wrong key is still refused.
    A wrong API key gets what Google sends for one: 400 INVALID_ARGUMENT with ErrorInfo reason
    API_KEY_INVALID. Daily quota exhaustion is a 429 whose quota limit is 'Requests per day'.
    """

    name = "google"

    def __init__(
        self, labeller: Labeller | None = None, knobs: EmulatorKnobs | None = None, *, require_key: bool = True
    ) -> None:
        super().__init__(labeller, knobs)
        self.require_key = require_key
        # Why the last credential check failed. Set by credential_ok and read by error_response in the same
        # synchronous stretch of `gate` (no await in between), so concurrent requests cannot interleave.
        self._auth_problem = "missing"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/images:annotate", self.annotate),
            web.post("/v1/projects/{project}/images:annotate", self.annotate),
            web.post("/v1/projects/{project}/locations/{location}/images:annotate", self.annotate),
        ]

    # -- credentials -------------------------------------------------------------------------------
    def credential_ok(self, request: web.Request) -> bool:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        authorization = request.headers.get("Authorization", "")
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
        if key is not None:
            self._auth_problem = "invalid_key"
            return key == self.knobs.api_key
        if token is not None:
            self._auth_problem = "invalid_token"
            return token == self.knobs.api_key
        self._auth_problem = "missing"
        return not self.require_key

    # -- errors ------------------------------------------------------------------------------------
    def error_response(self, kind: str, message: str) -> web.StreamResponse:
        if kind == "auth":
            return self._auth_error()
        if kind == "throttled":
            details = [self._quota_info("DefaultRequestsPerMinutePerProject", "RATE_LIMIT_EXCEEDED")]
            body = _error_body(429, "RESOURCE_EXHAUSTED", _quota_message("Requests per minute"), details)
            return self.with_retry_after(web.json_response(body, status=429))
        if kind == "quota":
            # No Retry-After: waiting seconds does not help until the daily window resets.
            details = [self._quota_info("DefaultRequestsPerDayPerProject", "RATE_LIMIT_EXCEEDED")]
            body = _error_body(429, "RESOURCE_EXHAUSTED", _quota_message("Requests per day"), details)
            return web.json_response(body, status=429)
        if kind == "server":
            body = _error_body(503, "UNAVAILABLE", "The service is currently unavailable.")
            return self.with_retry_after(web.json_response(body, status=503))
        if kind == "invalid_image":
            return web.json_response(_error_body(400, "INVALID_ARGUMENT", "Bad image data."), status=400)
        return web.json_response(_error_body(400, "INVALID_ARGUMENT", message), status=400)

    def _auth_error(self) -> web.StreamResponse:
        if self._auth_problem == "invalid_key":
            info = {"@type": _ERROR_INFO, "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                    "metadata": {"service": _SERVICE}}
            body = _error_body(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [info])
            return web.json_response(body, status=400)
        if self._auth_problem == "invalid_token":
            body = _error_body(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            return web.json_response(body, status=401)
        info = {"@type": _ERROR_INFO, "reason": "CREDENTIALS_MISSING", "domain": "googleapis.com",
                "metadata": {"service": _SERVICE}}
        body = _error_body(401, "UNAUTHENTICATED", "Request is missing required authentication credential.", [info])
        return web.json_response(body, status=401)

    @staticmethod
    def _quota_info(limit: str, reason: str) -> dict:
        return {
            "@type": _ERROR_INFO,
            "reason": reason,
            "domain": "googleapis.com",
            "metadata": {
                "service": _SERVICE,
                "quota_metric": f"{_SERVICE}/default_requests",
                "quota_limit": limit,
                "consumer": "projects/0",
            },
        }

    # -- the route ---------------------------------------------------------------------------------
    async def annotate(self, request: web.Request) -> web.StreamResponse:
        resp = await self.gate(request)
        if resp is not None:
            return resp
        raw = await request.read()
        if len(raw) > MAX_REQUEST_BYTES:
            return self.error_response(
                "bad_request", f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
            )
        try:
            body = json.loads(raw)
            requests = body["requests"]
            if not isinstance(requests, list):
                raise TypeError("requests must be a list")
        except (ValueError, KeyError, TypeError):
            return self.error_response("bad_request", "Invalid JSON payload received.")
        if not requests:
            return self.error_response("bad_request", "No requests specified.")
        if len(requests) > MAX_REQUESTS_PER_CALL:
            return self.error_response(
                "bad_request", f"Too many images per request: {len(requests)} > {MAX_REQUESTS_PER_CALL}."
            )
        responses = []
        for index, item in enumerate(requests):
            content = ((item or {}).get("image") or {}).get("content")
            if not isinstance(content, str):
                return self.error_response("bad_request", f"requests[{index}].image: no content given.")
            try:
                # Proto JSON bytes: standard base64, but parsers also take the URL-safe alphabet.
                data = base64.b64decode(content.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                return self.error_response(
                    "bad_request",
                    f"Invalid value at 'requests[{index}].image.content' (TYPE_BYTES), Base64 decoding failed.",
                )
            responses.append(await self._annotate_one(data, item.get("features") or []))
        return web.json_response({"responses": responses})

    async def _annotate_one(self, data: bytes, features: list[dict]) -> dict:
        max_results = None
        for feature in features:
            kind = feature.get("type")
            if kind in (LABEL_DETECTION, "LABEL_DETECTION"):
                max_results = int(feature.get("maxResults") or feature.get("max_results") or DEFAULT_MAX_RESULTS)
        if max_results is None:
            return {}  # no feature this emulator implements was asked for: Google answers an empty annotation
        try:
            labels = await self.label(data)
        except ValueError:
            return {"error": {"code": 3, "message": "Bad image data."}}
        annotations = [
            {
                "mid": google_mid(name),
                "description": google_description(name),
                "score": float(score),
                "topicality": float(score),
            }
            for name, score in labels[:max_results]
        ]
        # An image with no labels is an empty object, as Google sends it (no empty list).
        return {"labelAnnotations": annotations} if annotations else {}
