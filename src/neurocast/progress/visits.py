"""Longitudinal training data for the progression model: subjects, visits, and the pairs built from them.

A :class:`LongitudinalSubject` holds, per visit, the image on the working grid (template space) and
the stationary velocity field from the first visit (the registration module's output, or the
simulation's truth), with the visit's covariates. Two readers fill it:

* :func:`subjects_from_registration`: a BIDS dataset and the derivatives of ``neurocast register``
  (``*_desc-longitudinal_T1w.nii.gz`` per visit, ``*_desc-velocity_xfm.nii.gz`` per follow-up);
* :func:`subjects_from_truth`: a cohort written by ``neurocast simulate`` (its truth folder: the
  clean template-space images and the exact velocity fields).

:func:`prepare_subject` puts a subject on the forecaster's field grid (conditioning images averaged
onto it, velocity fields restricted with :func:`~neurocast.progress.fieldgrid.restrict_velocity`)
and :func:`training_pairs` turns prepared subjects into the backbone's training items:

* every ordered pair of visits ``(j, k)``, ``j < k``: the **target** is the annual velocity
  ``(r_k - r_j) / (t_k - t_j)`` (``r`` = restricted field from the first visit; the difference is
  the field from visit j to visit k to first order in the small atrophy displacements);
* the **condition** is visit j's image plus three *history* channels: the observed annual velocity
  ``r_j / (t_j - t_0)`` when earlier visits exist (zeros otherwise);
* the **covariates** are the age, diagnosis and MMSE at visit j, sex, APOE4, ``years = t_k - t_j``
  and ``history_years = t_j - t_0`` (missing, i.e. the learned null, without history). Pairs with
  history are also added once without it, so the model serves subjects with one visit or several.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurocast.io.bids import Participant, Session
from neurocast.progress.fieldgrid import image_to_field_grid, normalise_condition, restrict_velocity

VISIT_COVARIATES = ("age", "diagnosis", "mmse")
"""Covariates that change between visits (taken at the earlier visit of a pair)."""
STATIC_COVARIATES = ("sex", "apoe4")
"""Covariates fixed per subject."""


@dataclass
class Visit:
    """One visit of a subject.

    Attributes:
        session_id: ``ses-<label>`` (empty for datasets without sessions).
        time_years: years since the subject's first visit.
        image: (X, Y, Z) image on the working grid (template space).
        velocity: (1, 3, x, y, z) stationary velocity from the first visit to this one, in voxels
            of its grid (``None`` for the first visit).
        covariates: the visit's ``age``, ``diagnosis``, ``mmse`` (missing ones absent or None).
    """

    session_id: str
    time_years: float
    image: np.ndarray
    velocity: torch.Tensor | None = None
    covariates: dict[str, Any] = field(default_factory=dict)


@dataclass
class LongitudinalSubject:
    """All visits of one subject, sorted by time, with the first visit as reference.

    ``spacing_mm`` is the voxel size of the images' working grid.
    """

    participant_id: str
    visits: list[Visit]
    covariates: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    spacing_mm: float = 2.0

    def __post_init__(self) -> None:
        self.visits = sorted(self.visits, key=lambda v: v.time_years)


@dataclass
class PreparedSubject:
    """A subject on the field grid (what training needs, small enough to cache).

    Attributes:
        participant_id: ``sub-<label>``.
        times: (n,) visit times in years from the first visit.
        images: (n, 1, x, y, z) normalised conditioning images on the field grid.
        fields: (n, 3, x, y, z) restricted velocity from the first visit (zeros for it).
        visit_covariates: per visit, its covariates.
        covariates: static covariates.
    """

    participant_id: str
    times: np.ndarray
    images: torch.Tensor
    fields: torch.Tensor
    visit_covariates: list[dict[str, Any]]
    covariates: dict[str, Any]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``path`` (``.npz`` arrays and a JSON text; atomic)."""
        from neurocast.io.atomic import atomic_path

        meta = {"participant_id": self.participant_id, "visit_covariates": self.visit_covariates,
                "covariates": self.covariates}  # fmt: skip
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, times=self.times, images=self.images.numpy(), fields=self.fields.numpy(),
                         meta=np.array(json.dumps(meta, default=_json_default)))  # fmt: skip
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PreparedSubject:
        """Read what :meth:`save` wrote (no pickle)."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(meta["participant_id"], z["times"], torch.from_numpy(z["images"]),
                       torch.from_numpy(z["fields"]), meta["visit_covariates"], meta["covariates"])  # fmt: skip


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(value: Any) -> Any:
    """Covariate cell -> Python value; NaN, 'n/a' and empty become None."""
    if value is None:
        return None
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    if isinstance(value, str) and value.strip().lower() in {"", "n/a", "na", "nan"}:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _image(path: Path) -> np.ndarray:
    from neurocast.io.nifti import load_image

    return np.asarray(load_image(path).dataobj, dtype=np.float32)


def _spacing(path: Path) -> float:
    from neurocast.io.nifti import read_info

    return float(read_info(path).voxel_size_mm[0])


def subjects_from_truth(sim_root: str | os.PathLike[str], participant_ids: Iterable[str] | None = None) -> Iterator[LongitudinalSubject]:
    """Subjects of a simulated cohort from its truth folder (exact fields, clean images).

    Args:
        sim_root: the folder ``neurocast simulate`` wrote (BIDS root with
            ``derivatives/neurocast-truth``).
        participant_ids: only these (``sub-`` prefixed); default all.

    Yields:
        One :class:`LongitudinalSubject` per participant, loaded lazily.

    Raises:
        neurocast.errors.InvalidDatasetError: the truth folder or its tables are missing.
    """
    from neurocast.errors import InvalidDatasetError
    from neurocast.registration.transforms import read_velocity

    root = Path(sim_root)
    truth = root / "derivatives" / "neurocast-truth"
    if not (truth / "visits.tsv").is_file():
        raise InvalidDatasetError(f"{truth}: no visits.tsv; is {root} a cohort written by 'neurocast simulate'?")
    visits = pd.read_csv(truth / "visits.tsv", sep="\t")
    subjects = pd.read_csv(truth / "subjects.tsv", sep="\t").set_index("participant_id")
    wanted = None if participant_ids is None else set(participant_ids)
    for pid, rows in visits.groupby("participant_id", sort=True):
        if wanted is not None and pid not in wanted:
            continue
        srow = subjects.loc[pid]
        out = []
        spacing = 2.0
        for row in rows.itertuples():
            folder = truth / pid / row.session_id / "anat"
            image = next(folder.glob(f"{pid}_{row.session_id}_space-*_desc-clean_T1w.nii.gz"), None)
            if image is None:
                raise InvalidDatasetError(f"{folder}: no clean T1w truth image")
            vel = next(folder.glob(f"{pid}_{row.session_id}_from-*_desc-velocity_xfm.nii.gz"), None)
            velocity = read_velocity(vel) if vel is not None and row.visit_index > 0 else None
            cov = {"age": _clean(row.age), "diagnosis": _clean(row.diagnosis), "mmse": _clean(row.mmse)}
            spacing = _spacing(image)
            out.append(Visit(row.session_id, float(row.time_years), _image(image), velocity, cov))
        static = {"sex": _clean(srow["sex"]), "apoe4": _clean(srow["apoe4"])}
        yield LongitudinalSubject(str(pid), out, static, source=str(truth), spacing_mm=spacing)


def session_covariates(participant: Participant, session: Session) -> dict[str, Any]:
    """The covariates at one session: ``participants.tsv`` values, overridden by the session's own.

    ``diagnosis`` and ``mmse`` come from ``sessions.tsv`` where given there; ``age`` is the
    session's age, else the baseline age plus the session's time. Missing values are ``None``.

    Returns:
        ``{"age", "sex", "diagnosis", "apoe4", "mmse"}``.
    """
    cov = {k: _clean(participant.covariates.get(k)) for k in (*VISIT_COVARIATES, *STATIC_COVARIATES)}
    for k in ("diagnosis", "mmse"):
        if _clean(session.info.get(k)) is not None:
            cov[k] = _clean(session.info.get(k))
    if session.age is not None:
        cov["age"] = float(session.age)
    elif cov.get("age") is not None and session.time_years is not None:
        cov["age"] = float(cov["age"]) + float(session.time_years)
    return cov


def subjects_from_registration(
    bids_dir: str | os.PathLike[str],
    registration_dir: str | os.PathLike[str],
    *,
    participant_label: Iterable[str] | None = None,
) -> Iterator[LongitudinalSubject]:
    """Subjects of a BIDS dataset with the outputs of ``neurocast register``.

    Covariates come from ``participants.tsv`` (sex, APOE4; age, diagnosis and MMSE at baseline) and
    ``sessions.tsv`` (per-visit ``age``, ``diagnosis``, ``mmse`` where present; visit times from
    ``time_years``/``age``). Participants without a registered follow-up are skipped.

    Args:
        bids_dir: the raw BIDS dataset.
        registration_dir: the output folder of ``neurocast register``.
        participant_label: only these participants.

    Yields:
        One :class:`LongitudinalSubject` per registered participant with >= 2 visits.
    """
    from neurocast.io.bids import discover
    from neurocast.registration.transforms import read_velocity

    ds = discover(bids_dir, participant_label)
    reg = Path(registration_dir)
    for p in ds.participants:
        sub = p.participant_id
        base_age = _clean(p.covariates.get("age"))
        found: list[Visit] = []
        spacing = 2.0
        for s in p.sessions:
            folder = reg / sub / s.entity / "anat" if s.label else reg / sub / "anat"
            pre = f"{sub}_{s.entity}" if s.label else sub
            image = next(folder.glob(f"{pre}_space-*_desc-longitudinal_T1w.nii.gz"), None)
            if image is None:
                continue
            vel = next(folder.glob(f"{pre}_from-*_desc-velocity_xfm.nii.gz"), None)
            spacing = _spacing(image)
            t = s.time_years
            if t is None and s.age is not None and base_age is not None:
                t = float(s.age) - float(base_age)
            cov = session_covariates(p, s)
            found.append(Visit(s.entity, float(t) if t is not None else float("nan"), _image(image),
                               read_velocity(vel) if vel is not None else None,
                               {k: cov[k] for k in VISIT_COVARIATES}))  # fmt: skip
        found = [v for v in found if math.isfinite(v.time_years)]
        if len(found) < 2 or not any(v.velocity is not None for v in found):
            continue
        static = {k: _clean(p.covariates.get(k)) for k in STATIC_COVARIATES}
        yield LongitudinalSubject(sub, found, static, source=str(reg), spacing_mm=spacing)


def prepare_subject(
    subject: LongitudinalSubject,
    field_shape: Sequence[int],
    *,
    restrict_iterations: int = 60,
) -> PreparedSubject:
    """Put a subject on the field grid (see the module docstring).

    Args:
        subject: the subject (its first visit is the reference of the velocity fields).
        field_shape: the forecaster's field grid (x, y, z).
        restrict_iterations: iterations of :func:`restrict_velocity` per follow-up.

    Returns:
        The :class:`PreparedSubject`.
    """
    shape = tuple(int(s) for s in field_shape)
    t0 = subject.visits[0].time_years
    images = [image_to_field_grid(normalise_condition(v.image), shape) for v in subject.visits]
    fields: list[torch.Tensor | None] = [None] * len(subject.visits)
    # Largest field first: a later field that is a multiple of an already restricted one (as in a
    # stationary progression) reuses its restriction, scaled (the restriction is linear to first
    # order for these small fields).
    order = sorted(
        (i for i, v in enumerate(subject.visits) if i > 0 and v.velocity is not None),
        key=lambda i: -float(subject.visits[i].velocity.norm()),  # type: ignore[union-attr]
    )
    done: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in order:
        vel = subject.visits[i].velocity
        assert vel is not None
        for ref, restricted in done:
            c = float((vel * ref).sum() / ref.pow(2).sum().clamp_min(1e-30))
            if float((vel - c * ref).norm()) <= 1e-3 * float(vel.norm()):
                fields[i] = c * restricted
                break
        else:
            fields[i] = restrict_velocity(vel, shape, n_iter=restrict_iterations)[0]
            done.append((vel, fields[i]))
    fields[0] = torch.zeros(3, *shape)
    keep = [i for i, v in enumerate(subject.visits) if i == 0 or v.velocity is not None]
    return PreparedSubject(
        subject.participant_id,
        np.array([subject.visits[i].time_years - t0 for i in keep], dtype=np.float64),
        torch.stack([images[i] for i in keep]),
        torch.stack([fields[i] for i in keep]),  # type: ignore[misc]
        [dict(subject.visits[i].covariates) for i in keep],
        dict(subject.covariates),
    )


def condition_channels(image: torch.Tensor, history: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The conditioning image: (1, x, y, z) image and the (3, x, y, z) history rate / ``scale``.

    Returns:
        (4, x, y, z) tensor; the history channels are zeros without history.
    """
    hist = torch.zeros(3, *image.shape[1:]) if history is None else history / scale
    return torch.cat([image, hist.to(image.dtype)], dim=0)


def pair_covariates(
    prepared: PreparedSubject, j: int, years: float, with_history: bool
) -> dict[str, Any]:
    """Covariates of the pair starting at visit ``j`` for a horizon of ``years``."""
    cov = {**prepared.covariates, **{k: prepared.visit_covariates[j].get(k) for k in VISIT_COVARIATES}}
    cov["years"] = float(years)
    hist_years = float(prepared.times[j] - prepared.times[0])
    cov["history_years"] = hist_years if with_history and j > 0 and hist_years > 0 else None
    return cov


def training_pairs(
    prepared: Iterable[PreparedSubject], scale: float, *, min_years: float = 0.25
) -> list[dict[str, Any]]:
    """The backbone's training items from prepared subjects (see the module docstring).

    Args:
        prepared: subjects on the field grid.
        scale: the model's target scale (history channels are divided by it).
        min_years: pairs closer in time are skipped (their annual rate is mostly noise).

    Returns:
        Items ``{"target", "condition", "covariates", "participant_id"}``.
    """
    items: list[dict[str, Any]] = []
    for p in prepared:
        n = len(p.times)
        for j in range(n):
            history = p.fields[j] / float(p.times[j]) if j > 0 and p.times[j] > 0 else None
            for k in range(j + 1, n):
                dt = float(p.times[k] - p.times[j])
                if dt < min_years:
                    continue
                target = (p.fields[k] - p.fields[j]) / dt
                variants = [True, False] if history is not None else [False]
                for with_hist in variants:
                    items.append({
                        "target": target,
                        "condition": condition_channels(p.images[j], history if with_hist else None, scale),
                        "covariates": pair_covariates(p, j, dt, with_hist),
                        "participant_id": p.participant_id,
                    })  # fmt: skip
    return items


__all__ = [
    "STATIC_COVARIATES",
    "VISIT_COVARIATES",
    "LongitudinalSubject",
    "PreparedSubject",
    "Visit",
    "condition_channels",
    "pair_covariates",
    "prepare_subject",
    "session_covariates",
    "subjects_from_registration",
    "subjects_from_truth",
    "training_pairs",
]
