"""Evaluation: PSNR, common noise across methods, certification bookkeeping, and a tiny end-to-end CLI run."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy.stats import norm
from typer.testing import CliRunner

from robust_api.denoisers import evaluation as ev
from robust_api.denoisers.cli import denoiser_app
from robust_api.denoisers.photos import crops, eval_images, heldout_photos, training_photos


def smooth_images(k: int = 2, size: int = 24) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(f"img{i}", np.kron(rng.random((3, 3, 3)), np.ones((size // 3, size // 3, 1))).astype(np.float32)) for i in range(k)]


def test_psnr_of_known_error():
    a = np.zeros((1, 4, 4, 3), dtype=np.float32)
    assert ev.psnr(a, a + 0.1)[0] == pytest.approx(20.0, abs=1e-4)


def test_constant_classifier_is_certified_everywhere_at_the_largest_radius_n_allows():
    sigma, n, alpha = 0.25, 50, 0.001
    results = ev.evaluate(
        [ev.identity_method()], smooth_images(), sigma, lambda b: np.zeros(len(b), dtype=int), n0=4, n=n, alpha=alpha
    )
    (r,) = results
    expected_radius = sigma * norm.ppf(alpha ** (1 / n))  # Clopper-Pearson lower bound for n successes out of n
    assert all(d["radius"] == pytest.approx(expected_radius, rel=1e-6) for d in r.per_image)
    assert r.agreement == 1.0 and r.abstained == 0.0
    assert r.certified[0.0] == 1.0 and r.certified[0.1] == 1.0 and r.certified[0.5] == 0.0


def test_every_method_sees_the_same_noisy_samples():
    seen: dict[str, list[np.ndarray]] = {"a": [], "b": []}

    def recorder(key):
        def fn(batch):
            seen[key].append(batch.copy())
            return batch
        return fn

    ev.evaluate([ev.Method("a", recorder("a")), ev.Method("b", recorder("b"))], smooth_images(1), 0.5,
                lambda b: np.zeros(len(b), dtype=int), n0=3, n=5, batch=4)
    assert len(seen["a"]) == len(seen["b"]) == 3
    for x, y in zip(seen["a"], seen["b"]):
        np.testing.assert_array_equal(x, y)


def test_tv_baseline_raises_psnr_on_smooth_images():
    none, tv = ev.evaluate([ev.identity_method(), ev.tv_method(0.25)], smooth_images(), 0.25,
                           lambda b: np.zeros(len(b), dtype=int), n0=2, n=4)
    assert tv.psnr_db > none.psnr_db + 3


def test_photo_sets_are_disjoint_and_crops_are_distinct():
    train = {n for n, _ in training_photos()}
    held = {n for n, _ in heldout_photos()}
    assert train and held and not train & held
    photo = heldout_photos()[0][1]
    cs = crops(photo, 6, size=32)
    assert all(c.shape == (32, 32, 3) for c in cs)
    assert len({c.tobytes() for c in cs}) == 6
    assert len(eval_images(2, size=16)) == 2 * len(held)


def test_cli_eval_runs_tiny_and_reports_every_method(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from robust_api.denoisers.architectures import build_denoiser
    from robust_api.denoisers.checkpoints import checkpoint_dict, save_checkpoint

    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, checkpoint_dict(build_denoiser("dncnn", depth=3, n_channels=4), "dncnn", {"depth": 3, "n_channels": 4}))
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(denoiser_app, [
        "eval", "--sigma", "0.25", "--denoiser", str(ckpt), "--size", "32", "--crops", "1",
        "--n0", "2", "--n", "4", "--batch", "8", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    for name in ("none", "tv(w=0.15)"):
        assert f"| {name} |" in result.output
    served = re.search(re.escape(f"| {ckpt} [") + r"(float32|bfloat16)\] \|", result.output)  # with its precision
    assert served
    payload = json.loads(out.read_text())
    assert [r["name"] for r in payload["results"]] == ["none", "tv(w=0.15)", f"{ckpt} [{served[1]}]"]
    assert payload["settings"]["n"] == 4


def test_true_class_scores_use_the_same_counts():
    """With true classes, a classifier that is always right about the clean image scores the same either way; one
    that is wrong about it is certified 'correct' against its own clean label but not against the truth."""
    images = smooth_images(3)
    constant = lambda b: np.zeros(len(b), dtype=int)  # noqa: E731
    right = [(name, img, 0) for name, img in images]
    wrong = [(name, img, 5) for name, img in images]
    kwargs = dict(n0=4, n=30, alpha=0.001)
    r_right = ev.evaluate([ev.identity_method()], right, 0.25, constant, **kwargs)[0]
    r_wrong = ev.evaluate([ev.identity_method()], wrong, 0.25, constant, **kwargs)[0]
    assert r_right.certified == r_right.certified_true and r_right.true_accuracy == 1.0 and r_right.clean_accuracy == 1.0
    assert r_wrong.certified == r_right.certified  # agreement with the clean label does not look at the truth
    assert all(v == 0.0 for v in r_wrong.certified_true.values()) and r_wrong.true_accuracy == 0.0
    assert "Against the true class" in ev.format_table([r_right])
    plain = ev.evaluate([ev.identity_method()], images, 0.25, constant, **kwargs)[0]
    assert plain.certified_true is None and "Against the true class" not in ev.format_table([plain])


def test_cli_eval_on_a_photo_folder_reports_true_class_accuracy(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from PIL import Image
    import skimage.data

    folder = tmp_path / "imagenet-samples"
    folder.mkdir()
    photo = Image.fromarray(skimage.data.chelsea()).resize((48, 32))
    for i in range(1000):  # one file per class, named by WordNet id: the file order is the class index
        path = folder / f"n{i:08d}_c{i}.JPEG"
        (photo.save(path) if i in (9, 19) else path.write_bytes(b""))
    result = CliRunner().invoke(denoiser_app, [
        "eval", "--photos", str(folder), "--split", "heldout", "--limit", "2", "--sigma", "0.25", "--size", "32",
        "--n0", "2", "--n", "4", "--no-baselines", "--denoiser", "ffdnet64-s0.25", "--precision", "float32",
    ])
    assert result.exit_code == 0, result.output
    assert "Against the true class" in result.output and "2 images (imagenet-samples split=heldout" in result.output
