"""The README's first command: certify bundled real photos against a local emulator, with and without a
shipped denoiser, replay the query logs offline, and draw what happened.

Photos: held-out photos that ship offline inside scikit-image / scikit-learn / matplotlib (see
robust_api.denoisers.photos for each one's licence; the shipped denoisers never trained on them), as 224x224
crops. The emulator speaks the provider's real wire format and is backed by the offline pretrained
EfficientNet-Lite0 ImageNet classifier; the adapter talks to it through the provider's real SDK (boto3 for
AWS Rekognition). No credentials, no network.

Speed: by default the demo certifies in sequential mode (robust_api.sequential) with a target radius: an
image stops as soon as the target is certified, or as soon as a certificate is out of reach, and the
certificate still holds at alpha. The fixed protocol (N0 + N calls per image) is what it is compared with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from robust_api.modes import CertifyParams
from robust_api.results import Certificate

# The demo's photos, in order: crops (robust_api.denoisers.photos.crops, index after '#') of held-out photos
# that the emulator's classifier labels with a plain ImageNet class at top-1 probability >= 0.5 on the clean
# crop. Among those, picked by measuring how often the label survives sigma = 0.25 noise (30 draws each,
# Lite0 as behind the emulator) to show every case a newcomer should see: labels the noise destroys and the
# shipped denoiser restores (the two cat crops: ~0% -> ~97%), a label that survives the noise without help
# (the espresso: 100% both ways) and one the denoiser does not rescue (Grace Hopper's gown: 0% -> ~50%).
# A showcase, not a benchmark (`robust-api denoiser eval` measures the held-out set). More images continue
# with the other held-out crops, then the training photos.
DEMO_PHOTOS: tuple[str, ...] = ("chelsea#1", "coffee#0", "chelsea#8", "grace_hopper#1")

# The sequential target radius as a multiple of sigma when none is given: 1.2 sigma (0.3 at sigma 0.25) is
# reached by unanimous samples after ~63 calls at alpha 0.001, half the fixed protocol's 121.
TARGET_PER_SIGMA = 1.2

API_NAMES = {"aws": "AWS Rekognition", "azure": "Azure AI Vision", "google": "Google Cloud Vision",
             "clarifai": "Clarifai"}


@dataclass
class DemoRun:
    """One certification run of the demo: without a denoiser (`denoiser` None) or with one."""

    denoiser: str | None
    certificates: list[Certificate]
    billable_calls: int
    cache_hits: int
    replay_matches: bool  # every certificate came back from the log with the same label and radius
    tsv_matches: bool  # the replayed results TSV equals the online one byte for byte
    log: Path
    tsv: Path
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return "no denoiser" if self.denoiser is None else f"denoiser {self.denoiser}"


@dataclass
class DemoResult:
    """Everything the demo did: its settings, the runs, and the pictures it drew."""

    params: CertifyParams
    images: list[tuple[str, np.ndarray]]
    runs: list[DemoRun]
    fixed_calls_per_image: int
    api: str = "aws"
    pictures: dict[str, Path] = field(default_factory=dict)

    @property
    def replay_ok(self) -> bool:
        return all(run.replay_matches and run.tsv_matches for run in self.runs)

    @property
    def fixed_calls(self) -> int:
        """What the fixed protocol would have paid for every run of the demo."""
        return self.fixed_calls_per_image * len(self.images) * len(self.runs)


def _catalogue() -> list[tuple[str, str, int]]:
    """(name, photo, crop index) of every photo the demo may use, in the order it uses them."""
    from robust_api.denoisers.photos import PHOTOS

    held = [p.name for p in PHOTOS if p.heldout]
    order = [(entry, *_split(entry)) for entry in DEMO_PHOTOS]
    seen = {name for name, _, _ in order}
    for i in range(CROPS_PER_PHOTO):  # then the other held-out crops, photo by photo at each crop position
        order += [(f"{photo}#{i}", photo, i) for photo in held if f"{photo}#{i}" not in seen]
    return order + [(p.name, p.name, 0) for p in PHOTOS if not p.heldout]


CROPS_PER_PHOTO = 12  # robust_api.denoisers.photos.crops gives up to 12 crops of a photo


def _split(entry: str) -> tuple[str, int]:
    photo, _, index = entry.partition("#")
    return photo, int(index or 0)


def check_count(count: int) -> None:
    """ConfigError unless 1 <= count <= the number of photos the demo ships."""
    from robust_api.errors import ConfigError

    available = len(_catalogue())
    if not 1 <= count <= available:
        raise ConfigError(f"the demo has {available} bundled photos; ask for 1 to {available} (--images)")


def demo_images(count: int = 4, size: int = 224) -> list[tuple[str, np.ndarray]]:
    """The first `count` demo photos (DEMO_PHOTOS, then other held-out crops, then training photos) as
    float32 HWC arrays in [0,1], size x size. ConfigError when more are asked for than ship."""
    from robust_api.denoisers.photos import crops, load_photo

    check_count(count)
    return [(name, crops(load_photo(photo), index + 1, size)[index]) for name, photo, index in _catalogue()[:count]]


def pick_denoiser(sigma: float) -> str | None:
    """The shipped denoiser for this sigma (Stab+MSE preferred over MSE), or None when none ships."""
    from robust_api.denoisers.registry import list_denoisers

    matching = [w for w in list_denoisers() if abs(float(w.meta.get("sigma", -1.0)) - sigma) < 1e-9]
    matching.sort(key=lambda w: 0 if "stab" in str(w.meta.get("objective", "")) else 1)
    return matching[0].name if matching else None


def demo_params(sigma: float = 0.25, alpha: float = 0.001, mode: str = "sequential", n0: int = 20, n: int = 100,
                max_queries: int | None = None, target_radius: float | None = None) -> CertifyParams:
    """The demo's certification settings. Sequential mode: budget `max_queries` (default n0 + n, what the fixed
    protocol spends) and target radius (default TARGET_PER_SIGMA * sigma). ConfigError when invalid."""
    if mode == "sequential":
        return CertifyParams(sigma=sigma, n0=n0, n=n, alpha=alpha, mode=mode,
                             max_queries=max_queries if max_queries is not None else n0 + n,
                             target_radius=target_radius if target_radius is not None else round(TARGET_PER_SIGMA * sigma, 6))
    return CertifyParams(sigma=sigma, n0=n0, n=n, alpha=alpha, mode=mode)


def _demo_options(api: str) -> dict:
    # Rekognition drops labels under MinConfidence (default 55); the emulator's ImageNet probabilities are
    # lower than Rekognition's confidences, so the demo asks for every label, as a user may (MinConfidence=1).
    return {"min_confidence": 1.0} if api == "aws" else {}


# progress(run, images_done, images_total, calls_paid, cache_hits): counts are over the whole demo (both runs),
# so they only grow; `run` is the label of the run the image belongs to.
DemoProgress = Callable[[str, int, int, int, int], None]


def run_demo(out_dir: Path, api: str = "aws", params: CertifyParams | None = None, count: int = 4,
             denoiser: str | None = "auto", progress: DemoProgress | None = None,
             on_run: Callable[[str], None] | None = None) -> DemoResult:
    """Certify `count` demo photos with no denoiser and with `denoiser` ('auto' = the shipped one for sigma);
    each run writes out_dir/<api>-<settings_tag>-<run>.jsonl (the query log, also a cache: a rerun with the same
    settings pays nothing twice) and .tsv (results), and is replayed offline into .replayed.tsv for comparison. `on_run(label)` is called as
    each run starts. The pictures are drawn by `write_pictures`."""
    import time

    from robust_api.images import load_image
    from robust_api.planner import calls_per_image
    from robust_api.run import RunConfig, run_certification

    params = params or demo_params()
    out_dir.mkdir(parents=True, exist_ok=True)
    photos = demo_images(count)
    images = [load_image(arr, name=name) for name, arr in photos]
    chosen = pick_denoiser(params.sigma) if denoiser == "auto" else denoiser
    specs: list[str | None] = [None] + ([chosen] if chosen else [])
    total = len(images) * len(specs)
    paid = hits = done = 0
    runs = []
    for spec in specs:
        label = "no denoiser" if spec is None else f"denoiser {spec}"
        if on_run is not None:
            on_run(label)
        tag = f"{api}-{settings_tag(params)}-{'no-denoiser' if spec is None else spec}"
        log, tsv = out_dir / f"{tag}.jsonl", out_dir / f"{tag}.tsv"
        config = RunConfig(api=api, params=params, emulator=True, denoiser=spec, log=log, out=tsv,
                           provider_options=_demo_options(api))
        base = (paid, hits, done)

        def on_progress(event, stats, images_done, label=label, base=base) -> None:
            if event == "image" and progress is not None:
                progress(label, base[2] + images_done, total, base[0] + stats.billable_calls, base[1] + stats.cache_hits)

        start = time.perf_counter()
        result = run_certification(images, config, progress=on_progress)
        seconds = time.perf_counter() - start
        paid += result.stats.billable_calls
        hits += result.stats.cache_hits
        done += len(images)
        matches, tsv_matches = _check_replay(log, tsv, result.certificates, params)
        runs.append(DemoRun(spec, result.certificates, result.stats.billable_calls, result.stats.cache_hits,
                            matches, tsv_matches, log, tsv, seconds))
    fixed = calls_per_image(params.n, "fixed", params.n0)
    return DemoResult(params, photos, runs, fixed, api)


def settings_tag(params: CertifyParams) -> str:
    """The part of a log's file name that keeps runs apart whose logs must not mix: a sequential log holds its
    plan (budget, target, alpha), and a rerun with another plan would find answers logged under the first one.
    Fixed and clean logs can be shared (replay recounts the first n samples at any alpha); sigmas are kept
    apart by replay itself."""
    if params.mode == "sequential":
        return f"sequential-q{params.max_queries}-r{params.target_radius:g}-a{params.alpha:g}"
    return params.mode


def _check_replay(log: Path, tsv: Path, online: Sequence[Certificate], params: CertifyParams) -> tuple[bool, bool]:
    """Replay `log` offline (no calls) and compare with this run's certificates: (every certificate has the same
    label and radius, the replayed results TSV of these images equals the online TSV byte for byte)."""
    from robust_api.replay import replay
    from robust_api.results import write_results_tsv

    fixed_n = params.mode in ("fixed", "clean")  # a log may hold more samples from an earlier, larger run
    replayed = replay([log], sigma=params.sigma, alpha=params.alpha, mode="auto",
                      n0=params.n0 if params.mode == "fixed" else None, n=params.n if fixed_n else None)
    by_image = {c.image: c for c in replayed}
    ours = [by_image.get(c.image) for c in online]
    matches = all(
        r is not None and r.label == c.label and abs(r.radius_l2 - c.radius_l2) < 1e-12 for r, c in zip(ours, online)
    )
    replayed_tsv = tsv.with_suffix(".replayed.tsv")
    if matches:
        write_results_tsv(replayed_tsv, ours)  # type: ignore[arg-type]
    return matches, matches and replayed_tsv.read_bytes() == tsv.read_bytes()


def gain_order(result: DemoResult) -> list[int]:
    """Image positions, largest denoiser gain first: certified radius with the denoiser minus without
    (abstain or a wrong label counts as 0), ties in demo order."""
    if len(result.runs) < 2:
        return list(range(len(result.images)))
    plain, denoised = result.runs[0].certificates, result.runs[-1].certificates

    def radius(c: Certificate) -> float:
        return c.radius_l2 if c.correct else 0.0

    gains = [radius(d) - radius(p) for p, d in zip(plain, denoised)]
    return sorted(range(len(gains)), key=lambda i: (-gains[i], i))


def example_picks(result: DemoResult, count: int = 2) -> list[int]:
    """`count` image positions for the examples picture: by denoiser gain (gain_order), one crop per photo
    first (crops of one photo look alike), then the rest."""
    order = gain_order(result)
    picks: list[int] = []
    photos: set[str] = set()
    for i in order:
        photo = result.images[i][0].partition("#")[0]
        if photo not in photos:
            picks.append(i)
            photos.add(photo)
    picks += [i for i in order if i not in picks]
    return picks[: max(1, count)]


def write_pictures(result: DemoResult, out_dir: Path, examples: int = 2) -> dict[str, Path]:
    """Draw out_dir/certified_accuracy.png (both runs' curves, the `report` command's style) and
    out_dir/examples.png (clean | noisy | denoised for the `examples` photos the denoiser helped most, with
    the emulator classifier's label under each panel). Returns {"plot": path, "examples": path}."""
    from robust_api.report import Run, plot_runs

    sigma = result.params.sigma
    runs = [Run.from_certificates(_legend(run), run.certificates) for run in result.runs]
    api = API_NAMES.get(result.api, result.api)
    title = f"{len(result.images)} real photos, {api} emulator, σ = {sigma:g}, α = {result.params.alpha:g}"
    pictures = {"plot": plot_runs(runs, out_dir / "certified_accuracy.png", title=title)}
    spec = next((run.denoiser for run in result.runs if run.denoiser is not None), None)
    pictures["examples"] = _examples(result, out_dir / "examples.png", spec, examples)
    result.pictures = pictures
    return pictures


def _legend(run: DemoRun) -> str:
    return "no denoiser" if run.denoiser is None else describe_denoiser(run.denoiser)


def describe_denoiser(name: str) -> str:
    """A shipped denoiser's name with its training objective, e.g. 'ffdnet64-s0.25-stab (Stab+MSE)'."""
    from robust_api.denoisers.registry import get_weights

    entry = get_weights(name)
    objective = entry.objective.upper().replace("STAB", "Stab") if entry is not None and entry.objective else ""
    return name + (f" ({objective})" if objective else "")


def _examples(result: DemoResult, path: Path, denoiser: str | None, count: int) -> Path:
    from robust_api.classifiers import imagenet_names
    from robust_api.denoisers.show import denoiser_grid
    from robust_api.denoisers.surrogates import load_surrogate

    picks = [result.images[i] for i in example_picks(result, count)]
    sigma = result.params.sigma
    grid = denoiser_grid(picks, sigma, [denoiser] if denoiser else [], load_surrogate("efficientnet-lite0"),
                         imagenet_names(), seed=result.params.seed)
    # the grid's own title names every setting; the demo's fits the figure's width
    grid.figure.suptitle(f"σ = {sigma:g}: top-1 of Lite0 (the emulator's network), probability, PSNR", fontsize=10)
    return grid.save(path)
