"""GoogleProvider through the real google-cloud-vision SDK (REST transport) against GoogleEmulator on loopback.

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
from robust_api.providers.emulator.base import EMULATOR_KEY, EmulatorKnobs
from robust_api.providers.emulator.google import GoogleEmulator
from robust_api.providers.google import GoogleProvider

CANARY = "canary-google-key-7f3a91"
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


def mean_colour_labeller(image: Image.Image) -> list[tuple[str, float]]:
    """Deterministic and instant: one label per channel, scored by its share of the mean colour."""
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    shares = mean / max(mean.sum(), 1e-9)
    return sorted(zip(("red thing", "green thing", "blue thing"), shares.tolist()), key=lambda t: -t[1])


def png(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, "PNG")
    return buf.getvalue()


@contextlib.asynccontextmanager
async def emulated(knobs: EmulatorKnobs | None = None, labeller=mean_colour_labeller, emulator_cls=GoogleEmulator,
                   **emulator_options):
    emulator = emulator_cls(labeller, knobs or EmulatorKnobs(), **emulator_options)
    url = await emulator.start()
    try:
        yield emulator, url
    finally:
        await emulator.stop()


async def classify_once(url: str, images: list[bytes], **options) -> list[ProviderResponse | ProviderError]:
    provider = GoogleProvider.for_emulator(url, **options)
    try:
        return await provider.classify(images)
    finally:
        await provider.aclose()


# -- answers ---------------------------------------------------------------------------------------

async def test_one_image_gets_google_shaped_labels_and_no_model_version():
    async with emulated() as (emulator, url):
        [answer] = await classify_once(url, [png(COLOURS["red"])])
    assert isinstance(answer, ProviderResponse)
    top = answer.response["labelAnnotations"][0]
    assert top["description"] == "Red thing"  # Google capitalises the first letter
    assert top["mid"].startswith("/m/") and 0.8 < top["score"] <= 1.0 and top["topicality"] == top["score"]
    assert answer.model_version is None  # Google reports no model version
    assert parse_labels(answer.response, "google")[0].name == "red thing"
    assert emulator.stats.requests == 1


async def test_sixteen_images_are_one_request_answered_in_order():
    names = ["red", "green", "blue"] * 5 + ["green"]
    async with emulated() as (emulator, url):
        answers = await classify_once(url, [png(COLOURS[n]) for n in names])
    assert [parse_labels(a.response, "google")[0].name for a in answers] == [f"{n} thing" for n in names]
    assert emulator.stats.requests == 1 and emulator.stats.images_labelled == 16


async def test_more_than_sixteen_images_are_refused_before_anything_is_sent():
    async with emulated() as (emulator, url):
        with pytest.raises(ConfigError, match="at most 16"):
            await classify_once(url, [png(COLOURS["red"])] * 17)
    assert emulator.stats.requests == 0


async def test_max_results_caps_the_labels_and_is_part_of_the_settings():
    async with emulated() as (_, url):
        [answer] = await classify_once(url, [png(COLOURS["blue"])], max_results=2)
        provider = GoogleProvider.for_emulator(url, max_results=2)
        assert provider.settings() == {"feature": "LABEL_DETECTION", "max_results": 2}
        await provider.aclose()
    assert len(answer.response["labelAnnotations"]) == 2


async def test_a_zero_score_label_still_carries_its_score():
    async with emulated() as (_, url):
        [answer] = await classify_once(url, [png((255, 0, 0))])
    scores = {label["description"]: label["score"] for label in answer.response["labelAnnotations"]}
    assert scores["Green thing"] == 0.0  # proto3 JSON would drop it; the adapter puts it back


async def test_an_undecodable_image_fails_alone_inside_a_successful_batch():
    async with emulated() as (emulator, url):
        answers = await classify_once(url, [png(COLOURS["red"]), b"not an image", png(COLOURS["blue"])])
    assert isinstance(answers[0], ProviderResponse) and isinstance(answers[2], ProviderResponse)
    assert isinstance(answers[1], PermanentProviderError) and answers[1].kind == "invalid_image"
    assert emulator.stats.requests == 1


async def test_a_batch_over_the_request_size_limit_is_split_and_a_late_failure_keeps_the_paid_answers(monkeypatch):
    import robust_api.providers.google as google_module

    class FailsSecondRequest(GoogleEmulator):
        async def gate(self, request):
            resp = await super().gate(request)
            if resp is None and self.stats.requests == 2:
                return self.error_response("server", "second request fails")
            return resp

    images = [png((10 * i, 0, 0)) for i in range(16)]
    per_image = 4 * ((max(map(len, images)) + 2) // 3) + google_module._REQUEST_OVERHEAD_BYTES
    # Google's limit is 10 MB of JSON; shrink it so 8 of these small images fill one request.
    monkeypatch.setattr(google_module, "MAX_REQUEST_JSON_BYTES", 8 * per_image)
    async with emulated(emulator_cls=FailsSecondRequest) as (emulator, url):
        answers = await classify_once(url, images)
    assert emulator.stats.requests == 2 and len(answers) == 16
    assert all(isinstance(a, ProviderResponse) for a in answers[:8])  # paid for: handed over
    assert all(isinstance(a, RetryableProviderError) and a.kind == "server" for a in answers[8:])


# -- the wire --------------------------------------------------------------------------------------

def test_emulator_accepts_string_enums_and_a_key_in_the_query():
    emulator = GoogleEmulator(mean_colour_labeller)
    with emulator.running() as url:
        body = {"requests": [{"image": {"content": base64.b64encode(png(COLOURS["green"])).decode()},
                              "features": [{"type": "LABEL_DETECTION", "maxResults": 1}]}]}
        reply = requests.post(f"{url}/v1/images:annotate", params={"key": EMULATOR_KEY}, json=body, timeout=10)
    assert reply.status_code == 200
    assert reply.json() == {"responses": [{"labelAnnotations": [reply.json()["responses"][0]["labelAnnotations"][0]]}]}
    assert reply.json()["responses"][0]["labelAnnotations"][0]["description"] == "Green thing"


def test_emulator_refuses_a_json_body_over_ten_megabytes():
    emulator = GoogleEmulator(mean_colour_labeller)
    with emulator.running() as url:
        body = {"requests": [{"image": {"content": "A" * (10 * 1024 * 1024)}, "features": [{"type": 4}]}]}
        reply = requests.post(f"{url}/v1/images:annotate", json=body, timeout=30,
                              headers={"x-goog-api-key": EMULATOR_KEY})
    assert reply.status_code == 400 and reply.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "10485760" in reply.json()["error"]["message"] and emulator.stats.images_labelled == 0


def test_emulator_refuses_seventeen_images_in_one_call_through_the_sdk():
    from google.api_core.exceptions import BadRequest
    from google.cloud import vision

    emulator = GoogleEmulator(mean_colour_labeller)
    with emulator.running() as url:
        client = vision.ImageAnnotatorClient(transport="rest",
                                             client_options={"api_endpoint": url, "api_key": EMULATOR_KEY})
        request = {"image": {"content": png(COLOURS["red"])}, "features": [{"type_": 4}]}
        with pytest.raises(BadRequest, match="Too many images"):
            client.batch_annotate_images(requests=[request] * 17, retry=None, timeout=10)
    assert emulator.stats.requests == 1


# -- credentials -----------------------------------------------------------------------------------

async def test_wrong_key_is_one_request_and_a_permanent_auth_error_naming_the_env_vars(caplog):
    caplog.set_level(logging.DEBUG)
    async with emulated() as (emulator, url):
        with pytest.raises(PermanentProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])], api_key=CANARY)
    error = info.value
    assert error.kind == "auth" and error.provider == "google"
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(error) and "GOOGLE_API_KEY" in str(error)
    assert CANARY not in str(error) and CANARY not in repr(error) and CANARY not in caplog.text
    assert emulator.stats.requests == 1


async def test_no_credential_is_refused_when_the_emulator_requires_a_key_and_accepted_when_not():
    async with emulated() as (emulator, url):
        with pytest.raises(PermanentProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])], anonymous=True)
        assert info.value.kind == "auth" and emulator.stats.requests == 1
    async with emulated(require_key=False) as (emulator, url):
        [answer] = await classify_once(url, [png(COLOURS["red"])], anonymous=True)
        assert isinstance(answer, ProviderResponse)
        with pytest.raises(PermanentProviderError):  # a wrong key is still wrong
            await classify_once(url, [png(COLOURS["red"])], api_key=CANARY)


async def test_a_rejected_oauth_token_is_one_request_and_an_auth_error():
    from google.oauth2.credentials import Credentials

    async with emulated() as (emulator, url):
        with pytest.raises(PermanentProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])], credentials=Credentials(token=CANARY))
    assert info.value.kind == "auth" and CANARY not in str(info.value)
    assert emulator.stats.requests == 1  # the 401 triggers a token refresh, which fails without re-sending


async def test_the_api_key_is_read_from_google_api_key(monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", EMULATOR_KEY)
    async with emulated() as (_, url):
        provider = GoogleProvider(endpoint=url)
        [answer] = await provider.classify([png(COLOURS["red"])])
        await provider.aclose()
    assert isinstance(answer, ProviderResponse)


def test_missing_credentials_raise_a_config_error_naming_both_env_vars(monkeypatch, tmp_path):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    # ADC fails at once (no network probe) when the file it is told to use does not exist.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="GOOGLE_APPLICATION_CREDENTIALS.*GOOGLE_API_KEY") as info:
        GoogleProvider()
    assert "missing.json" in str(info.value)  # says which file ADC could not find


# -- whole-call failures: one request each, the right kind -------------------------------------------

async def test_throttling_is_retryable_carries_retry_after_and_is_not_retried_by_the_sdk():
    async with emulated(EmulatorKnobs(p_throttle=1.0, retry_after_s=2.5)) as (emulator, url):
        with pytest.raises(RetryableProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])])
    assert info.value.kind == "throttled" and info.value.retry_after_s == 2.5 and info.value.status == 429
    assert emulator.stats.requests == 1


async def test_exhausted_daily_quota_is_permanent():
    async with emulated(EmulatorKnobs(daily_quota=0)) as (emulator, url):
        with pytest.raises(PermanentProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])])
    assert info.value.kind == "quota" and emulator.stats.requests == 1


async def test_503_is_retryable_and_sent_exactly_once():
    # The SDK's default retry policy would re-send a 503 for up to 600 s (measured: 15 requests in 8 s).
    async with emulated(EmulatorKnobs(p_server_error=1.0)) as (emulator, url):
        with pytest.raises(RetryableProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])])
    assert info.value.kind == "server" and info.value.status == 503 and info.value.retry_after_s == 1.0
    assert emulator.stats.requests == 1


async def test_a_body_that_is_not_json_is_malformed():
    async with emulated(EmulatorKnobs(p_malformed=1.0)) as (emulator, url):
        with pytest.raises(RetryableProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])])
    assert info.value.kind == "malformed" and emulator.stats.requests == 1


async def test_a_reset_connection_is_a_connection_error():
    async with emulated(EmulatorKnobs(p_reset=1.0)) as (emulator, url):
        with pytest.raises(RetryableProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])])
    assert info.value.kind == "connection" and emulator.stats.requests == 1


async def test_a_hanging_server_is_a_timeout_within_the_per_call_limit():
    async with emulated(EmulatorKnobs(p_timeout=1.0, timeout_hang_s=1.5)) as (emulator, url):
        with pytest.raises(RetryableProviderError) as info:
            await classify_once(url, [png(COLOURS["red"])], timeout_s=0.3)
    # the hang ends by dropping the connection: "timeout" means the per-call limit fired first
    assert info.value.kind == "timeout"
    assert emulator.stats.requests == 1


async def test_a_closed_port_is_a_connection_error():
    provider = GoogleProvider.for_emulator("http://127.0.0.1:9", timeout_s=2)
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
        [answer] = await classify_once(url, [buf.getvalue()], max_results=5)
    labels = answer.response["labelAnnotations"]
    assert labels[0]["description"] == "Espresso" and labels[0]["score"] > 0.5 and len(labels) == 5


# -- with the dispatch layer -----------------------------------------------------------------------

async def test_through_the_dispatcher_faults_are_retried_and_no_image_is_labelled_twice():
    from robust_api.dispatch import Dispatcher

    knobs = EmulatorKnobs(p_throttle=0.2, p_server_error=0.15, p_reset=0.05, retry_after_s=0.02, seed=3)
    names = (["red", "green", "blue"] * 14)[:40]
    async with emulated(knobs) as (emulator, url):
        provider = GoogleProvider.for_emulator(url)
        dispatcher = Dispatcher(provider, rate_per_s=1000, burst=50, max_attempts=12,
                                backoff_initial_s=0.01, backoff_max_s=0.05)
        outcomes = await dispatcher.classify([png(COLOURS[n]) for n in names])
        await provider.aclose()
    assert [parse_labels(o.response.response, "google")[0].name for o in outcomes] == [f"{n} thing" for n in names]
    assert emulator.stats.images_labelled == 40  # every image answered exactly once
    assert sum(emulator.stats.faults.values()) > 0 and emulator.stats.requests == dispatcher.stats.requests
