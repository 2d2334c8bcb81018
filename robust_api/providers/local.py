"""The in-process provider: your own model behind the same interface as the cloud APIs (no network, no cost).

`LocalProvider()` wraps, in order of precedence:
- `model=None` (default): the offline pretrained EfficientNet-Lite0 ImageNet classifier (`robust-api[demo]`);
- a `torch.nn.Module` plus `class_names` (and optional `preprocess`: PIL image -> CHW tensor; default RGB in
  [0, 1], unresized) — logits are turned into probabilities with softmax unless `softmax=False`;
- any callable `image -> scored labels`, where the image is an RGB PIL image (`input="pil"`, default) or a
  float32 HWC array in [0, 1] (`input="array"`), and scored labels are (name, score in [0, 1]) pairs or a
  {name: score} mapping, in any order;
- a string "package.module:attribute" naming one of the above (for the CLI);
- a string path to a `.pt`/`.pth` checkpoint written by `robust-api classifier train` (a CIFAR ResNet): served
  with the class names it stores, on 32x32 RGB [0, 1] tensors, model version `<arch>@<weights hash>`.
Responses look like {"predictions": [{"label", "score"}...top_k, best first], "modelVersion": str}.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib
import io
import math
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from robust_api.classifiers import DEFAULT_MODEL, TorchClassifier, imagenet_classifier
from robust_api.errors import ConfigError, PermanentProviderError, ProviderError
from robust_api.providers.base import Pricing, Provider, ProviderResponse
from robust_api.providers.limits import MAX_IMAGE_PIXELS, ImageLimits, MiB


def module_version(module: Any, name: str) -> str:
    """`name@<12 hex>`: sha256 over the module's state_dict (names and raw bytes), so new weights mean a new
    version (and a new cache key)."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return f"{name}@{digest.hexdigest()[:12]}"


def names_checkpoint(spec: str) -> bool:
    """Whether a model string names a checkpoint file (.pt/.pth, or any existing file) rather than a model name
    or 'package.module:attribute'."""
    return spec.endswith((".pt", ".pth")) or Path(spec).expanduser().is_file()


def _resolve(spec: str) -> Any:
    if spec == DEFAULT_MODEL:
        return None
    if names_checkpoint(spec):
        from robust_api.cifar_resnet import load_classifier  # imports torch: only when a checkpoint is asked for

        return load_classifier(spec)
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ConfigError(
            f"local model {spec!r}: use {DEFAULT_MODEL!r}, 'package.module:attribute' or a checkpoint path (.pt)"
        )
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"local model {spec!r} cannot be imported: {exc}") from None


def _scored(raw: Any, who: str) -> list[tuple[str, float]]:
    """Validate a callable's output: (name, score in [0, 1]) pairs or a mapping; ConfigError otherwise."""
    items = raw.items() if isinstance(raw, Mapping) else raw
    try:
        pairs = [(str(name), float(score)) for name, score in items]
    except (TypeError, ValueError):
        raise ConfigError(f"local model {who} must return (name, score) pairs or a {{name: score}} mapping") from None
    for name, score in pairs:
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise ConfigError(f"local model {who} returned score {score!r} for {name!r}; scores must lie in [0, 1]")
    return pairs


class LocalProvider(Provider):
    """A model run in this process, batched off the event loop; see the module docstring for what it wraps."""

    name = "local"
    max_batch = 64
    # In-process: only the decoder's own decompression-bomb guard applies.
    limits = ImageLimits(max_bytes=256 * MiB, max_side_px=65_000, max_pixels=MAX_IMAGE_PIXELS, formats=("PNG", "JPEG"))
    default_rate_per_s = 1_000_000.0  # no quota: the CPU is the only limit
    pricing = Pricing(0.0, "n/a", "runs on this machine")
    credential_hint = "none: the local provider runs in-process"

    def __init__(
        self,
        model: Any = None,
        class_names: Sequence[str] | None = None,
        *,
        preprocess: Callable[[Image.Image], Any] | None = None,
        softmax: bool = True,
        top_k: int = 5,
        input: str = "pil",
        model_name: str | None = None,
        model_version: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        if endpoint is not None:
            raise ConfigError("the local provider runs in-process; an endpoint does not apply")
        if input not in ("pil", "array"):
            raise ConfigError(f"input must be 'pil' or 'array', not {input!r}")
        if int(top_k) < 1:
            raise ConfigError("top_k must be at least 1")
        self.top_k = int(top_k)
        self._input = input
        self._lock = threading.Lock()  # one model run at a time: each already uses every core
        if isinstance(model, str):
            if model_name is None and names_checkpoint(model):
                model_name = Path(model).name
            model = _resolve(model)
        self._classifier = None
        self._callable: Callable[[Any], Any] | None = None
        if model is None:
            self._classifier = imagenet_classifier()
            self.model_name = model_name or DEFAULT_MODEL
            self.model_version = model_version or self._classifier.model_version
        elif isinstance(model, TorchClassifier):
            self._classifier = model
            self.model_name = model_name or type(model.module).__name__
            self.model_version = model_version or model.model_version
        elif _is_torch_module(model):
            if class_names is None:
                raise ConfigError("a torch model needs class_names (one name per output)")
            self.model_name = model_name or type(model).__name__
            self.model_version = model_version or module_version(model, self.model_name)
            self._classifier = TorchClassifier(
                model, class_names, preprocess=preprocess, softmax=softmax, model_version=self.model_version
            )
        elif callable(model):
            if class_names is not None or preprocess is not None:
                raise ConfigError("class_names and preprocess apply to torch models, not to callables")
            self._callable = model
            self.model_name = model_name or getattr(model, "__qualname__", type(model).__name__)
            self.model_version = model_version or str(getattr(model, "model_version", self.model_name))
        else:
            raise ConfigError(f"local model must be a torch module, a callable or None, not {type(model).__name__}")

    def settings(self) -> dict[str, Any]:
        """Model name, version (weights hash for torch modules) and top_k: anything that can change a label."""
        return {"model": self.model_name, "model_version": self.model_version, "top_k": self.top_k}

    async def classify(self, images: Sequence[bytes]) -> list[ProviderResponse | ProviderError]:
        """Decode and label up to `max_batch` images in a worker thread; undecodable bytes give that entry a
        PermanentProviderError(kind="invalid_image"). Exceptions raised by a user model propagate unchanged."""
        if len(images) > self.max_batch:
            raise PermanentProviderError(self.name, "bad_request", f"{len(images)} images > max_batch {self.max_batch}")
        return await asyncio.to_thread(self._classify_sync, list(images))

    def respond(self, images: Sequence[Image.Image]) -> list[ProviderResponse]:
        """Label decoded RGB images in the calling thread, any number at once: the responses `classify` gives
        for their PNG encodings (PNG is lossless), without the encode/decode round trip. Full-access
        certification (robust_api.full_access) counts labels this way. Exceptions of a user model propagate."""
        out: list[ProviderResponse] = []
        for start in range(0, len(images), self.max_batch):
            with self._lock:
                labels = self._label(list(images[start : start + self.max_batch]))
            out += [self._response(scored) for scored in labels]
        return out

    # -- worker-thread side --------------------------------------------------------------------------
    def _classify_sync(self, images: list[bytes]) -> list[ProviderResponse | ProviderError]:
        results: list[ProviderResponse | ProviderError | None] = [None] * len(images)
        decoded: list[tuple[int, Image.Image]] = []
        for i, data in enumerate(images):
            try:
                decoded.append((i, decode_upload(data, max_pixels=self.limits.max_pixels or MAX_IMAGE_PIXELS)))
            except ValueError as exc:
                results[i] = PermanentProviderError(self.name, "invalid_image", str(exc))
        if decoded:
            with self._lock:
                labels = self._label([image for _, image in decoded])
            for (i, _), scored in zip(decoded, labels):
                results[i] = self._response(scored)
        return results  # type: ignore[return-value]

    def _label(self, images: list[Image.Image]) -> list[list[tuple[str, float]]]:
        if self._classifier is not None:
            return self._classifier.classify_batch(images, self.top_k)
        assert self._callable is not None
        out = []
        for image in images:
            arg = np.asarray(image, dtype=np.float32) / np.float32(255.0) if self._input == "array" else image
            pairs = _scored(self._callable(arg), self.model_name)
            pairs.sort(key=lambda pair: -pair[1])  # stable: ties keep the model's own order
            out.append(pairs[: self.top_k])
        return out

    def _response(self, scored: list[tuple[str, float]]) -> ProviderResponse:
        predictions = [{"label": name, "score": float(score)} for name, score in scored]
        return ProviderResponse(
            {"predictions": predictions, "modelVersion": self.model_version}, model_version=self.model_version
        )


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def decode_upload(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Uploaded bytes -> 8-bit RGB PIL image, decoded as a server would; ValueError saying why for bytes that
    are not a readable image or have more than `max_pixels` pixels.

    For the PNG/JPEG RGB bytes the engine sends this is plain decoding. Other uploads get the conversions the
    engine's own loader makes: first frame, EXIF orientation applied, alpha (or palette transparency)
    composited on white, anything else converted to RGB by Pillow.
    """
    if not data:
        raise ValueError("empty upload (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own guard applies below
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise ValueError(f"{image.width}x{image.height} exceeds the {max_pixels:,} pixel limit")
            image.seek(0)
            image.load()
    except ValueError:
        raise
    except Exception as exc:  # Pillow raises many types for bytes that are not a readable image
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


LOCAL_LIMITS = LocalProvider.limits  # kept importable under its old name (tests use it)
