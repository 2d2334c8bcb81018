"""AzureProvider through the real Azure SDKs (4.0 and v3.2) against AzureEmulator over loopback.

Error mapping checked here: 401 -> auth; 403 "Out of call volume quota" -> quota; 429 + Retry-After ->
throttled with retry_after_s; 503 -> server; truncated 200 body -> malformed; reset -> connection;
no answer within read_timeout_s -> timeout; InvalidImageFormat / InvalidImageSize -> invalid_image.
Every failure costs exactly one HTTP request: the SDKs' own retries are off.
"""
from __future__ import annotations

import asyncio
import io
import socket
import uuid

import pytest
from PIL import Image

from robust_api.errors import ConfigError, PermanentProviderError, RetryableProviderError
from robust_api.providers.azure import AZURE_V4_LIMITS, AZURE_V32_LIMITS, AzureProvider
from robust_api.providers.emulator.azure import AzureEmulator
from robust_api.providers.emulator.base import EmulatorKnobs

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 30), "blue": (20, 30, 210)}
VERSIONS = [
    pytest.param({"api_version": "4.0"}, id="4.0"),
    pytest.param({"api_version": "3.2", "operation": "tag"}, id="3.2-tag"),
    pytest.param({"api_version": "3.2", "operation": "analyze"}, id="3.2-analyze"),
]


def colour_labeller(image: Image.Image) -> list[tuple[str, float]]:
    """Deterministic and fast: the dominant channel of the mean colour, then a generic label."""
    mean = image.resize((1, 1)).getpixel((0, 0))
    name = ("Red", "Green", "Blue")[max(range(3), key=lambda c: mean[c])]
    return [("Colour", 0.55), (name, 0.9)]


def png(rgb: tuple[int, int, int], size: int = 96) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, "PNG")
    return buf.getvalue()


def tags_of(response: dict) -> list[dict]:
    return response["tagsResult"]["values"] if "tagsResult" in response else response["tags"]


@pytest.fixture
async def emulator():
    emu = AzureEmulator(labeller=colour_labeller, knobs=EmulatorKnobs(timeout_hang_s=1.5))
    await emu.start()
    yield emu
    await emu.stop()


async def classify_one(provider: AzureProvider, data: bytes):
    try:
        (result,) = await provider.classify([data])
        return result
    finally:
        await provider.aclose()


@pytest.mark.parametrize("options", VERSIONS)
async def test_each_api_version_returns_raw_tags_model_version_and_request_id(emulator, options):
    provider = AzureProvider.for_emulator(emulator.url, **options)
    result = await classify_one(provider, png(COLOURS["red"]))
    tags = tags_of(result.response)
    assert tags[0] == {"name": "red", "confidence": 0.9}  # lower-cased, best first, 0-1 scale
    assert [t["name"] for t in tags] == ["red", "colour"]
    if options["api_version"] == "4.0":
        assert result.model_version == "2023-10-01"
        assert result.response["metadata"] == {"width": 96, "height": 96}
        uuid.UUID(result.request_id)  # from the apim-request-id header
    else:
        assert result.model_version == "2021-05-01"
        assert result.request_id == result.response["requestId"]
    assert emulator.stats.requests == 1


async def test_v32_sdk_uploads_chunked_and_v4_does_not(emulator):
    await classify_one(AzureProvider.for_emulator(emulator.url, api_version="3.2"), png(COLOURS["blue"]))
    assert emulator.chunked_uploads == 1
    await classify_one(AzureProvider.for_emulator(emulator.url, api_version="4.0"), png(COLOURS["blue"]))
    assert emulator.chunked_uploads == 1
    assert emulator.stats.images_labelled == 2


@pytest.mark.parametrize("options", VERSIONS)
async def test_concurrent_calls_through_one_client_keep_their_own_answers(emulator, options):
    provider = AzureProvider.for_emulator(emulator.url, **options)
    names = ["red", "green", "blue"] * 3
    try:
        results = await asyncio.gather(*(provider.classify([png(COLOURS[n])]) for n in names))
    finally:
        await provider.aclose()
    assert [tags_of(r[0].response)[0]["name"] for r in results] == names
    assert emulator.stats.requests == len(names)


@pytest.mark.parametrize("options", VERSIONS)
async def test_wrong_key_costs_one_request_and_names_the_env_var_not_the_key(emulator, options):
    secret = "canary-" + uuid.uuid4().hex
    provider = AzureProvider.for_emulator(emulator.url, key=secret, **options)
    with pytest.raises(PermanentProviderError) as info:
        await classify_one(provider, png(COLOURS["red"]))
    err = info.value
    assert (err.kind, err.status) == ("auth", 401)
    assert "AZURE_VISION_KEY" in str(err)
    assert secret not in str(err) and secret not in repr(err.args) and secret not in err.reason
    assert err.request_id
    assert emulator.stats.requests == 1


@pytest.mark.parametrize("options", VERSIONS)
async def test_throttling_is_retryable_with_retry_after_and_not_retried_by_the_sdk(emulator, options, sdk_sleeps):
    emulator.knobs.p_throttle = 1.0
    emulator.knobs.retry_after_s = 7
    with pytest.raises(RetryableProviderError) as info:
        await classify_one(AzureProvider.for_emulator(emulator.url, **options), png(COLOURS["red"]))
    assert (info.value.kind, info.value.status, info.value.retry_after_s) == ("throttled", 429, 7.0)
    assert info.value.request_id
    assert emulator.stats.requests == 1
    assert not [s for s in sdk_sleeps if s >= 1.0]  # the SDK did not sleep on Retry-After


async def test_rate_limit_of_the_emulator_throttles_the_second_back_to_back_call():
    emu = AzureEmulator(labeller=colour_labeller, knobs=EmulatorKnobs(rate_per_s=0.5, burst=1, retry_after_s=2))
    await emu.start()
    provider = AzureProvider.for_emulator(emu.url)
    try:
        await provider.classify([png(COLOURS["red"])])
        with pytest.raises(RetryableProviderError) as info:
            await provider.classify([png(COLOURS["red"])])
    finally:
        await provider.aclose()
        await emu.stop()
    assert (info.value.kind, info.value.retry_after_s) == ("throttled", 2.0)
    assert emu.stats.requests == 2


@pytest.mark.parametrize("options", VERSIONS)
@pytest.mark.parametrize(
    "knob, kind",
    [("p_server_error", "server"), ("p_malformed", "malformed"), ("p_reset", "connection")],
)
async def test_transient_faults_are_retryable_and_cost_one_request(emulator, options, knob, kind):
    setattr(emulator.knobs, knob, 1.0)
    with pytest.raises(RetryableProviderError) as info:
        await classify_one(AzureProvider.for_emulator(emulator.url, **options), png(COLOURS["red"]))
    assert info.value.kind == kind
    if kind == "server":
        assert info.value.status == 503 and info.value.request_id
    assert emulator.stats.requests == 1


@pytest.mark.parametrize("options", VERSIONS)
async def test_no_answer_within_read_timeout_is_a_timeout(emulator, options):
    emulator.knobs.p_timeout = 1.0
    provider = AzureProvider.for_emulator(emulator.url, read_timeout_s=0.3, **options)
    with pytest.raises(RetryableProviderError) as info:
        await classify_one(provider, png(COLOURS["red"]))
    # a hang that ended would have answered or closed the connection: "timeout" is the client's own read timeout
    assert info.value.kind == "timeout"
    assert emulator.stats.requests == 1


@pytest.mark.parametrize("options", VERSIONS)
async def test_refused_connection_fails_fast_without_sdk_retries(options, connect_attempts):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(RetryableProviderError) as info:
        await classify_one(AzureProvider.for_emulator(f"http://127.0.0.1:{port}", **options), png(COLOURS["red"]))
    assert info.value.kind == "connection"
    assert connect_attempts[port] == 1  # msrest's and azure-core's defaults retry a refused connection 3 times


@pytest.mark.parametrize("options", VERSIONS)
@pytest.mark.parametrize(
    "data",
    [b"this is not an image", png(COLOURS["red"], size=20)],
    ids=["undecodable", "too-small"],
)
async def test_invalid_images_are_permanent_invalid_image(emulator, options, data):
    with pytest.raises(PermanentProviderError) as info:
        await classify_one(AzureProvider.for_emulator(emulator.url, **options), data)
    assert (info.value.kind, info.value.status) == ("invalid_image", 400)
    assert emulator.stats.requests == 1


@pytest.mark.parametrize("options", VERSIONS)
async def test_exhausted_quota_is_permanent_quota(emulator, options):
    emulator.knobs.daily_quota = 1
    provider = AzureProvider.for_emulator(emulator.url, **options)
    try:
        await provider.classify([png(COLOURS["red"])])
        with pytest.raises(PermanentProviderError) as info:
            await provider.classify([png(COLOURS["red"])])
    finally:
        await provider.aclose()
    assert (info.value.kind, info.value.status) == ("quota", 403)
    assert emulator.stats.requests == 2


def _clear_azure_env(monkeypatch):
    for name in ("AZURE_VISION_ENDPOINT", "AZURE_VISION_KEY", "VISION_ENDPOINT", "VISION_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_missing_credentials_name_the_env_vars(monkeypatch):
    _clear_azure_env(monkeypatch)
    with pytest.raises(ConfigError, match="AZURE_VISION_ENDPOINT and AZURE_VISION_KEY"):
        AzureProvider()
    monkeypatch.setenv("AZURE_VISION_ENDPOINT", "https://example.cognitiveservices.azure.com")
    with pytest.raises(ConfigError, match="AZURE_VISION_KEY") as info:
        AzureProvider()
    assert "AZURE_VISION_ENDPOINT" not in str(info.value).split("(")[0]


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError):
        AzureProvider(endpoint="https://x.example", key="k", api_version="2.1")
    with pytest.raises(ConfigError):
        AzureProvider(endpoint="https://x.example", key="k", operation="describe")
    with pytest.raises(ConfigError, match="https://"):
        AzureProvider(endpoint="x.example", key="k")


@pytest.mark.parametrize("prefix", ["AZURE_VISION", "VISION"])
async def test_credentials_come_from_the_environment(emulator, monkeypatch, prefix):
    from robust_api.providers.emulator.base import EMULATOR_KEY

    _clear_azure_env(monkeypatch)
    monkeypatch.setenv(f"{prefix}_ENDPOINT", emulator.url + "/")  # a trailing slash is fine
    monkeypatch.setenv(f"{prefix}_KEY", EMULATOR_KEY)
    result = await classify_one(AzureProvider(), png(COLOURS["green"]))
    assert tags_of(result.response)[0]["name"] == "green"


async def test_registry_builds_the_adapter_with_an_endpoint_override(emulator, monkeypatch):
    from robust_api.providers import make_provider
    from robust_api.providers.emulator.base import EMULATOR_KEY

    _clear_azure_env(monkeypatch)
    monkeypatch.setenv("AZURE_VISION_KEY", EMULATOR_KEY)
    provider = make_provider("azure", emulator.url, api_version="3.2")
    assert isinstance(provider, AzureProvider)
    result = await classify_one(provider, png(COLOURS["blue"]))
    assert tags_of(result.response)[0]["name"] == "blue"


def test_settings_limits_and_metadata_follow_the_api_version():
    v4 = AzureProvider(endpoint="https://x.example", key="k")
    v32 = AzureProvider(endpoint="https://x.example", key="k", api_version="3.2", operation="analyze")
    assert v4.settings()["api_version"] == "4.0" and v4.limits == AZURE_V4_LIMITS
    assert v32.settings()["operation"] == "analyze" and v32.limits == AZURE_V32_LIMITS
    assert v4.settings() != v32.settings()
    assert AzureProvider.max_batch == 1 and AzureProvider.pricing.as_of == "2026-11"


async def test_more_images_than_max_batch_is_a_config_error(emulator):
    provider = AzureProvider.for_emulator(emulator.url)
    try:
        with pytest.raises(ConfigError):
            await provider.classify([png(COLOURS["red"]), png(COLOURS["blue"])])
        assert await provider.classify([]) == []
    finally:
        await provider.aclose()
    assert emulator.stats.requests == 0


async def test_default_labeller_tags_a_real_photo(emulator):
    from skimage import data as skimage_data

    buf = io.BytesIO()
    Image.fromarray(skimage_data.coffee()).save(buf, "JPEG", quality=90)
    emu = AzureEmulator()
    await emu.start()
    try:
        result = await classify_one(AzureProvider.for_emulator(emu.url), buf.getvalue())
    finally:
        await emu.stop()
    tags = tags_of(result.response)
    assert tags and all(t["name"] == t["name"].lower() and 0.0 <= t["confidence"] <= 1.0 for t in tags)


@pytest.mark.parametrize("options", VERSIONS)
async def test_the_key_never_reaches_debug_logs(emulator, caplog, options):
    canary = "canary-" + uuid.uuid4().hex
    caplog.set_level("DEBUG")
    with pytest.raises(PermanentProviderError):
        await classify_one(AzureProvider.for_emulator(emulator.url, key=canary, **options), png(COLOURS["red"]))
    assert caplog.records  # the SDKs did log the call
    assert canary not in caplog.text
