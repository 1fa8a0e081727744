"""The steps a study run is made of, in one registry: name -> function of a :class:`StudyContext`.

Each step runs one dataset-level workflow of a lower floor (``registration``, ``progress``,
``anomaly``) over the selected participants and returns its
:class:`~neurocast.io.batch.BatchSummary`. The workflow modules are imported inside the step, so a
step whose module is not installed (yet) fails with :class:`StepUnavailableError`, naming the module,
instead of breaking the import of the whole package. New steps are plugged in with
:func:`add_step`.

Example:
    >>> from neurocast.pipeline.steps import STEPS, step_available
    >>> list(STEPS)[:2]
    ['preprocess', 'register']
    >>> step_available("preprocess")
    True
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurocast.errors import NeurocastError
from neurocast.io.batch import BatchSummary

DEFAULT_HORIZONS: tuple[float, ...] = (1.0, 2.0, 5.0)
"""Forecast horizons (years) of a study run."""
DEFAULT_N_SAMPLES = 8
"""Forecast samples per participant (their spread is the uncertainty)."""


class StepUnavailableError(NeurocastError):
    """A step was asked for whose workflow module is not part of this installation."""

    exit_code = 2  # a usage problem: the run asks for something this install cannot do


@dataclass
class StudyContext:
    """What every step of a study run gets: the dataset, the selection and the settings.

    ``n_workers`` and ``scheduler`` are what a step passes on to its workflow: the study has
    already started its Dask cluster (``scheduler`` is its address) or runs in-process
    (``n_workers=1``, ``scheduler=None``).
    """

    bids_dir: Path
    output_dir: Path
    participant_label: list[str] | None = None
    session_label: list[str] | None = None
    model: Path | None = None
    anomaly_model: Path | None = None
    horizons: tuple[float, ...] = DEFAULT_HORIZONS
    n_samples: int = DEFAULT_N_SAMPLES
    seed: int = 0
    work_dir: Path | None = None
    n_workers: int = 1
    scheduler: str | None = None
    progress: bool = True
    force: bool = False


StepFn = Callable[[StudyContext], BatchSummary]

STEP_MODULES: dict[str, str] = {
    "preprocess": "neurocast.registration.workflows",
    "register": "neurocast.registration.workflows",
    "forecast": "neurocast.progress.workflow",
    "qa": "neurocast.anomaly.workflow",
}
"""The module each built-in step runs (checked by :func:`step_available`)."""


def _workflow(step: str) -> Any:
    name = STEP_MODULES[step]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            raise StepUnavailableError(
                f"step {step!r} is not available in this installation: module {name} is missing"
            ) from exc
        raise


def _common(ctx: StudyContext) -> dict[str, Any]:
    return {
        "participant_label": ctx.participant_label,
        "session_label": ctx.session_label,
        "seed": ctx.seed,
        "n_workers": ctx.n_workers,
        "scheduler": ctx.scheduler,
        "progress": ctx.progress,
        "force": ctx.force,
    }


def run_preprocess(ctx: StudyContext) -> BatchSummary:
    """``preprocess``: :func:`neurocast.registration.workflows.preprocess_dataset`."""
    wf = _workflow("preprocess")
    summary, _qc = wf.preprocess_dataset(
        ctx.bids_dir, ctx.output_dir, work_dir=ctx.work_dir, **_common(ctx)
    )
    return summary


def run_register(ctx: StudyContext) -> BatchSummary:
    """``register``: :func:`neurocast.registration.workflows.register_dataset`."""
    wf = _workflow("register")
    return wf.register_dataset(ctx.bids_dir, ctx.output_dir, work_dir=ctx.work_dir, **_common(ctx))


def _optional(fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments ``fn`` accepts among optional extras (e.g. ``work_dir``)."""
    import inspect

    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def run_forecast(ctx: StudyContext) -> BatchSummary:
    """``forecast``: ``neurocast.progress.workflow.forecast_dataset`` (reads registration outputs)."""
    wf = _workflow("forecast")
    return wf.forecast_dataset(
        ctx.bids_dir, ctx.output_dir, model=ctx.model, horizons=tuple(ctx.horizons),
        n_samples=ctx.n_samples, **_common(ctx),
        **_optional(wf.forecast_dataset, work_dir=ctx.work_dir),
    )  # fmt: skip


def run_qa(ctx: StudyContext) -> BatchSummary:
    """``qa``: ``neurocast.anomaly.workflow.qa_dataset`` (anomaly maps, scores, flags)."""
    wf = _workflow("qa")
    return wf.qa_dataset(
        ctx.bids_dir, ctx.output_dir, model=ctx.anomaly_model, **_common(ctx),
        **_optional(wf.qa_dataset, work_dir=ctx.work_dir),
    )  # fmt: skip


STEPS: dict[str, StepFn] = {
    "preprocess": run_preprocess,
    "register": run_register,
    "forecast": run_forecast,
    "qa": run_qa,
}
"""The step registry, in the order a study runs them."""


def add_step(name: str, fn: StepFn, *, module: str | None = None) -> None:
    """Add (or replace) a step: ``fn(ctx) -> BatchSummary``; ``module`` is what it needs."""
    STEPS[name] = fn
    if module is not None:
        STEP_MODULES[name] = module


def check_steps(steps: Sequence[str] | str) -> list[str]:
    """Validate step names (a sequence, or a comma-separated string); returns them in run order.

    Raises:
        ValueError: an unknown or repeated step, or none at all.
    """
    names = [s.strip() for s in steps.split(",")] if isinstance(steps, str) else list(steps)
    names = [s for s in names if s]
    unknown = [s for s in names if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; choose among {list(STEPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a step is named twice in {names}")
    if not names:
        raise ValueError(f"no step given; choose among {list(STEPS)}")
    order = list(STEPS)
    return sorted(names, key=order.index)


def step_available(name: str) -> bool:
    """Whether the module a step runs is installed (without importing it)."""
    module = STEP_MODULES.get(name)
    if module is None:
        return name in STEPS
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


SHIPPED_MODELS: dict[str, str] = {"forecast": "progress-demo", "qa": "anomaly-demo"}
"""The folder (in ``neurocast/weights``) of the model each step ships with."""


def shipped_model(step: str) -> Path | None:
    """The folder of the model shipped in ``neurocast/weights`` for a step, if there is one
    (a folder named in :data:`SHIPPED_MODELS` that holds a readable ``model_card.json``)."""
    from neurocast.weights import shipped_model_dir

    name = SHIPPED_MODELS.get(step)
    if name is None:
        return None
    folder = shipped_model_dir(name)
    try:
        json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return folder


__all__ = [
    "DEFAULT_HORIZONS",
    "DEFAULT_N_SAMPLES",
    "STEPS",
    "STEP_MODULES",
    "StepFn",
    "StepUnavailableError",
    "StudyContext",
    "add_step",
    "check_steps",
    "shipped_model",
    "step_available",
]
