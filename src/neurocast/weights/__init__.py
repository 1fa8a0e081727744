"""Shipped model weights (safetensors) with their model cards (JSON).

============================  ==================================================================
``progress-demo/``            the demo progression model (:mod:`neurocast.progress`), trained on a
                              simulated cohort only; see its ``model_card.json`` for the command
``anomaly-demo/``             the demo anomaly detector (:mod:`neurocast.anomaly`), trained on
                              simulated healthy visits and three IXI adults, calibrated at 5 %
                              false positives; its model card holds the commands and figures
============================  ==================================================================

Nothing is downloaded: a missing model is an error that says how to train one.

Example:
    >>> from neurocast.weights import shipped_model_dir
    >>> shipped_model_dir("progress-demo").name
    'progress-demo'
"""

from __future__ import annotations

from pathlib import Path


def weights_dir() -> Path:
    """The folder of the shipped weights (inside the installed package)."""
    return Path(__file__).resolve().parent


def shipped_model_dir(name: str) -> Path:
    """The folder of the shipped model ``name`` (it may not exist in a source checkout)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid model name {name!r}")
    return weights_dir() / name


__all__ = ["shipped_model_dir", "weights_dir"]
