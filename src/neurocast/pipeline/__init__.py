"""Top floor, between ``cli`` and the science: whole studies, from BIDS to reports.

``neurocast.pipeline`` sits above ``progress``, ``anomaly`` and ``registration`` (whose
dataset-level workflows it runs, one step after the other) and ``report`` (whose pages it
writes), and below ``cli``, which only parses options and calls it. Nothing below imports it.

- :func:`run_study`: the steps (preprocess, register, forecast, qa: a pluggable registry,
  :data:`STEPS`) over the participants of a BIDS dataset, in-process or on a Dask cluster, then
  the reports; the ``group`` level runs the cohort and survival analyses.
- :func:`demo`: simulate a small cohort and run everything on it.

Example:
    >>> from neurocast.pipeline import STEPS
    >>> list(STEPS)
    ['preprocess', 'register', 'forecast', 'qa']
"""

from neurocast.pipeline.demo import DemoResult, demo, run_demo
from neurocast.pipeline.steps import (
    STEPS,
    StepUnavailableError,
    StudyContext,
    add_step,
    check_steps,
    step_available,
)
from neurocast.pipeline.study import DEFAULT_STEPS, RunSummary, machine_workers, run_study

__all__ = [
    "DEFAULT_STEPS",
    "STEPS",
    "DemoResult",
    "RunSummary",
    "StepUnavailableError",
    "StudyContext",
    "add_step",
    "check_steps",
    "demo",
    "machine_workers",
    "run_demo",
    "run_study",
    "step_available",
]
