"""AWSProvider through real boto3 against AwsEmulator over loopback (JSON 1.1, SigV4-signed requests).

Error mapping checked here: UnrecognizedClientException -> auth; ThrottlingException -> throttled;
InternalServerError (500) -> server; truncated 200 body -> malformed; reset -> connection; no answer within
read_timeout_s -> timeout; InvalidImageFormatException / ImageTooLargeException -> invalid_image;
InvalidParameterException -> bad_request; LimitExceededException -> quota.
Every failure costs exactly one HTTP request: botocore's retries are off (total_max_attempts=1).
"""
from __future__ import annotations

import asyncio
import io
import socket
import uuid

import pytest
from PIL import Image

from robust_api.errors import ConfigError, PermanentProviderError, RetryableProviderError
from robust_api.providers.aws import AWS_LIMITS, AWSProvider
from robust_api.providers.emulator.aws import AwsEmulator, rekognition_labels
from robust_api.providers.emulator.base import EMULATOR_KEY, EmulatorKnobs

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 30), "blue": (20, 30, 210)}
HIERARCHY = {"red": ["warm colour", "colour"], "blue": ["cool colour", "colour"], "green": ["cool colour", "colour"]}


def colour_labeller(image: Image.Image) -> list[tuple[str, float]]:
    """Deterministic and fast: the dominant channel of the mean colour, then a weak second guess."""
    mean = image.resize((1, 1)).getpixel((0, 0))
    ranked = sorted(range(3), key=lambda c: -mean[c])
    names = ("red", "green", "blue")
    return [(names[ranked[0]], 0.875), (names[ranked[1]], 0.625), ("noise", 0.25)]


def ancestors(name: str) -> list[str]:
    return HIERARCHY.get(name, [])


def png(rgb: tuple[int, int, int], size: int = 96) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
async def emulator():
    emu = AwsEmulator(labeller=colour_labeller, knobs=EmulatorKnobs(timeout_hang_s=1.5), ancestors=ancestors)
    await emu.start()
    yield emu
    await emu.stop()


async def classify_one(provider: AWSProvider, data: bytes):
    try:
        (result,) = await provider.classify([data])
        return result
    finally:
        await provider.aclose()


async def test_labels_carry_ancestors_with_exactly_equal_confidence_and_full_parents(emulator):
    result = await classify_one(AWSProvider.for_emulator(emulator.url), png(COLOURS["red"]))
    labels = {label["Name"]: label for label in result.response["Labels"]}
    assert set(labels) == {"Red", "Warm Colour", "Colour", "Green", "Cool Colour"}  # "Noise" < MinConfidence 55
    assert labels["Red"]["Confidence"] == labels["Warm Colour"]["Confidence"] == labels["Colour"]["Confidence"] == 87.5
    assert labels["Green"]["Confidence"] == labels["Cool Colour"]["Confidence"] == 62.5
    assert [p["Name"] for p in labels["Red"]["Parents"]] == ["Warm Colour", "Colour"]
    assert labels["Colour"]["Parents"] == []
    # best first; like the real service, the most generic ancestor can come first among equal scores
    assert [label["Name"] for label in result.response["Labels"]][:3] == ["Colour", "Warm Colour", "Red"]
    assert result.model_version == "3.0"
    uuid.UUID(result.request_id)  # x-amzn-RequestId
    assert "ResponseMetadata" not in result.response
    assert emulator.stats.requests == 1


async def test_max_labels_and_min_confidence_are_honoured(emulator):
    provider = AWSProvider.for_emulator(emulator.url, max_labels=2, min_confidence=10)
    result = await classify_one(provider, png(COLOURS["blue"]))
    assert [label["Name"] for label in result.response["Labels"]] == ["Colour", "Cool Colour"]
    provider = AWSProvider.for_emulator(emulator.url, min_confidence=10)
    result = await classify_one(provider, png(COLOURS["blue"]))
    assert "Noise" in [label["Name"] for label in result.response["Labels"]]
    assert provider.settings() == {"operation": "DetectLabels", "max_labels": None, "min_confidence": 10.0}


def test_a_label_shared_by_two_detections_takes_the_higher_confidence():
    labels = rekognition_labels([("green", 0.6), ("blue", 0.7)], ancestors, 1000, 0.0)
    by_name = {label["Name"]: label["Confidence"] for label in labels}
    assert by_name["Cool Colour"] == by_name["Colour"] == by_name["Blue"] == 70.0
    assert by_name["Green"] == 60.0


async def test_concurrent_calls_through_one_client_keep_their_own_answers(emulator):
    provider = AWSProvider.for_emulator(emulator.url, max_labels=1000)
    names = ["red", "green", "blue"] * 3
    try:
        results = await asyncio.gather(*(provider.classify([png(COLOURS[n])]) for n in names))
    finally:
        await provider.aclose()
    leaves = [next(l["Name"] for l in r[0].response["Labels"] if l["Name"].lower() in COLOURS) for r in results]
    assert leaves == [n.capitalize() for n in names]
    assert emulator.stats.requests == len(names)


async def test_wrong_key_costs_one_request_and_names_the_env_vars_not_the_key(emulator):
    canary = "AKIACANARY" + uuid.uuid4().hex[:10].upper()
    with pytest.raises(PermanentProviderError) as info:
        await classify_one(AWSProvider.for_emulator(emulator.url, access_key_id=canary), png(COLOURS["red"]))
    err = info.value
    assert err.kind == "auth" and err.status == 400
    assert "AWS_ACCESS_KEY_ID" in str(err) and "AWS_REGION" in str(err)
    assert canary not in str(err) and canary not in err.reason
    assert err.request_id
    assert emulator.stats.requests == 1


async def test_throttling_is_retryable_and_not_retried_by_botocore(emulator):
    emulator.knobs.p_throttle = 1.0
    with pytest.raises(RetryableProviderError) as info:
        await classify_one(AWSProvider.for_emulator(emulator.url), png(COLOURS["red"]))
    assert (info.value.kind, info.value.status) == ("throttled", 400)
    assert info.value.retry_after_s is None  # AWS sends no Retry-After: the dispatch layer backs off on its own
    assert info.value.request_id
    assert emulator.stats.requests == 1  # botocore's default standard mode would have made 3, backing off between


async def test_rate_limit_of_the_emulator_throttles_the_second_back_to_back_call():
    emu = AwsEmulator(labeller=colour_labeller, knobs=EmulatorKnobs(rate_per_s=0.5, burst=1), ancestors=ancestors)
    await emu.start()
    provider = AWSProvider.for_emulator(emu.url)
    try:
        await provider.classify([png(COLOURS["red"])])
        with pytest.raises(RetryableProviderError) as info:
            await provider.classify([png(COLOURS["red"])])
    finally:
        await provider.aclose()
        await emu.stop()
    assert info.value.kind == "throttled"
    assert emu.stats.requests == 2


@pytest.mark.parametrize(
    "knob, kind",
    [("p_server_error", "server"), ("p_malformed", "malformed"), ("p_reset", "connection")],
)
async def test_transient_faults_are_retryable_and_cost_one_request(emulator, knob, kind):
    setattr(emulator.knobs, knob, 1.0)
    with pytest.raises(RetryableProviderError) as info:
        await classify_one(AWSProvider.for_emulator(emulator.url), png(COLOURS["red"]))
    assert info.value.kind == kind
    if kind == "server":
        assert info.value.status == 500 and info.value.request_id
    assert emulator.stats.requests == 1


async def test_no_answer_within_read_timeout_is_a_timeout(emulator):
    emulator.knobs.p_timeout = 1.0
    with pytest.raises(RetryableProviderError) as info:
        await classify_one(AWSProvider.for_emulator(emulator.url, read_timeout_s=0.3), png(COLOURS["red"]))
    # a hang that ended would have answered or closed the connection: "timeout" is the client's own read timeout
    assert info.value.kind == "timeout"
    assert emulator.stats.requests == 1  # and the SDK did not retry it


async def test_refused_connection_fails_fast_without_sdk_retries(connect_attempts):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(RetryableProviderError) as info:
        await classify_one(AWSProvider.for_emulator(f"http://127.0.0.1:{port}"), png(COLOURS["red"]))
    assert info.value.kind == "connection"
    assert connect_attempts[port] == 1  # botocore's default would try 3 times (legacy mode: 5)


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"this is not an image", "invalid_image"),
        (b"GIF89a" + b"\x00" * 40, "invalid_image"),
        (png(COLOURS["red"], size=40), "bad_request"),  # below Rekognition's 80 px minimum
    ],
    ids=["undecodable", "not-jpeg-or-png", "too-small"],
)
async def test_bad_images_are_permanent(emulator, data, kind):
    with pytest.raises(PermanentProviderError) as info:
        await classify_one(AWSProvider.for_emulator(emulator.url), data)
    assert (info.value.kind, info.value.status) == (kind, 400)
    assert emulator.stats.requests == 1


async def test_image_over_5_mb_is_image_too_large(emulator):
    big = png(COLOURS["red"]) + b"\x00" * (AWS_LIMITS.max_bytes + 1)  # PNG decoders ignore trailing bytes
    with pytest.raises(PermanentProviderError, match="ImageTooLargeException") as info:
        await classify_one(AWSProvider.for_emulator(emulator.url), big)
    assert info.value.kind == "invalid_image"


async def test_exhausted_quota_is_permanent_quota(emulator):
    emulator.knobs.daily_quota = 1
    provider = AWSProvider.for_emulator(emulator.url)
    try:
        await provider.classify([png(COLOURS["red"])])
        with pytest.raises(PermanentProviderError) as info:
            await provider.classify([png(COLOURS["red"])])
    finally:
        await provider.aclose()
    assert info.value.kind == "quota"
    assert emulator.stats.requests == 2


@pytest.fixture
def no_aws_env(monkeypatch, tmp_path):
    """An environment where boto3's default chain finds nothing (and never tries the EC2 metadata service)."""
    for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
        "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_missing_region_and_credentials_name_what_to_set(no_aws_env):
    with pytest.raises(ConfigError, match="AWS_REGION"):
        AWSProvider()
    no_aws_env.setenv("AWS_REGION", "us-east-1")
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        AWSProvider()
    with pytest.raises(ConfigError, match="ProfileNotFound"):
        AWSProvider(profile="no-such-profile")


async def test_credentials_and_region_come_from_the_default_chain(emulator, no_aws_env):
    no_aws_env.setenv("AWS_ACCESS_KEY_ID", EMULATOR_KEY)
    no_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "any-secret")
    no_aws_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    from robust_api.providers import make_provider

    provider = make_provider("aws", emulator.url)  # the registry passes the URL as `endpoint`
    assert isinstance(provider, AWSProvider) and provider.region == "eu-west-1"
    result = await classify_one(provider, png(COLOURS["green"]))
    assert any(label["Name"] == "Green" for label in result.response["Labels"])


def test_bad_options_and_batches_are_config_errors():
    with pytest.raises(ConfigError):
        AWSProvider.for_emulator("http://127.0.0.1:9", max_labels=-1)
    with pytest.raises(ConfigError):
        AWSProvider.for_emulator("http://127.0.0.1:9", min_confidence=101)
    provider = AWSProvider.for_emulator("http://127.0.0.1:9")
    with pytest.raises(ConfigError):
        asyncio.run(provider.classify([b"a", b"b"]))
    assert AWSProvider.max_batch == 1 and AWSProvider.pricing.as_of == "2026-11"


async def test_default_labeller_and_hierarchy_label_a_real_photo():
    from skimage import data as skimage_data

    buf = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).save(buf, "JPEG", quality=90)
    emu = AwsEmulator()
    await emu.start()
    try:
        result = await classify_one(AWSProvider.for_emulator(emu.url, min_confidence=0), buf.getvalue())
    finally:
        await emu.stop()
    labels = result.response["Labels"]
    assert labels and all(0.0 <= label["Confidence"] <= 100.0 for label in labels)
    by_name = {label["Name"]: label for label in labels}
    for label in labels:  # every parent is itself a label with exactly the same or a higher confidence
        for parent in label["Parents"]:
            assert by_name[parent["Name"]]["Confidence"] >= label["Confidence"]
    assert any(label["Parents"] for label in labels)  # the real photo is a cat: it has ancestors


async def test_credentials_never_reach_debug_logs(emulator, caplog):
    import boto3

    canaries = ["AKIACANARY" + uuid.uuid4().hex[:10].upper(), "secret-" + uuid.uuid4().hex, "token-" + uuid.uuid4().hex]
    session = boto3.session.Session(
        aws_access_key_id=canaries[0], aws_secret_access_key=canaries[1], aws_session_token=canaries[2],
        region_name="us-east-1",
    )
    caplog.set_level("DEBUG")
    with pytest.raises(PermanentProviderError) as info:
        await classify_one(AWSProvider(session=session, endpoint_url=emulator.url), png(COLOURS["red"]))
    assert "Sending http request" in caplog.text  # botocore did log the request, headers included
    for canary in canaries:
        assert canary not in caplog.text and canary not in str(info.value)
