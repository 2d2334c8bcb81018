"""A local Clarifai PostModelOutputs server speaking the JSON wire format of clarifai-grpc's JSON channel.

Routes (from the proto's http annotations): `POST /v2/users/{user_id}/apps/{app_id}/models/{model_id}
[/versions/{version_id}]/outputs` and `POST /v2/models/{model_id}[/versions/{version_id}]/outputs`.
Auth is `Authorization: Key <PAT>`. The body is `{"user_app_id"?:{...},"inputs":[{"data":{"image":
{"base64":...}}}]}` with at most 128 inputs. Every answer, success or failure, is a JSON body whose
`status.code` says what happened (the channel ignores the HTTP status): 10000 SUCCESS, 10010 MIXED_STATUS
when some inputs failed (each output carries its own status), 10020 FAILURE when all did.
"""
from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import uuid
from typing import Any

from aiohttp import web

from robust_api.providers.emulator.base import Emulator, EmulatorKnobs, Labeller

MAX_INPUTS = 128
GENERAL_MODEL_ID = "general-image-recognition"
GENERAL_MODEL_LEGACY_ID = "aaa03c23b3724a16a56b629203edc62c"
GENERAL_MODEL_VERSION = "aa7f35c01e0642fda5cf400f543e7c40"

# Values of clarifai_grpc.grpc.api.status.status_code_pb2 (spelled out so the emulator needs no SDK).
SUCCESS = 10000
MIXED_STATUS = 10010
FAILURE = 10020
CONN_EXCEED_MONTHLY_LIMIT = 11004
CONN_THROTTLED = 11005
CONN_KEY_INVALID = 11008
CONN_KEY_NOT_FOUND = 11009
CONN_INVALID_REQUEST = 11102
MODEL_DOES_NOT_EXIST = 21200
MODEL_BUSY_PLEASE_RETRY = 21354
INPUT_DOWNLOAD_FAILED = 30002
MODEL_TRAINED = 21100

# (HTTP status, status.code, description). Which HTTP statuses Clarifai pairs with these codes is not
# documented; these are plausible and irrelevant to the SDK, which reads only the body.
_ERRORS: dict[str, tuple[int, int, str]] = {
    "auth": (401, CONN_KEY_INVALID, "API key or PAT is invalid"),
    "throttled": (429, CONN_THROTTLED, "Making too many requests"),
    "quota": (402, CONN_EXCEED_MONTHLY_LIMIT, "Monthly usage limit exceeded"),
    "server": (503, MODEL_BUSY_PLEASE_RETRY, "Model is busy, please retry"),
    "invalid_image": (400, FAILURE, "Failure"),
    "bad_request": (400, CONN_INVALID_REQUEST, "Invalid request"),
}


def clarifai_concept_id(name: str) -> str:
    """A stable fake concept id (real ones look like 'ai_mFqxrph2')."""
    return "ai_" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ClarifaiEmulator(Emulator):
    """Clarifai's public general image recognition model behind the v2 JSON API.

    model_ids: models that exist (default the general model and its legacy id); versions: versions of
    them that exist (default the commonly pinned one, which is also what an unpinned call reports).
    Concept names are lowercase, as Clarifai's general model sends them.
    """

    name = "clarifai"

    def __init__(
        self,
        labeller: Labeller | None = None,
        knobs: EmulatorKnobs | None = None,
        *,
        model_ids: tuple[str, ...] = (GENERAL_MODEL_ID, GENERAL_MODEL_LEGACY_ID),
        versions: tuple[str, ...] = (GENERAL_MODEL_VERSION,),
    ) -> None:
        super().__init__(labeller, knobs)
        self.model_ids = model_ids
        self.versions = versions

    def routes(self) -> list[web.RouteDef]:
        users = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}"
        return [
            web.post(users + "/outputs", self.outputs),
            web.post(users + "/versions/{version_id}/outputs", self.outputs),
            web.post("/v2/models/{model_id}/outputs", self.outputs),
            web.post("/v2/models/{model_id}/versions/{version_id}/outputs", self.outputs),
        ]

    def credential_ok(self, request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Key" and key.strip() == self.knobs.api_key

    def error_response(self, kind: str, message: str, *, details: str | None = None) -> web.StreamResponse:
        http_status, code, description = _ERRORS.get(kind, _ERRORS["bad_request"])
        body = {"status": self._status(code, description, details or message), "outputs": []}
        response = web.json_response(body, status=http_status)
        if kind in ("throttled", "server"):
            self.with_retry_after(response)
        return response

    @staticmethod
    def _status(code: int, description: str, details: str | None = None, *, req_id: bool = True) -> dict[str, Any]:
        status: dict[str, Any] = {"code": code, "description": description}
        if req_id:  # only the top-level status carries the request id
            status["req_id"] = uuid.uuid4().hex
        if details:
            status["details"] = details
        return status

    # -- the route ---------------------------------------------------------------------------------
    async def outputs(self, request: web.Request) -> web.StreamResponse:
        resp = await self.gate(request)
        if resp is not None:
            return resp
        model_id = request.match_info["model_id"]
        version_id = request.match_info.get("version_id") or self.versions[0]
        if model_id not in self.model_ids or version_id not in self.versions:
            return self._model_missing(model_id, version_id)
        try:
            body = json.loads(await request.read())
            inputs = body.get("inputs") or []
            if not isinstance(inputs, list):
                raise TypeError("inputs must be a list")
        except (ValueError, TypeError, AttributeError):
            return self.error_response("bad_request", "Invalid request", details="request body is not valid JSON")
        if not inputs:
            return self.error_response("bad_request", "Invalid request", details="no inputs given")
        if len(inputs) > MAX_INPUTS:
            return self.error_response(
                "bad_request", "Invalid request", details=f"{len(inputs)} inputs; at most {MAX_INPUTS} per request"
            )
        model = self._model(model_id, version_id, request.match_info.get("app_id", "main"),
                            request.match_info.get("user_id", "clarifai"))
        outputs = [await self._output(item, model) for item in inputs]
        failed = sum(1 for out in outputs if out["status"]["code"] != SUCCESS)
        if failed == 0:
            status, http_status = self._status(SUCCESS, "Ok"), 200
        elif failed < len(outputs):
            status, http_status = self._status(MIXED_STATUS, "Mixed Success"), 200
        else:
            status, http_status = self._status(FAILURE, "Failure"), 400
        return web.json_response({"status": status, "outputs": outputs}, status=http_status)

    def _model_missing(self, model_id: str, version_id: str) -> web.StreamResponse:
        body = {
            "status": self._status(MODEL_DOES_NOT_EXIST, "Model does not exist",
                                   f"model {model_id!r} version {version_id!r} not found"),
            "outputs": [],
        }
        return web.json_response(body, status=404)

    @staticmethod
    def _model(model_id: str, version_id: str, app_id: str, user_id: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "name": GENERAL_MODEL_ID,
            "app_id": app_id,
            "user_id": user_id,
            "model_type_id": "visual-classifier",
            "model_version": {
                "id": version_id,
                "status": {"code": MODEL_TRAINED, "description": "Model is trained and ready"},
                "app_id": app_id,
                "user_id": user_id,
            },
        }

    async def _output(self, item: Any, model: dict[str, Any]) -> dict[str, Any]:
        output: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "created_at": _now(),
            "model": model,
            # Clarifai echoes the input with its base64 replaced by "dHJ1ZQ==" ("true"), not the image.
            "input": {"id": uuid.uuid4().hex, "data": {"image": {"url": "", "base64": "dHJ1ZQ=="}}},
        }
        image = (((item or {}).get("data") or {}).get("image") or {}) if isinstance(item, dict) else {}
        try:
            data = base64.b64decode(image.get("base64") or "", validate=True)
            if not data:
                raise ValueError("no image bytes")
            labels = await self.label(data)
        except (ValueError, binascii.Error) as exc:
            output["status"] = self._status(INPUT_DOWNLOAD_FAILED, "Download failed; check URL",
                                            f"failed to decode image: {exc}", req_id=False)
            output["data"] = {}
            return output
        output["status"] = {"code": SUCCESS, "description": "Ok"}
        output["data"] = {
            "concepts": [
                {"id": clarifai_concept_id(name), "name": name.strip().lower(), "value": float(score),
                 "app_id": "main"}
                for name, score in labels
            ]
        }
        return output
