"""One call from a BIDS dataset to derivatives and reports: :func:`run_study`.

At the ``participant`` level the steps (:data:`~neurocast.pipeline.steps.STEPS`: preprocess,
register, forecast, qa) run in order over the selected participants, then the participant pages
and ``index.html`` are written. At the ``group`` level the cohort and survival analyses run on
the forecasts already in the output folder (when there are any), then the group pages and the
index. Every participant is one task:

- in-process (``n_workers=1``);
- on a local Dask cluster started once for the whole study (``n_workers > 1``; the default is a
  cluster sized to the machine: one worker per CPU, fewer where memory is short);
- on an existing Dask cluster (``scheduler="tcp://host:8786"``, e.g. dask-jobqueue on SLURM).

Each worker runs one participant at a time with ``threads_per_worker`` threads for ITK (ANTs) and
torch (default 1, which keeps reruns bit-identical; see :mod:`neurocast.registration.threads`).

The output folder is locked for the whole run (a second run on it is refused with an
:class:`~neurocast.errors.OutputError`); temporary files left by a killed run are removed first;
failures are isolated per participant and step (``logs/failures.tsv``) and complete outputs are
skipped, so rerunning after an interruption (even ``kill -9``) finishes the work and gives the
same files as an uninterrupted run.

Example:
    >>> from neurocast.pipeline import run_study  # doctest: +SKIP
    >>> summary = run_study("/data/study", "/data/derivatives/neurocast", "participant",
    ...                     steps=("preprocess", "register"), n_workers=2)  # doctest: +SKIP
    >>> print("\\n".join(summary.lines()))  # doctest: +SKIP
    preprocess: 12 done, 0 skipped, 0 failed in 301.2 s
    ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurocast.io.batch import BatchSummary, output_lock
from neurocast.pipeline.steps import (
    DEFAULT_HORIZONS,
    DEFAULT_N_SAMPLES,
    STEPS,
    StepUnavailableError,
    StudyContext,
    check_steps,
    step_available,
)

logger = logging.getLogger("neurocast")

DEFAULT_STEPS: tuple[str, ...] = ("preprocess", "register", "forecast", "qa")
MEMORY_PER_WORKER = 2 * 1024**3
"""Memory a default local worker is given room for (bytes): registration of a participant peaks
at about 1 GiB."""


@dataclass
class RunSummary:
    """What a study run did: one :class:`~neurocast.io.batch.BatchSummary` per step, and more."""

    analysis_level: str
    participants: list[str]
    steps: dict[str, BatchSummary] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    index: Path | None = None
    group: dict[str, Path] = field(default_factory=dict)
    n_workers: int = 1
    scheduler: str | None = None

    def _sum(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.steps.values())

    @property
    def n_done(self) -> int:
        """Participant-steps processed in this run."""
        return self._sum("n_done")

    @property
    def n_skipped(self) -> int:
        """Participant-steps whose outputs were already complete."""
        return self._sum("n_skipped")

    @property
    def n_failed(self) -> int:
        """Participant-steps that failed (see ``logs/failures.tsv``)."""
        return self._sum("n_failed")

    @property
    def failed_participants(self) -> list[str]:
        """Labels of the participants that failed in at least one step."""
        return sorted({r.participant for s in self.steps.values() for r in s.results
                       if r.status == "failed"})  # fmt: skip

    @property
    def exit_code(self) -> int:
        """0, or 3 when a participant failed (as every neurocast command)."""
        return 3 if self.n_failed else 0

    def line(self) -> str:
        """The one-line total."""
        return (
            f"{self.analysis_level}: {len(self.participants)} participant(s), {self.n_done} done, "
            f"{self.n_skipped} skipped, {self.n_failed} failed in {self.seconds:.1f} s"
        )

    def lines(self) -> list[str]:
        """The end-of-run summary: a line per step, the total, the notes."""
        out = [s.line() for s in self.steps.values()]
        out.append(self.line())
        out += [f"note: {n}" for n in self.notes]
        return out


# --------------------------------------------------------------------------------------------
# Workers


def machine_workers(memory_per_worker: int = MEMORY_PER_WORKER) -> int:
    """Workers of the default local cluster: one per usable CPU, fewer where memory is short."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil

        mem = int(psutil.virtual_memory().total)
        cpus = min(cpus, max(1, mem // memory_per_worker))
    except ImportError:  # pragma: no cover - psutil comes with dask.distributed
        pass
    return max(1, cpus)


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - dask[distributed] is a core dependency
    _WorkerPluginBase = object  # type: ignore[assignment,misc]


class ThreadsPlugin(_WorkerPluginBase):  # type: ignore[misc,valid-type]
    """A Dask worker plugin: set ITK's and torch's threads on each worker when it starts.

    ``threads=None`` uses 1 (bit-identical reruns); the worker then runs as many participants at
    once as it has Dask threads.
    """

    name = "neurocast-threads"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def setup(self, worker: Any) -> None:
        from neurocast.registration.threads import set_threads

        set_threads(self.threads or 1)


@contextlib.contextmanager
def dask_cluster(
    n_workers: int,
    *,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    scheduler: str | None = None,
) -> Iterator[str | None]:
    """Start (or connect to) the Dask cluster of a run; yields the scheduler address or ``None``.

    ``None`` means in-process: ``n_workers <= 1`` and no scheduler; ITK and torch threads are set
    in this process when ``threads_per_worker`` is given. Otherwise every worker (those of an
    existing cluster too) gets a :class:`ThreadsPlugin`. A local cluster has ``n_workers``
    worker processes, each running one participant at a time, with ``memory_limit`` each (Dask's
    ``"auto"``: the machine's memory shared out; a worker that goes over is restarted and its
    participant counted as failed).
    """
    if scheduler is None and n_workers <= 1:
        if threads_per_worker is not None:
            from neurocast.registration.threads import set_threads

            set_threads(threads_per_worker)
        yield None
        return
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        from neurocast.io.batch import worker_spawn_environment

        with worker_spawn_environment(threads_per_worker):
            cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True,
                memory_limit=memory_limit if memory_limit is not None else "auto",
                dashboard_address=None, silence_logs=logging.ERROR,
            )  # fmt: skip
        address = cluster.scheduler_address
    else:
        address = scheduler
    try:
        with Client(address) as client:
            client.register_plugin(ThreadsPlugin(threads_per_worker), name=ThreadsPlugin.name)
            yield address
    finally:
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------------------------
# The study


def _group_analyses(out: Path, bids_dir: Path, seed: int, notes: list[str]) -> None:
    from neurocast.errors import InputError
    from neurocast.progress.analysis import FORECAST_GLOB, cohort_report, survival_analysis

    if not any(out.glob(FORECAST_GLOB)):
        notes.append("no forecasts in the output folder: cohort and survival analyses skipped "
                     "(run the forecast step first)")  # fmt: skip
        return
    for name, fn, kwargs in (
        ("cohort", cohort_report, {"bids_dir": bids_dir}),
        ("survival", survival_analysis, {"bids_dir": bids_dir, "seed": seed}),
    ):
        try:
            report = fn(out, **kwargs)
        except InputError as exc:
            notes.append(f"{name} analysis not written: {exc}")
            # the note is printed at the end of the run; the log file still records it here
            logger.info("%s analysis not written: %s", name, exc)
            continue
        notes += [f"{name}: {n}" for n in report.notes]


def run_study(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    analysis_level: str = "participant",
    *,
    steps: Sequence[str] | str = DEFAULT_STEPS,
    participant_label: Iterable[str] | None = None,
    session_label: Iterable[str] | None = None,
    model: str | os.PathLike[str] | None = None,
    anomaly_model: str | os.PathLike[str] | None = None,
    horizons: Sequence[float] = DEFAULT_HORIZONS,
    n_samples: int = DEFAULT_N_SAMPLES,
    seed: int = 0,
    work_dir: str | os.PathLike[str] | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    force: bool = False,
    reports: bool = True,
) -> RunSummary:
    """Run a study: the steps over every selected participant, then the reports.

    Args:
        bids_dir: the BIDS dataset.
        output_dir: the derivatives folder (created; locked for the run).
        analysis_level: ``"participant"`` (the steps, the participant pages, the index) or
            ``"group"`` (cohort and survival analyses of the forecasts, the group pages, the index).
        steps: steps to run, among :data:`~neurocast.pipeline.steps.STEPS` (a sequence or a
            comma-separated string); they run in the registry's order.
        participant_label, session_label: the selection (default: everyone, every session).
        model: forecasting model folder (default: the shipped one).
        anomaly_model: anomaly model folder (default: the shipped one).
        horizons: forecast horizons in years.
        n_samples: forecast samples per participant.
        seed: random seed of every step.
        work_dir: parent folder of temporary files.
        n_workers: participants in parallel (never more than there are participants); ``None``
            sizes a local Dask cluster to the machine (:func:`machine_workers`), ``1`` runs in
            this process. Not used with ``scheduler``.
        threads_per_worker: ITK and torch threads of each worker (default 1: bit-identical reruns).
        memory_limit: memory of each local worker (``"4GB"``, bytes; default Dask's ``"auto"``);
            not used in-process.
        scheduler: address of an existing Dask scheduler (then ``n_workers`` is not used).
        progress: show progress bars.
        force: recompute even complete outputs.
        reports: write the HTML reports.

    Returns:
        A :class:`RunSummary`; its ``exit_code`` is 3 when a participant failed.

    Raises:
        ValueError: an unknown analysis level or step, or an invalid label.
        InvalidDatasetError, EmptySelectionError: the dataset or the selection is unusable.
        StepUnavailableError: a step's module is not installed.
        OutputError: the output folder cannot be written or another run holds it.
    """
    from tqdm.auto import tqdm

    from neurocast.io.atomic import remove_stale_temporaries
    from neurocast.io.bids import discover
    from neurocast.report.html import build_reports

    t0 = time.perf_counter()
    if analysis_level not in ("participant", "group"):
        raise ValueError(f"analysis level must be 'participant' or 'group', got {analysis_level!r}")
    names = check_steps(steps)
    notes_left_out: list[str] = []
    if steps is DEFAULT_STEPS:
        # the default steps leave out a model step with neither a model given nor one shipped
        from neurocast.pipeline.steps import shipped_model

        given = {"forecast": model, "qa": anomaly_model}
        for step in ("forecast", "qa"):
            if step in names and given[step] is None and shipped_model(step) is None:
                names = [n for n in names if n != step]
                notes_left_out.append(f"step '{step}' left out: no model given and none shipped; "
                                      f"pass --{'model' if step == 'forecast' else 'anomaly-model'} DIR")  # fmt: skip
    bids = Path(bids_dir)
    out = Path(output_dir)
    plabels = list(participant_label) if participant_label is not None else None
    slabels = list(session_label) if session_label is not None else None
    ds = discover(bids, plabels, slabels)  # invalid dataset / empty selection fail here, early
    labels = [p.label for p in ds.participants]
    summary = RunSummary(analysis_level, labels)
    for note in notes_left_out:
        logger.warning("%s", note)
        summary.notes.append(note)
    if analysis_level == "participant":
        missing = [s for s in names if not step_available(s)]
        if missing:
            raise StepUnavailableError(
                f"step(s) {missing} are not available in this installation (their modules are "
                f"missing); run with --steps {','.join(s for s in names if s not in missing)}"
            )
    workers = machine_workers() if n_workers is None else max(1, int(n_workers))
    workers = min(workers, max(1, len(labels)))  # no more workers than participants
    summary.n_workers = workers
    summary.scheduler = scheduler

    with output_lock(out, reentrant=True):
        removed = remove_stale_temporaries(out)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run", len(removed))
        if analysis_level == "participant":
            with dask_cluster(
                workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit,
                scheduler=scheduler,
            ) as address:  # fmt: skip
                ctx = StudyContext(
                    bids_dir=bids, output_dir=out, participant_label=plabels,
                    session_label=slabels, model=None if model is None else Path(model),
                    anomaly_model=None if anomaly_model is None else Path(anomaly_model),
                    horizons=tuple(float(h) for h in horizons), n_samples=int(n_samples),
                    seed=seed, work_dir=None if work_dir is None else Path(work_dir),
                    n_workers=1, scheduler=address, progress=progress, force=force,
                )  # fmt: skip
                bar = tqdm(total=len(names) * len(labels), desc="study", unit="task",
                           disable=not progress, position=0, leave=True)  # fmt: skip
                try:
                    for i, name in enumerate(names, 1):
                        bar.set_postfix_str(f"step {i}/{len(names)}: {name}")
                        logger.info("step %s: %d participant(s)", name, len(labels))
                        summary.steps[name] = STEPS[name](ctx)
                        logger.info("%s", summary.steps[name].line())
                        bar.update(len(labels))
                finally:
                    bar.close()
        else:
            _group_analyses(out, bids, seed, summary.notes)
        if reports:
            paths = build_reports(
                out, participants=labels if analysis_level == "participant" else [],
                bids_dir=bids, notes=summary.notes, progress=progress,
            )  # fmt: skip
            summary.index = paths.index
            summary.group = paths.group
    summary.seconds = time.perf_counter() - t0
    return summary


__all__ = [
    "DEFAULT_STEPS",
    "RunSummary",
    "ThreadsPlugin",
    "dask_cluster",
    "machine_workers",
    "run_study",
]
