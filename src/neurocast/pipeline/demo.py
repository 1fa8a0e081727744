"""``neurocast demo``: simulate a small cohort, run every step on it, write the reports.

:func:`demo` writes ``OUTPUT_DIR/bids`` (a simulated BIDS dataset with its ground truth in
``bids/derivatives/neurocast-truth``) and ``OUTPUT_DIR/derivatives`` (what ``neurocast run``
makes of it, with ``index.html``). The cohort is small on purpose (4 subjects, two visits each, on
the 2 mm grid) so that the whole demo finishes in a few minutes on a 2-core laptop; the forecast
and QA steps use the models shipped in ``neurocast/weights`` and are left out, with a note, where
a shipped model (or the step's module) is not available in this installation.

Example:
    >>> from neurocast.pipeline import demo  # doctest: +SKIP
    >>> demo("/tmp/neurocast-demo")  # doctest: +SKIP
    PosixPath('/tmp/neurocast-demo/derivatives/index.html')
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from neurocast.errors import CheckpointError
from neurocast.pipeline.steps import StepUnavailableError, shipped_model, step_available
from neurocast.pipeline.study import (
    DEFAULT_STEPS,
    RunSummary,
    dask_cluster,
    machine_workers,
    run_study,
)

logger = logging.getLogger("neurocast")

DEMO_VISITS = (2, 2)
"""Visits per simulated subject (baseline and one follow-up)."""


def _note(message: str, echo: Callable[[str], None] | None) -> None:
    logger.info("%s", message)
    if echo is not None:
        echo(f"note: {message}")
    else:
        print(f"note: {message}", file=sys.stderr)


def demo_steps(echo: Callable[[str], None] | None = None) -> tuple[list[str], list[str]]:
    """The steps the demo can run here, and a note for each one it leaves out."""
    steps, notes = [], []
    # 'register' preprocesses every visit itself, so the demo skips the separate preprocess step
    for step in (s for s in DEFAULT_STEPS if s != "preprocess"):
        if not step_available(step):
            notes.append(f"step '{step}' left out: its module is not part of this installation yet")
        elif step in ("forecast", "qa") and shipped_model(step) is None:
            notes.append(
                f"step '{step}' left out: no shipped {step} model in neurocast/weights yet"
            )
        else:
            steps.append(step)
    for n in notes:
        _note(n, echo)
    return steps, notes


@dataclass
class DemoResult:
    """What :func:`run_demo` did: the index page, the participant-level run, notes, time."""

    index: Path
    summary: RunSummary
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_demo(
    output_dir: str | os.PathLike[str],
    *,
    n_subjects: int = 4,
    seed: int = 0,
    progress: bool = True,
    n_workers: int | None = None,
    echo: Callable[[str], None] | None = None,
) -> DemoResult:
    """:func:`demo`, returning the run's summary too (the command line exits 3 on failures)."""
    from neurocast.report.html import build_reports
    from neurocast.simulate import SimulationConfig, simulate_cohort

    root = Path(output_dir).resolve()
    bids = root / "bids"
    out = root / "derivatives"
    t0 = time.perf_counter()
    say = echo or (lambda s: print(s, file=sys.stderr))
    workers = machine_workers() if n_workers is None else max(1, int(n_workers))
    steps, notes = demo_steps(echo)
    config = SimulationConfig(n_visits=DEMO_VISITS, n_jobs=min(workers, n_subjects))
    simulate_cohort(bids, n_subjects, seed, config, progress=progress)
    models = {"forecast": shipped_model("forecast"), "qa": shipped_model("qa")}
    base = [s for s in steps if s not in models]
    # one Dask cluster for every step; a step whose shipped model turns out unusable is left out
    with dask_cluster(min(workers, n_subjects)) as address:
        kw = {"seed": seed, "progress": progress, "reports": False, "scheduler": address,
              "n_workers": 1}  # fmt: skip
        summary = run_study(bids, out, "participant", steps=base, **kw)
        for step in (s for s in steps if s in models):
            try:
                extra = run_study(
                    bids, out, "participant", steps=[step], model=models["forecast"],
                    anomaly_model=models["qa"], **kw,
                )  # fmt: skip
            except (CheckpointError, StepUnavailableError) as exc:
                notes.append(f"step '{step}' left out: {exc}")
                _note(notes[-1], echo)
                continue
            summary.steps.update(extra.steps)
    group = run_study(bids, out, "group", steps=steps, seed=seed, n_workers=1, progress=False,
                      reports=False)  # fmt: skip
    for n in group.notes:
        _note(n, echo)
    notes += group.notes
    paths = build_reports(out, bids_dir=bids, notes=notes, title="neurocast demo",
                          progress=progress)  # fmt: skip
    seconds = time.perf_counter() - t0
    for line in [s.line() for s in summary.steps.values()]:
        say(line)
    say(f"demo: {len(summary.participants)} simulated subjects, {summary.n_failed} failure(s), "
        f"{seconds:.0f} s")  # fmt: skip
    return DemoResult(paths.index, summary, notes, seconds)


def demo(
    output_dir: str | os.PathLike[str],
    *,
    n_subjects: int = 4,
    seed: int = 0,
    progress: bool = True,
    n_workers: int | None = None,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """Simulate a small cohort into ``OUTPUT_DIR/bids`` and run the whole study on it.

    Args:
        output_dir: the demo folder (created): ``bids/`` and ``derivatives/`` go in it.
        n_subjects: simulated subjects (two visits each).
        seed: random seed of the simulation and of every step.
        progress: show progress bars.
        n_workers: participants in parallel (default: a local Dask cluster sized to the machine).
        echo: where notes and the summary go (default: printed to stderr).

    Returns:
        The path of ``derivatives/index.html``.

    A rerun on the same folder simulates the same files again and skips every finished step.
    """
    return run_demo(output_dir, n_subjects=n_subjects, seed=seed, progress=progress,
                    n_workers=n_workers, echo=echo).index  # fmt: skip


__all__ = ["DEMO_VISITS", "DemoResult", "demo", "demo_steps", "run_demo"]
