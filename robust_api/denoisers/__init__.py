"""Denoisers for denoised smoothing: reference-compatible DnCNN / MemNet, checkpoints, training, shipped weights.

Public surface:
    load_denoiser(name_or_path, device=None) -> nn.Module     shipped name (sha256-verified), tv / tv:W,
                                                               diffusion:PATH (a pretrained DDPM, one step), or a path
    denoiser_identity(module_or_name) -> {"name", "sha256"}    what the query logs record
    list_denoisers() -> [DenoiserWeights]                      the shipped weights with their metadata
    optimize_for_inference(module) -> nn.Module                BatchNorm folded + channels_last, same outputs
    load_checkpoint(path) / build_denoiser(arch, **config)     lower-level building blocks
"""
from __future__ import annotations

from robust_api.denoisers.architectures import ARCHITECTURES, REFERENCE_ARCHITECTURES, build_denoiser
from robust_api.denoisers.checkpoints import LoadedCheckpoint, load_checkpoint, save_checkpoint
from robust_api.denoisers.dncnn import DnCNN
from robust_api.denoisers.memnet import MemNet
from robust_api.denoisers.registry import (
    DenoiserWeights,
    denoiser_identity,
    get_weights,
    list_denoisers,
    load_denoiser,
    shipped_denoisers,
)
from robust_api.denoisers.speed import denoise_numpy, optimize_for_inference

__all__ = [
    "ARCHITECTURES", "REFERENCE_ARCHITECTURES", "DenoiserWeights", "DnCNN", "LoadedCheckpoint", "MemNet",
    "build_denoiser", "denoise_numpy", "denoiser_identity", "get_weights", "list_denoisers", "load_checkpoint",
    "load_denoiser", "optimize_for_inference", "save_checkpoint", "shipped_denoisers",
]
