"""A local server that speaks AWS Rekognition DetectLabels exactly as boto3 sends it (JSON 1.1).

Wire (see /work/shared/reference/providers.md, section 3): `POST /` with `X-Amz-Target:
RekognitionService.DetectLabels`, `Content-Type: application/x-amz-json-1.1`, a SigV4 `Authorization` header
and body `{"Image": {"Bytes": "<base64>"}, "MaxLabels"?, "MinConfidence"?}`. Answers
`{"Labels": [{"Name", "Confidence" (0-100), "Instances", "Parents", "Aliases", "Categories"}], "LabelModelVersion"}`
with an `x-amzn-RequestId` header. Like real Rekognition, every ancestor of a detected label is returned as a
label of its own with *exactly* the same Confidence, and `Parents` lists all ancestors, nearest first.
Errors are HTTP 400 (500 for InternalServerError) with `{"__type": "...Exception", "Message": ...}`.

Emulator limits: the SigV4 signature is not verified, only the access key id in its `Credential=` scope is
compared with `knobs.api_key`; S3 images, `Settings` filters, `IMAGE_PROPERTIES` and bounding boxes are not
emulated. A request over the daily quota gets LimitExceededException (real DetectLabels has no daily quota;
this is the closest modelled "service limit exceeded" error). Real AWS sends no Retry-After, so neither does this.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
import uuid
from typing import Callable, Sequence

from aiohttp import web
from PIL import Image

from robust_api.providers.emulator.base import Emulator, EmulatorKnobs, Labeller

TARGET = "RekognitionService.DetectLabels"
LABEL_MODEL_VERSION = "3.0"
MAX_IMAGE_BYTES = 5_242_880
MIN_SIDE_PX = 80
MAX_SIDE_PX = 10_000
DEFAULT_MAX_LABELS = 1000
DEFAULT_MIN_CONFIDENCE = 55.0
CONTENT_TYPE = "application/x-amz-json-1.1"

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")

# Ancestors of a labeller name, most specific first (labeller.ancestors_of by default).
Ancestors = Callable[[str], Sequence[str]]


def aws_error(status: int, error_type: str, message: str) -> web.Response:
    """A JSON 1.1 error as Rekognition sends it (botocore maps `__type` to the modelled exception)."""
    body = json.dumps({"__type": error_type, "Message": message}).encode()
    return web.Response(status=status, body=body, content_type=CONTENT_TYPE)


def aws_name(name: str) -> str:
    """Rekognition's label casing: every word capitalised ("sports car" -> "Sports Car")."""
    return " ".join(word[:1].upper() + word[1:] for word in name.split())


def rekognition_labels(
    labels: Sequence[tuple[str, float]], ancestors: Ancestors, max_labels: int, min_confidence: float
) -> list[dict]:
    """Labeller output -> Rekognition `Labels`: ancestors added with their child's exact confidence (the
    highest child's when several share one), all ancestors in `Parents`, best first, ancestors ahead of their
    descendants among equal confidences (as in real responses), filtered by MinConfidence, cut at MaxLabels."""
    confidence: dict[str, float] = {}
    parents: dict[str, list[str]] = {}
    order: list[str] = []
    for name, score in labels:
        chain = [aws_name(a) for a in ancestors(name)]
        value = float(score) * 100.0
        # root first, then down to the label itself
        for depth in range(len(chain), -1, -1):
            label = chain[depth - 1] if depth > 0 else aws_name(name)
            if label not in confidence:
                order.append(label)
                confidence[label] = value
                parents[label] = chain[depth:]
            else:
                confidence[label] = max(confidence[label], value)
    ranked = sorted(order, key=lambda label: -confidence[label])  # stable: keeps root-first among ties
    kept = [label for label in ranked if confidence[label] >= min_confidence][:max_labels]
    return [
        {
            "Name": label,
            "Confidence": confidence[label],
            "Instances": [],
            "Parents": [{"Name": p} for p in parents[label]],
            "Aliases": [],
            "Categories": [],
        }
        for label in kept
    ]


class AwsEmulator(Emulator):
    """Rekognition DetectLabels backed by a labeller; `ancestors` gives each name's ancestor chain."""

    name = "aws"

    def __init__(
        self,
        labeller: Labeller | None = None,
        knobs: EmulatorKnobs | None = None,
        *,
        ancestors: Ancestors | None = None,
    ) -> None:
        super().__init__(labeller, knobs)
        self._ancestors = ancestors

    @property
    def ancestors(self) -> Ancestors:
        if self._ancestors is None:
            from robust_api.providers.emulator.labeller import ancestors_of

            self._ancestors = ancestors_of
        return self._ancestors

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/", self._handle)]

    def app(self) -> web.Application:
        app = super().app()
        app.on_response_prepare.append(self._stamp_request_id)
        return app

    @staticmethod
    async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-amzn-RequestId"] = str(uuid.uuid4())

    def credential_ok(self, request: web.Request) -> bool:
        match = _CREDENTIAL.search(request.headers.get("Authorization", ""))
        return match is not None and match.group(1) == self.knobs.api_key

    def error_response(self, kind: str, message: str) -> web.StreamResponse:
        if kind == "auth":
            return aws_error(400, "UnrecognizedClientException", "The security token included in the request is invalid.")
        if kind == "throttled":
            return aws_error(
                400, "ThrottlingException",
                "Amazon Rekognition is temporarily unable to process the request. Try your call again.",
            )
        if kind == "server":
            return aws_error(500, "InternalServerError", "Amazon Rekognition experienced a service issue. Try your call again.")
        if kind == "quota":
            return aws_error(400, "LimitExceededException", "An Amazon Rekognition service limit was exceeded.")
        if kind == "invalid_image":
            return aws_error(400, "InvalidImageFormatException", "Request has invalid image format")
        return aws_error(400, "InvalidParameterException", message)

    def malformed_response(self) -> web.StreamResponse:
        return web.Response(status=200, body=b'{"Labels": [{"Name": "Tru', content_type=CONTENT_TYPE)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # The body is read before the gate so an early error never races a client still uploading.
        body = await request.read()
        resp = await self.gate(request)
        if resp is not None:
            return resp
        target = request.headers.get("X-Amz-Target", "")
        if target != TARGET:
            return aws_error(400, "UnknownOperationException", f"Unknown operation {target or '(none)'}")
        try:
            payload = json.loads(body)
        except ValueError:
            return aws_error(400, "SerializationException", "Start of structure or map found where not expected.")
        if not isinstance(payload, dict) or not isinstance(payload.get("Image"), dict):
            return self.error_response("bad_request", "Image is required")
        image = payload["Image"]
        if "S3Object" in image:
            return aws_error(400, "InvalidS3ObjectException", "The emulator has no S3: send the image as Bytes.")
        try:
            data = base64.b64decode(image.get("Bytes", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            return self.error_response("bad_request", "Image.Bytes is not valid base64")
        max_labels = payload.get("MaxLabels", DEFAULT_MAX_LABELS)
        min_confidence = payload.get("MinConfidence", DEFAULT_MIN_CONFIDENCE)
        if not isinstance(max_labels, int) or max_labels < 0:
            return self.error_response("bad_request", "MaxLabels must be a non-negative integer")
        if not isinstance(min_confidence, (int, float)) or not 0 <= min_confidence <= 100:
            return self.error_response("bad_request", "MinConfidence must be between 0 and 100")
        if not data:
            return self.error_response("bad_request", "Image.Bytes must not be empty")
        if len(data) > MAX_IMAGE_BYTES:
            return aws_error(400, "ImageTooLargeException", "Image size is too large.")
        problem = _check_image(data)
        if problem is not None:
            return problem
        try:
            labels = await self.label(data)
        except ValueError:
            return self.error_response("invalid_image", "not an image")
        features = payload.get("Features") or ["GENERAL_LABELS"]
        out_labels = (
            rekognition_labels(labels, self.ancestors, min(max_labels, DEFAULT_MAX_LABELS), float(min_confidence))
            if "GENERAL_LABELS" in features
            else []
        )
        answer = {"Labels": out_labels, "LabelModelVersion": LABEL_MODEL_VERSION}
        return web.Response(body=json.dumps(answer).encode(), content_type=CONTENT_TYPE)


def _check_image(data: bytes) -> web.Response | None:
    """Rekognition's format and dimension checks; None when the image is acceptable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, size = im.format, im.size
    except Exception:  # PIL raises many types for bad bytes
        return aws_error(400, "InvalidImageFormatException", "Request has invalid image format")
    if fmt not in ("JPEG", "PNG"):
        return aws_error(400, "InvalidImageFormatException", "Request has invalid image format")
    if min(size) < MIN_SIDE_PX or max(size) > MAX_SIDE_PX:
        # Which exception real Rekognition raises for out-of-range dimensions is unverified.
        return aws_error(
            400, "InvalidParameterException",
            f"Image dimensions must be between {MIN_SIDE_PX} and {MAX_SIDE_PX} pixels.",
        )
    return None
