"""ClarifaiProvider through the real clarifai-grpc JSON channel against ClarifaiEmulator on loopback.

Nothing inside the SDK is mocked: every test sends real HTTP requests and counts them at the emulator.
"""
from __future__ import annotations

import base64
import contextlib
import io
import logging
import time

import numpy as np
import pytest
import requests
from PIL import Image

from robust_api.decision import parse_labels
from robust_api.errors import ConfigError, PermanentProviderError, ProviderError, RetryableProviderError
from robust_api.providers.base import ProviderResponse
from robust_api.providers.clarifai import ClarifaiProvider, status_kind
from robust_api.providers.emulator.base import EMULATOR_KEY, EmulatorKnobs
from robust_api.providers.emulator.clarifai import GENERAL_MODEL_VERSION, ClarifaiEmulator

CANARY = "canary-clarifai-pat-5b0e2c"
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


def mean_colour_labeller(image: Image.Image) -> list[tuple[str, float]]:
    """Deterministic and instant: one label per channel, scored by its share of the mean colour."""
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    shares = mean / max(mean.sum(), 1e-9)
    return sorted(zip(("Red Thing", "Green Thing", "Blue Thing"), shares.tolist()), key=lambda t: -t[1])


def png(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, "PNG")
    return buf.getvalue()


@contextlib.asynccontextmanager
async def emulated(knobs: EmulatorKnobs | None = None, labeller=mean_colour_labeller, **emulator_options):
    emulator = ClarifaiEmulator(labeller, knobs or EmulatorKnobs(), **emulator_options)
    url = await emulator.start()
    try:
        yield emulator, url
    finally:
        await emulator.stop()


async def classify_once(url: str, images: list[bytes], **options) -> list[ProviderResponse | ProviderError]:
    provider = ClarifaiProvider.for_emulator(url, **options)
    try:
        return await provider.classify(images)
    finally:
        await provider.aclose()


# -- answers ---------------------------------------------------------------------------------------

async def test_one_image_gets_lowercase_concepts_the_model_version_and_the_request_id():
    async with emulated() as (emulator, url):
        [answer] = await classify_once(url, [png(COLOURS["green"])])
    assert isinstance(answer, ProviderResponse)
    assert answer.response["status"]["code"] == 10000  # integer codes, as Clarifai's JSON spells them
    [output] = answer.response["outputs"]
    top = output["data"]["concepts"][0]
    assert top["name"] == "green thing" and top["id"].startswith("ai_") and top["app_id"] == "main"
    assert 0.8 < top["value"] <= 1.0
    assert answer.model_version == GENERAL_MODEL_VERSION
    assert answer.request_id == answer.response["status"]["req_id"]
    assert "base64" not in output["input"]["data"]["image"]  # image bytes are never logged
    assert parse_labels(answer.response, "clarifai")[0].name == "green thing"
    assert emulator.stats.requests == 1


async def test_a_zero_value_concept_still_carries_its_value():
    async with emulated() as (_, url):
        [answer] = await classify_once(url, [png((255, 0, 0))])
    values = {c["name"]: c["value"] for c in answer.response["outputs"][0]["data"]["concepts"]}
    assert values["blue thing"] == 0.0  # proto3 JSON would drop it; the adapter puts it back


async def test_128_images_are_one_request_answered_in_order():
    names = (["red", "green", "blue"] * 43)[:128]
    async with emulated() as (emulator, url):
        answers = await classify_once(url, [png(COLOURS[n]) for n in names])
    assert [parse_labels(a.response, "clarifai")[0].name for a in answers] == [f"{n} thing" for n in names]
    assert emulator.stats.requests == 1 and emulator.stats.images_labelled == 128


async def test_more_than_128_images_are_refused_before_anything_is_sent():
    async with emulated() as (emulator, url):
        with pytest.raises(ConfigError, match="at most 128"):
            await classify_once(url, [png(COLOURS["red"])] * 129)
    assert emulator.stats.requests == 0


async def test_a_pinned_version_is_sent_and_an_unknown_one_is_a_bad_request():
    async with emulated() as (emulator, url):
        provider = ClarifaiProvider.for_emulator(url, version_id=GENERAL_MODEL_VERSION)
        assert provider.settings()["version_id"] == GENERAL_MODEL_VERSION
        [answer] = await provider.classify([png(COLOURS["red"])])
        await provider.aclose()
        assert answer.model_version == GENERAL_MODEL_VERSION
        with pytest.raises(PermanentProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])], version_id="0123456789abcdef")
    assert info.value.kind == "bad_request" and "MODEL_DOES_NOT_EXIST" in str(info.value)
    assert emulator.stats.requests == 2


async def test_an_undecodable_image_fails_alone_inside_a_mixed_status_batch():
    async with emulated() as (emulator, url):
        answers = await classify_once(url, [png(COLOURS["red"]), b"not an image", png(COLOURS["blue"])])
    assert isinstance(answers[0], ProviderResponse) and isinstance(answers[2], ProviderResponse)
    assert answers[0].response["status"]["code"] == 10010  # MIXED_STATUS for the call ...
    assert answers[0].response["outputs"][0]["status"]["code"] == 10000  # ... success for this image
    assert isinstance(answers[1], PermanentProviderError) and answers[1].kind == "invalid_image"
    assert emulator.stats.requests == 1


async def test_when_every_image_fails_each_is_an_invalid_image_entry_not_a_failed_call():
    async with emulated() as (_, url):
        answers = await classify_once(url, [b"junk", b"more junk"])
    assert all(isinstance(a, PermanentProviderError) and a.kind == "invalid_image" for a in answers)


def test_status_codes_map_to_the_documented_kinds():
    from clarifai_grpc.grpc.api.status import status_code_pb2 as codes

    expected = {
        codes.SUCCESS: None, codes.CONN_THROTTLED: "throttled", codes.CONN_EXCEED_HOURLY_LIMIT: "throttled",
        codes.CONN_EXCEED_MONTHLY_LIMIT: "quota", codes.CONN_KEY_INVALID: "auth", codes.CONN_KEY_NOT_FOUND: "auth",
        codes.CONN_INSUFFICIENT_SCOPES: "auth", codes.MODEL_BUSY_PLEASE_RETRY: "server",
        codes.MODEL_DEPLOYING: "server", codes.INTERNAL_SERVER_ISSUE: "server", codes.RPC_REQUEST_TIMEOUT: "timeout",
        codes.INPUT_DOWNLOAD_FAILED: "invalid_image", codes.INPUT_UNSUPPORTED_FORMAT: "invalid_image",
        codes.MP_IMAGE_DECODE_ERROR: "invalid_image", codes.MODEL_DOES_NOT_EXIST: "bad_request",
        codes.CONN_INVALID_REQUEST: "bad_request",
    }
    assert {code: status_kind(code) for code in expected} == expected


# -- the wire --------------------------------------------------------------------------------------

def test_emulator_serves_the_short_route_with_integer_status_codes():
    emulator = ClarifaiEmulator(mean_colour_labeller)
    with emulator.running() as url:
        body = {"inputs": [{"data": {"image": {"base64": base64.b64encode(png(COLOURS["blue"])).decode()}}}]}
        reply = requests.post(f"{url}/v2/models/general-image-recognition/outputs", json=body, timeout=10,
                              headers={"Authorization": f"Key {EMULATOR_KEY}"})
    payload = reply.json()
    assert reply.status_code == 200 and payload["status"]["code"] == 10000
    assert payload["outputs"][0]["data"]["concepts"][0]["name"] == "blue thing"


def test_emulator_refuses_129_inputs_through_the_sdk():
    from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
    from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
    from clarifai_grpc.grpc.api.status import status_code_pb2

    emulator = ClarifaiEmulator(mean_colour_labeller)
    with emulator.running() as url:
        stub = service_pb2_grpc.V2Stub(ClarifaiChannel.get_json_channel(base_url=url))
        image = resources_pb2.Input(data=resources_pb2.Data(image=resources_pb2.Image(base64=png(COLOURS["red"]))))
        request = service_pb2.PostModelOutputsRequest(
            user_app_id=resources_pb2.UserAppIDSet(user_id="clarifai", app_id="main"),
            model_id="general-image-recognition", inputs=[image] * 129)
        response = stub.PostModelOutputs(request, metadata=(("authorization", f"Key {EMULATOR_KEY}"),))
    assert response.status.code == status_code_pb2.CONN_INVALID_REQUEST and "128" in response.status.details
    assert emulator.stats.images_labelled == 0


# -- credentials -----------------------------------------------------------------------------------

async def test_wrong_pat_is_one_request_and_a_permanent_auth_error_naming_clarifai_pat(caplog):
    caplog.set_level(logging.DEBUG)  # the SDK logs request headers at DEBUG: the PAT must be redacted there too
    async with emulated() as (emulator, url):
        with pytest.raises(PermanentProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])], pat=CANARY)
    error = info.value
    assert error.kind == "auth" and error.provider == "clarifai" and "CLARIFAI_PAT" in str(error)
    assert CANARY not in str(error) and CANARY not in repr(error)
    assert "Authorization" in caplog.text and CANARY not in caplog.text
    assert emulator.stats.requests == 1


def test_missing_pat_is_a_config_error_naming_clarifai_pat(monkeypatch):
    monkeypatch.delenv("CLARIFAI_PAT", raising=False)
    with pytest.raises(ConfigError, match="CLARIFAI_PAT"):
        ClarifaiProvider()


async def test_the_pat_is_read_from_clarifai_pat(monkeypatch):
    monkeypatch.setenv("CLARIFAI_PAT", EMULATOR_KEY)
    async with emulated() as (_, url):
        provider = ClarifaiProvider(endpoint=url)
        [answer] = await provider.classify([png(COLOURS["red"])])
        await provider.aclose()
    assert isinstance(answer, ProviderResponse)


# -- whole-call failures: one request each, the right kind -------------------------------------------

async def test_throttling_is_retryable_with_retry_after_and_one_request():
    async with emulated(EmulatorKnobs(p_throttle=1.0, retry_after_s=3)) as (emulator, url):
        with pytest.raises(RetryableProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])])
    error = info.value
    assert error.kind == "throttled" and error.retry_after_s == 3.0 and error.status == 429 and error.request_id
    assert "CONN_THROTTLED" in str(error) and emulator.stats.requests == 1


async def test_exhausted_monthly_quota_is_permanent():
    async with emulated(EmulatorKnobs(daily_quota=0)) as (emulator, url):
        with pytest.raises(PermanentProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])])
    assert info.value.kind == "quota" and emulator.stats.requests == 1


async def test_model_busy_is_a_retryable_server_error_sent_once():
    async with emulated(EmulatorKnobs(p_server_error=1.0)) as (emulator, url):
        with pytest.raises(RetryableProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])])
    assert info.value.kind == "server" and info.value.retry_after_s == 1.0 and emulator.stats.requests == 1


async def test_a_body_that_is_not_json_is_malformed_without_an_sdk_traceback(caplog):
    caplog.set_level(logging.WARNING)
    async with emulated(EmulatorKnobs(p_malformed=1.0)) as (emulator, url):
        with pytest.raises(RetryableProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])])
    assert info.value.kind == "malformed" and emulator.stats.requests == 1
    assert not [r for r in caplog.records if r.name == "clarifai" and r.levelno >= logging.WARNING]


async def test_a_reset_connection_is_a_connection_error_sent_once():
    async with emulated(EmulatorKnobs(p_reset=1.0)) as (emulator, url):
        with pytest.raises(RetryableProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])])
    assert info.value.kind == "connection" and emulator.stats.requests == 1


async def test_a_hanging_server_is_a_timeout_within_the_per_call_limit():
    async with emulated(EmulatorKnobs(p_timeout=1.0, timeout_hang_s=1.5)) as (emulator, url):
        with pytest.raises(RetryableProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])], timeout_s=0.3)
    # the hang ends by dropping the connection: "timeout" means the per-call limit fired first
    assert info.value.kind == "timeout" and emulator.stats.requests == 1


async def test_a_closed_port_is_a_connection_error_without_transport_retries():
    provider = ClarifaiProvider.for_emulator("http://127.0.0.1:9", timeout_s=2)
    # The stock channel session retries failed connections twice; ours must not retry at all.
    assert provider._session.get_adapter("http://127.0.0.1:9").max_retries.total == 0
    with pytest.raises(RetryableProviderError) as info:
        await provider.classify([png(COLOURS["red"])])
    await provider.aclose()
    assert info.value.kind == "connection"


# -- the real labeller -----------------------------------------------------------------------------

async def test_the_default_labeller_names_a_real_photo():
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.coffee()).save(buf, "JPEG", quality=90)
    async with emulated(labeller=None) as (_, url):
        [answer] = await classify_once(url, [buf.getvalue()])
    concepts = answer.response["outputs"][0]["data"]["concepts"]
    assert concepts[0]["name"] == "espresso" and concepts[0]["value"] > 0.5


# -- with the dispatch layer -----------------------------------------------------------------------

async def test_through_the_dispatcher_faults_are_retried_and_no_image_is_labelled_twice():
    from robust_api.dispatch import Dispatcher

    class SmallBatches(ClarifaiProvider):
        max_batch = 8  # several requests, so faults hit some of them

    knobs = EmulatorKnobs(p_throttle=0.2, p_server_error=0.15, p_reset=0.05, retry_after_s=0.02, seed=4)
    names = (["red", "green", "blue"] * 14)[:40]
    async with emulated(knobs) as (emulator, url):
        provider = SmallBatches.for_emulator(url)
        dispatcher = Dispatcher(provider, rate_per_s=1000, burst=50, max_attempts=12,
                                backoff_initial_s=0.01, backoff_max_s=0.05)
        outcomes = await dispatcher.classify([png(COLOURS[n]) for n in names])
        await provider.aclose()
    assert [parse_labels(o.response.response, "clarifai")[0].name for o in outcomes] == [f"{n} thing" for n in names]
    assert emulator.stats.images_labelled == 40  # every image answered exactly once
    assert sum(emulator.stats.faults.values()) > 0 and emulator.stats.requests == dispatcher.stats.requests
