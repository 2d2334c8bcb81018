"""The local provider: a real pretrained classifier, user torch modules and callables, behind the Provider API."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from robust_api.errors import ConfigError, PermanentProviderError
from robust_api.images import encode_for
from robust_api.providers.base import ProviderResponse
from robust_api.providers.local import LOCAL_LIMITS, LocalProvider, module_version

skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = {"tabby cat", "tiger cat", "Egyptian cat"}


def png(array: np.ndarray) -> bytes:
    return encode_for(array, LOCAL_LIMITS).data


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def solid(rgb: tuple[int, int, int], size: int = 16) -> np.ndarray:
    return np.full((size, size, 3), rgb, np.uint8)


def labels(answer: ProviderResponse) -> list[str]:
    return [p["label"] for p in answer.response["predictions"]]


@pytest.fixture(scope="module")
def default_provider() -> LocalProvider:
    return LocalProvider()


async def test_real_classifier_labels_the_cat_photo_a_cat(default_provider):
    [answer] = await default_provider.classify([png(skimage_data.chelsea())])
    assert isinstance(answer, ProviderResponse)
    assert labels(answer)[0] in CAT_CLASSES
    assert len(labels(answer)) == 5 and answer.model_version == "efficientnet-lite0-57934424"
    assert answer.response["modelVersion"] == answer.model_version
    scores = [p["score"] for p in answer.response["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6


async def test_real_classifier_sees_coffee_in_the_coffee_photo(default_provider):
    [answer] = await default_provider.classify([jpeg(skimage_data.coffee())])  # through JPEG bytes too
    top5 = labels(answer)
    assert top5[0] == "espresso"  # measured: espresso 0.95, then cup, consomme, chocolate sauce, coffee mug
    assert {"cup", "coffee mug"} & set(top5)


async def test_batch_mixes_answers_and_per_image_invalid_image_errors(default_provider):
    batch = [png(skimage_data.chelsea()), b"definitely not an image", png(skimage_data.coffee()), b""]
    answers = await default_provider.classify(batch)
    assert len(answers) == 4
    assert labels(answers[0])[0] in CAT_CLASSES and labels(answers[2])[0] == "espresso"
    for bad in (answers[1], answers[3]):
        assert isinstance(bad, PermanentProviderError)
        assert bad.kind == "invalid_image" and bad.provider == "local" and not bad.retryable
    # the batched answer equals the one-at-a-time answer
    [alone] = await default_provider.classify([batch[2]])
    assert labels(alone) == labels(answers[2])
    np.testing.assert_allclose(
        [p["score"] for p in alone.response["predictions"]],
        [p["score"] for p in answers[2].response["predictions"]],
        rtol=1e-4,
    )


async def test_classify_runs_off_the_event_loop(default_provider):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    await default_provider.classify([png(skimage_data.astronaut())] * 4)
    task.cancel()
    assert ticks > 0  # the loop kept running while the model worked


def test_settings_name_the_model_and_top_k(default_provider):
    assert default_provider.settings() == {
        "model": "efficientnet-lite0",
        "model_version": "efficientnet-lite0-57934424",
        "top_k": 5,
    }
    assert LocalProvider.max_batch == 64 and LocalProvider.pricing.usd_per_1000 == 0.0
    assert LocalProvider.default_rate_per_s >= 1e5


class MeanColour(torch.nn.Module):
    """Logits = 10 x mean of each channel: the dominant colour wins."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * self.gain


async def test_torch_module_with_class_names():
    provider = LocalProvider(MeanColour(), ["red", "green", "blue"], top_k=2)
    answers = await provider.classify([png(solid((250, 10, 10))), png(solid((0, 0, 200), size=24))])
    assert labels(answers[0]) == ["red", "green"]  # green/blue tie: class order decides
    assert labels(answers[1])[0] == "blue" and len(labels(answers[1])) == 2
    scores = [p["score"] for p in answers[0].response["predictions"]]
    expected = torch.softmax(torch.tensor([250, 10, 10]) / 255 * 10.0, 0)[0].item()
    assert scores[0] == pytest.approx(expected, rel=1e-5)  # softmax over the module's logits
    assert provider.settings()["model"] == "MeanColour"


def test_module_version_follows_the_weights():
    a, b = MeanColour(), MeanColour()
    assert module_version(a, "m") == module_version(b, "m")
    with torch.no_grad():
        b.gain.add_(1.0)
    assert module_version(a, "m") != module_version(b, "m")
    assert LocalProvider(a, ["r", "g", "b"]).model_version == module_version(a, "MeanColour")


async def test_callable_on_pil_images_sorted_and_cut_to_top_k():
    def brightness(image: Image.Image):
        level = float(np.asarray(image).mean()) / 255
        return {"dark": 1 - level, "bright": level, "grey": 0.0}

    provider = LocalProvider(brightness, top_k=2)
    white, black = await provider.classify([png(solid((255, 255, 255))), png(solid((0, 0, 0)))])
    assert white.response["predictions"] == [{"label": "bright", "score": 1.0}, {"label": "dark", "score": 0.0}]
    assert labels(black) == ["dark", "bright"]
    assert provider.settings()["model"].endswith("brightness")


async def test_callable_on_float_arrays_gets_hwc_in_unit_range():
    seen = []

    def remember(pixels: np.ndarray):
        seen.append(pixels)
        return [("red channel", float(pixels[..., 0].mean()))]

    provider = LocalProvider(remember, input="array", model_name="probe", model_version="v7")
    [answer] = await provider.classify([png(solid((51, 102, 255), size=5))])
    assert seen[0].dtype == np.float32 and seen[0].shape == (5, 5, 3)
    np.testing.assert_allclose(seen[0][0, 0], [0.2, 0.4, 1.0], atol=1e-7)
    assert answer.response == {"predictions": [{"label": "red channel", "score": pytest.approx(0.2)}],
                               "modelVersion": "v7"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": MeanColour()}, "class_names"),
        ({"model": lambda im: [], "class_names": ["a"]}, "apply to torch models"),
        ({"model": 42}, "torch module, a callable or None"),
        ({"model": "no_such_package_xyz:thing"}, "cannot be imported"),
        ({"model": "just-a-name"}, "package.module:attribute"),
        ({"endpoint": "http://127.0.0.1:1"}, "in-process"),
        ({"top_k": 0}, "top_k"),
        ({"input": "tensor"}, "input must be"),
    ],
)
def test_bad_configuration_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LocalProvider(**kwargs)


@pytest.mark.parametrize("bad_output", [[("cat", 1.5)], [("cat", float("nan"))], ["cat"], 3])
async def test_callable_returning_bad_scores_is_a_config_error(bad_output):
    provider = LocalProvider(lambda image: bad_output)
    with pytest.raises(ConfigError):
        await provider.classify([png(solid((1, 2, 3)))])


async def test_model_given_as_import_string(tmp_path, monkeypatch):
    (tmp_path / "my_local_model.py").write_text(
        "def classify(image):\n    return [('square', 1.0 if image.width == image.height else 0.0)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    provider = LocalProvider("my_local_model:classify")
    [answer] = await provider.classify([png(solid((1, 2, 3)))])
    assert answer.response["predictions"] == [{"label": "square", "score": 1.0}]
    assert LocalProvider("efficientnet-lite0").model_name == "efficientnet-lite0"


async def test_too_many_images_is_a_bad_request():
    provider = LocalProvider(lambda image: [("x", 1.0)])
    with pytest.raises(PermanentProviderError) as info:
        await provider.classify([b""] * 65)
    assert info.value.kind == "bad_request"


def test_registry_builds_the_local_provider():
    from robust_api.providers import make_provider

    provider = make_provider("local", top_k=3)
    assert isinstance(provider, LocalProvider) and provider.top_k == 3


def test_uploads_decode_like_a_server_without_the_engine():
    from robust_api.providers.local import decode_upload

    clear = Image.new("RGBA", (4, 4), (200, 10, 10, 0))  # fully transparent red: composited on white
    buffer = io.BytesIO()
    clear.save(buffer, format="PNG")
    assert decode_upload(buffer.getvalue()).getpixel((0, 0)) == (255, 255, 255)
    grey = io.BytesIO()
    Image.new("L", (3, 2), 77).save(grey, format="PNG")
    decoded = decode_upload(grey.getvalue())
    assert decoded.mode == "RGB" and decoded.size == (3, 2) and decoded.getpixel((2, 1)) == (77, 77, 77)
    with pytest.raises(ValueError, match="pixel limit"):
        decode_upload(png(solid((1, 2, 3), size=20)), max_pixels=399)
    with pytest.raises(ValueError, match="not a readable image"):
        decode_upload(b"GIF89a garbage")
    with pytest.raises(ValueError, match="empty"):
        decode_upload(b"")
