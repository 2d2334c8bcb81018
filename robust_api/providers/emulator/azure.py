"""A local server that speaks Azure AI Vision's wire format: Image Analysis 4.0 and Computer Vision v3.2.

Routes, exactly as the official SDKs send them (see /work/shared/reference/providers.md, section 1):
- `POST /computervision/imageanalysis:analyze?api-version=2023-10-01&features=tags` (azure-ai-vision-imageanalysis)
- `POST /vision/v3.2/tag?language=en&model-version=latest` and
  `POST /vision/v3.2/analyze?visualFeatures=Tags&...` (azure-cognitiveservices-vision-computervision; the body
  arrives with `Transfer-Encoding: chunked`, which aiohttp decodes).
The body is the raw image; the key travels in `Ocp-Apim-Subscription-Key`. Every response carries an
`apim-request-id` header (v3.2 bodies repeat it as `requestId`). Errors use Azure's
`{"error": {"code", "message", "innererror"?}}` body. Only the tags feature is emulated; other v3.2 analyze
features and 4.0 features are ignored (4.0 answers 400 if `tags` is not requested, like a real unsupported feature);
`model-version` and `language` are accepted and ignored (`modelVersion` always reports the emulator's).
"""
from __future__ import annotations

import io
import json
import math
import uuid

from aiohttp import web
from PIL import Image

from robust_api.providers.emulator.base import Emulator, EmulatorKnobs, Labeller

V4_API_VERSIONS = ("2023-10-01", "2024-02-01")
V4_MODEL_VERSION = "2023-10-01"
V32_MODEL_VERSION = "2021-05-01"

V32_MAX_BYTES = 4 * 1024 * 1024
V4_MAX_BYTES = 20 * 1024 * 1024
V4_MIN_SIDE_PX = 50  # 4.0 rejects sides "smaller than 50"
V32_MIN_SIDE_PX = 51  # v3.2 docs: "larger than 50x50" (whether exactly 50 passes is unverified)
MAX_SIDE_PX = 16_000
V32_FORMATS = {"JPEG": "Jpeg", "PNG": "Png", "GIF": "Gif", "BMP": "Bmp"}
V4_FORMATS = {**V32_FORMATS, "WEBP": "Webp", "ICO": "Ico", "TIFF": "Tiff", "MPO": "Mpo"}

_AUTH_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an "
    "active subscription and use a correct regional API endpoint for your resource."
)
_QUOTA_MESSAGE = (
    "Out of call volume quota for ComputerVision F0 pricing tier. Please retry after 1 day. "
    "To increase your call volume switch to a paid tier."
)


def azure_error(status: int, code: str, message: str, inner_code: str | None = None) -> web.Response:
    """Azure's error body; `inner_code` fills `innererror` the way the image-validation errors do."""
    error: dict = {"code": code, "message": message}
    if inner_code is not None:
        error["innererror"] = {"code": inner_code, "message": message}
    return web.json_response({"error": error}, status=status)


class AzureEmulator(Emulator):
    """Azure AI Vision (4.0 `imageanalysis:analyze` and v3.2 `tag` / `analyze`), tags only.

    Tag names are lower-cased like Azure's; confidences are the labeller's scores (0-1), best first.
    """

    name = "azure"

    def __init__(self, labeller: Labeller | None = None, knobs: EmulatorKnobs | None = None) -> None:
        super().__init__(labeller, knobs)
        self.chunked_uploads = 0  # requests whose body came with Transfer-Encoding: chunked (the v3.2 SDK's way)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/computervision/imageanalysis:analyze", self._analyze_v4),
            web.post("/vision/v3.2/tag", self._tag_v32),
            web.post("/vision/v3.2/analyze", self._analyze_v32),
        ]

    def app(self) -> web.Application:
        app = super().app()
        app.on_response_prepare.append(self._stamp_request_id)
        return app

    @staticmethod
    async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["apim-request-id"] = _request_id(request)

    def credential_ok(self, request: web.Request) -> bool:
        return request.headers.get("Ocp-Apim-Subscription-Key") == self.knobs.api_key

    def error_response(self, kind: str, message: str) -> web.StreamResponse:
        if kind == "auth":
            return azure_error(401, "401", _AUTH_MESSAGE)
        if kind == "throttled":
            wait_s = max(1, math.ceil(self.knobs.retry_after_s or 1))
            body = azure_error(429, "429", f"Rate limit is exceeded. Try again in {wait_s} seconds.")
            return self.with_retry_after(body)
        if kind == "server":
            return self.with_retry_after(
                azure_error(503, "ServiceUnavailable", "The service is temporarily unavailable. Please retry.")
            )
        if kind == "quota":
            return azure_error(403, "403", _QUOTA_MESSAGE)
        if kind == "invalid_image":
            return azure_error(400, "InvalidRequest", "Image format is not valid.", "InvalidImageFormat")
        return azure_error(400, "InvalidRequest", message, "InvalidArgument")

    # -- handlers ----------------------------------------------------------------------------------
    async def _read(self, request: web.Request) -> bytes:
        # The body is read before the gate so an early error never races a client still uploading.
        if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            self.chunked_uploads += 1
        return await request.read()

    async def _analyze_v4(self, request: web.Request) -> web.StreamResponse:
        data = await self._read(request)
        resp = await self.gate(request)
        if resp is not None:
            return resp
        if request.query.get("api-version") not in V4_API_VERSIONS:
            return azure_error(
                404, "404", "Resource not found (unsupported api-version for imageanalysis:analyze)."
            )
        features = {f.strip().lower() for f in request.query.get("features", "").split(",") if f.strip()}
        if "tags" not in features:
            return azure_error(400, "InvalidRequest", "The emulator supports only the 'tags' feature.",
                               "NotSupportedVisualFeature")
        if request.content_type != "application/octet-stream":
            return azure_error(400, "InvalidRequest", "The emulator accepts only binary image data.",
                               "UnsupportedMediaType")
        if not data or len(data) > V4_MAX_BYTES:
            return azure_error(
                400, "InvalidRequest",
                f"The image size is not allowed to be zero or larger than {V4_MAX_BYTES} bytes.",
            )
        problem = _check_image(data, V4_FORMATS, V4_MIN_SIDE_PX)
        if problem is not None:
            return problem
        try:
            labels = await self.label(data)
        except ValueError:
            return self.error_response("invalid_image", "not an image")
        width, height = _size(data)
        body = {
            "modelVersion": V4_MODEL_VERSION,
            "metadata": {"width": width, "height": height},
            "tagsResult": {"values": _tags(labels)},
        }
        return web.json_response(body)

    async def _tag_v32(self, request: web.Request) -> web.StreamResponse:
        return await self._v32(request, wants_tags=True)

    async def _analyze_v32(self, request: web.Request) -> web.StreamResponse:
        features = {f.strip().lower() for f in request.query.get("visualFeatures", "").split(",")}
        return await self._v32(request, wants_tags="tags" in features)

    async def _v32(self, request: web.Request, wants_tags: bool) -> web.StreamResponse:
        data = await self._read(request)
        resp = await self.gate(request)
        if resp is not None:
            return resp
        if request.content_type != "application/octet-stream":
            return azure_error(400, "InvalidRequest", "The emulator accepts only binary image data.",
                               "UnsupportedMediaType")
        if not data or len(data) > V32_MAX_BYTES:
            return azure_error(400, "InvalidRequest", "The image size must be between 1 byte and 4 MB.",
                               "InvalidImageSize")
        problem = _check_image(data, V32_FORMATS, V32_MIN_SIDE_PX)
        if problem is not None:
            return problem
        try:
            labels = await self.label(data)
        except ValueError:
            return self.error_response("invalid_image", "not an image")
        width, height = _size(data)
        body: dict = {}
        if wants_tags:
            body["tags"] = _tags(labels)
        body["requestId"] = _request_id(request)
        body["metadata"] = {"height": height, "width": width, "format": _format(data)}
        body["modelVersion"] = V32_MODEL_VERSION
        return web.Response(body=json.dumps(body).encode(), content_type="application/json", charset="utf-8")


# aiohttp >= 3.12 wants typed request keys; older versions take a plain string.
_REQUEST_ID = web.RequestKey("azure_request_id", str) if hasattr(web, "RequestKey") else "azure_request_id"


def _request_id(request: web.Request) -> str:
    if _REQUEST_ID not in request:
        request[_REQUEST_ID] = str(uuid.uuid4())  # type: ignore[index]
    return request[_REQUEST_ID]  # type: ignore[index]


def _tags(labels: list[tuple[str, float]]) -> list[dict]:
    tags = [{"name": name.lower(), "confidence": float(score)} for name, score in labels]
    return sorted(tags, key=lambda t: -t["confidence"])


def _header(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """Format and size from the image header alone (cheap); (None, None) if PIL cannot identify it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format, im.size
    except Exception:  # PIL raises many types for bad bytes
        return None, None


def _size(data: bytes) -> tuple[int, int]:
    return _header(data)[1] or (0, 0)


def _format(data: bytes) -> str:
    fmt = _header(data)[0]
    return V4_FORMATS.get(fmt or "", fmt or "")


def _check_image(data: bytes, formats: dict[str, str], min_side_px: int) -> web.Response | None:
    """Azure's format and dimension validation; None when the image is acceptable."""
    fmt, size = _header(data)
    if fmt is None or fmt not in formats or size is None:
        return azure_error(400, "InvalidRequest", "Image format is not valid.", "InvalidImageFormat")
    if min(size) < min_side_px or max(size) > MAX_SIDE_PX:
        return azure_error(
            400, "InvalidRequest",
            f"Image size is too small or too big. The image dimensions must be at least {min_side_px} "
            f"and smaller than {MAX_SIDE_PX} pixels.",
            "InvalidImageSize",
        )
    return None
