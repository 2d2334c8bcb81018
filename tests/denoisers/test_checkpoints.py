"""Reference-format checkpoints load unchanged (with and without DataParallel prefixes); non-checkpoints fail clearly."""
from __future__ import annotations

import io
import os

import pytest
import torch
from torch import nn

from robust_api.denoisers.architectures import build_denoiser
from robust_api.denoisers.checkpoints import load_checkpoint, read_checkpoint_dict
from robust_api.errors import CheckpointError


def reference_dncnn_shapes(depth: int, ch: int, img: int = 3) -> dict[str, tuple[int, ...]]:
    """The reference DnCNN's state_dict layout, written out from its layer list (conv+relu, (conv,bn,relu)*, conv)."""
    shapes: dict[str, tuple[int, ...]] = {"dncnn.0.weight": (ch, img, 3, 3), "dncnn.0.bias": (ch,)}
    for i in range(depth - 2):
        conv, bn = 2 + 3 * i, 3 + 3 * i
        shapes[f"dncnn.{conv}.weight"] = (ch, ch, 3, 3)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"dncnn.{bn}.{name}"] = (ch,)
        shapes[f"dncnn.{bn}.num_batches_tracked"] = ()
    shapes[f"dncnn.{2 + 3 * (depth - 2)}.weight"] = (img, ch, 3, 3)
    return shapes


def _bn_relu_conv(prefix: str, cin: int, cout: int, k: int) -> dict[str, tuple[int, ...]]:
    out = {f"{prefix}.bn.{n}": (cin,) for n in ("weight", "bias", "running_mean", "running_var")}
    out[f"{prefix}.bn.num_batches_tracked"] = ()
    out[f"{prefix}.conv.weight"] = (cout, cin, k, k)
    return out


def reference_memnet_shapes(ch: int = 64, mem: int = 3, res: int = 6, img: int = 3) -> dict[str, tuple[int, ...]]:
    shapes = {**_bn_relu_conv("feature_extractor", img, ch, 3), **_bn_relu_conv("reconstructor", ch, img, 3)}
    for m in range(mem):
        for r in range(res):
            for half in ("relu_conv1", "relu_conv2"):
                shapes.update(_bn_relu_conv(f"dense_memory.{m}.recursive_unit.{r}.{half}", ch, ch, 3))
        shapes.update(_bn_relu_conv(f"dense_memory.{m}.gate_unit", (res + m + 1) * ch, ch, 1))
    return shapes


REFERENCE_SHAPES = {
    "cifar_dncnn": lambda: reference_dncnn_shapes(17, 64),
    "cifar_dncnn_wide": lambda: reference_dncnn_shapes(17, 128),
    "imagenet_dncnn": lambda: reference_dncnn_shapes(17, 64),
    "memnet": reference_memnet_shapes,
    "imagenet_memnet": reference_memnet_shapes,
}


def reference_checkpoint(arch: str, data_parallel: bool, seed: int = 0) -> dict:
    """A checkpoint exactly as the reference's train_denoiser.py saves it, with random weights."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in REFERENCE_SHAPES[arch]().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1234)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    if data_parallel:
        state = {"module." + k: v for k, v in state.items()}
    params = [nn.Parameter(v.clone().float()) for k, v in state.items() if "running" not in k and "num_batches" not in k]
    opt = torch.optim.Adam(params, lr=1e-3)
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    return {"epoch": 90, "arch": arch, "state_dict": state, "optimizer": opt.state_dict()}


@pytest.mark.parametrize(
    "arch,data_parallel",
    [("cifar_dncnn", False), ("cifar_dncnn_wide", False), ("memnet", False),
     ("imagenet_dncnn", True), ("imagenet_memnet", True), ("cifar_dncnn", True), ("imagenet_dncnn", False)],
)
def test_reference_checkpoint_loads_key_for_key_and_runs_on_cpu(tmp_path, arch, data_parallel):
    ckpt = reference_checkpoint(arch, data_parallel)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(ckpt, path)
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.arch == arch and loaded.epoch == 90
    ours = loaded.module.state_dict()
    expected = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    assert set(ours) == set(expected)
    for key, value in expected.items():
        assert torch.equal(ours[key], value), key
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        y = loaded.module(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0  # eval-mode output is a valid image


def test_fresh_architectures_have_exactly_the_reference_layout():
    for arch, shapes in REFERENCE_SHAPES.items():
        sd = build_denoiser(arch).state_dict()
        assert {k: tuple(v.shape) for k, v in sd.items()} == shapes(), arch


def test_dncnn_is_residual_and_starts_as_identity():
    net = build_denoiser("dncnn", depth=4, n_channels=8).eval()
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(net(x), x)  # zero-initialised last layer: predicts no noise
        net.dncnn[-1].weight.fill_(0.01)
        assert torch.allclose(net(x), (x - net.dncnn(x)).clamp(0, 1))


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_checkpoint(path)


def test_missing_file_and_directory_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_dict_without_arch_is_rejected(tmp_path):
    path = tmp_path / "classifier.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="no 'arch'"):
        load_checkpoint(path)


def test_unknown_arch_is_rejected(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"arch": "cifar_resnet110", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="unknown denoiser architecture 'cifar_resnet110'"):
        load_checkpoint(path)


def test_mismatched_keys_are_rejected(tmp_path):
    ckpt = reference_checkpoint("cifar_dncnn", False)
    ckpt["arch"] = "cifar_dncnn_wide"  # 64-channel weights under the 128-channel name
    path = tmp_path / "wrong.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="do not match architecture 'cifar_dncnn_wide'"):
        load_checkpoint(path)
    del ckpt["state_dict"]["dncnn.0.bias"]
    ckpt["arch"] = "cifar_dncnn"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


class _Opaque:
    pass


def test_pickled_objects_are_refused_unless_trusted(tmp_path):
    ckpt = reference_checkpoint("cifar_dncnn", False)
    ckpt["extra"] = _Opaque()
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    with pytest.raises(CheckpointError, match="trusted=True"):
        read_checkpoint_dict(buf.getvalue())
    assert read_checkpoint_dict(buf.getvalue(), trusted=True)["arch"] == "cifar_dncnn"


def test_top_level_tensor_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not a denoiser checkpoint"):
        load_checkpoint(path)
