"""robust-api: certified L2 robustness for image-labelling APIs and local models (denoised smoothing)."""
from __future__ import annotations

from robust_api.results import ABSTAIN, Certificate, Prediction

__version__ = "0.1.0"
__all__ = ["RobustAPI", "Certificate", "Prediction", "ABSTAIN", "__version__"]


def __getattr__(name: str):
    # RobustAPI pulls in torch and the engine; import it only when asked for.
    if name == "RobustAPI":
        from robust_api.api import RobustAPI

        return RobustAPI
    raise AttributeError(name)
