"""Anomalies: growing tumours with mass effect, and acquisition artefacts of graded severity.

**Tumours** live in template space (the subject's anatomy grid) and appear at a random visit,
then grow between visits:

* radius ``R(t) = min(R0 + g (t - t_onset), R_max)``; the shape is irregular: a voxel belongs to the
  tumour when ``rho(x) = |x - c| / (1 + a n(x)) < R`` with ``n`` a smooth random field fixed per
  tumour (so the same lobulated shape grows);
* three compartments: necrotic core (``rho < f_nec R``, dark, label 1), enhancing rim
  (``rho < R``, brighter than white matter, label 2), oedema (``rho < f_oed R``, white-matter
  intensity lowered, label 3);
* mass effect: tissue around the tumour is pushed outward by a radial displacement field. A share
  ``m`` of the tumour volume displaces tissue: the point now at distance ``d`` from the centre came
  from ``d0 = cbrt(d^3 - R_m^3)`` with ``R_m = cbrt(m) R`` (volume conserving), tapered to zero
  between ``2 R_m`` and ``4 R_m`` so the skull never moves.

**Artefacts** are applied to the native image with TorchIO's deterministic transforms
(``Motion``, ``Ghosting``, ``Spike``) whose parameters are drawn here per severity grade and
recorded in the truth:

=========  ==========================================  ============================================
type       parameter                                    mild / moderate / severe
=========  ==========================================  ============================================
motion     movements, rotation (deg), translation (mm)  1-2, <=1.5, <=1.5 / 2-3, 2-4, 2-4 / 3-4, 5-8, 5-8
ghosting   ghosts, intensity                            2-4, 0.10-0.25 / 4-6, 0.3-0.5 / 6-10, 0.6-0.9
spike      spikes, intensity (x spectrum max)           1, 0.03-0.06 / 1-2, 0.08-0.15 / 2-3, 0.2-0.4
=========  ==========================================  ============================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from neurocast.simulate.config import SimulationConfig
from neurocast.simulate.subjects import rng_for

TUMOUR_LABELS = {1: "necrotic_core", 2: "enhancing_rim", 3: "oedema"}
"""Labels of the tumour truth maps."""

SEVERITIES = ("mild", "moderate", "severe")

ARTEFACT_RANGES: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "motion": {
        "mild": {"n": (1, 2), "degrees": (0.5, 1.5), "translation": (0.5, 1.5)},
        "moderate": {"n": (2, 3), "degrees": (2.0, 4.0), "translation": (2.0, 4.0)},
        "severe": {"n": (3, 4), "degrees": (5.0, 8.0), "translation": (5.0, 8.0)},
    },
    "ghosting": {
        "mild": {"n": (2, 4), "intensity": (0.10, 0.25)},
        "moderate": {"n": (4, 6), "intensity": (0.3, 0.5)},
        "severe": {"n": (6, 10), "intensity": (0.6, 0.9)},
    },
    "spike": {
        "mild": {"n": (1, 1), "intensity": (0.03, 0.06)},
        "moderate": {"n": (1, 2), "intensity": (0.08, 0.15)},
        "severe": {"n": (2, 3), "intensity": (0.2, 0.4)},
    },
}
"""Parameter ranges of each artefact type by severity (drawn uniformly)."""


# ------------------------------------------------------------------------------------------------
# tumours
# ------------------------------------------------------------------------------------------------


@dataclass
class Tumour:
    """A tumour of one subject (template space, mm)."""

    onset_visit: int
    onset_years: float
    centre_mm: tuple[float, float, float]
    radius0_mm: float
    growth_mm_per_year: float
    max_radius_mm: float
    necrosis_fraction: float
    oedema_factor: float
    irregularity: float
    mass_effect: float
    intensity_necrosis: float
    intensity_rim: float
    intensity_oedema: float
    shape_seed: int
    _noise: np.ndarray | None = field(default=None, repr=False)

    def radius_at(self, t: float) -> float:
        """Tumour radius at time ``t`` (0 before onset)."""
        if t < self.onset_years - 1e-9:
            return 0.0
        return float(min(self.radius0_mm + self.growth_mm_per_year * (t - self.onset_years), self.max_radius_mm))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description."""
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["centre_mm"] = [float(x) for x in self.centre_mm]
        return d


def draw_tumour(
    seed: int,
    subject_index: int,
    visit_times: list[float],
    brain_mask: np.ndarray,
    forbidden: np.ndarray,
    affine: np.ndarray,
    config: SimulationConfig,
) -> Tumour | None:
    """Decide whether the subject has a tumour and draw it.

    Args:
        visit_times: times of the visits (years since baseline).
        brain_mask: (X, Y, Z) subject brain mask on the anatomy grid.
        forbidden: voxels the centre may not fall in (ventricles).
        affine: voxel-to-mm matrix of the anatomy grid.
    """
    rng = rng_for(seed, subject_index, "tumour")
    u = rng.random()
    if u >= config.tumour_fraction or not visit_times:
        return None
    from scipy import ndimage

    spacing = float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).mean())
    depth = ndimage.distance_transform_edt(brain_mask) * spacing
    r0 = float(rng.uniform(*config.tumour_radius_mm))
    candidates = np.argwhere((depth >= max(15.0, r0 + 8.0)) & ~forbidden)
    if len(candidates) == 0:
        candidates = np.argwhere(brain_mask)
    vox = candidates[int(rng.integers(len(candidates)))]
    centre = tuple(float(x) for x in (affine[:3, :3] @ vox + affine[:3, 3]))
    onset_visit = int(rng.integers(0, len(visit_times)))
    return Tumour(
        onset_visit=onset_visit,
        onset_years=float(visit_times[onset_visit]),
        centre_mm=centre,  # type: ignore[arg-type]
        radius0_mm=r0,
        growth_mm_per_year=float(rng.uniform(*config.tumour_growth_mm_per_year)),
        max_radius_mm=float(config.tumour_max_radius_mm),
        necrosis_fraction=float(rng.uniform(0.35, 0.6)),
        oedema_factor=float(rng.uniform(*config.tumour_oedema_extent)),
        irregularity=float(rng.uniform(0.12, 0.3)),
        mass_effect=float(config.tumour_mass_effect),
        intensity_necrosis=float(rng.uniform(0.2, 0.35)),
        intensity_rim=float(rng.uniform(1.15, 1.35)),
        intensity_oedema=float(rng.uniform(0.72, 0.85)),
        shape_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _tumour_noise(tumour: Tumour, shape: tuple[int, int, int], spacing: float) -> np.ndarray:
    if tumour._noise is None or tumour._noise.shape != shape:
        from neurocast.simulate.fields import smooth_random_field

        rng = np.random.default_rng(tumour.shape_seed)
        tumour._noise = smooth_random_field(rng, shape, 8.0 / spacing, channels=1)[0]
    return tumour._noise


def _distances(tumour: Tumour, shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offset from the centre in mm (3, X, Y, Z), distance in mm)."""
    idx = np.indices(shape, dtype=np.float32)
    mm = np.einsum("ij,j...->i...", affine[:3, :3].astype(np.float32), idx) + affine[:3, 3, None, None, None].astype(np.float32)
    off = mm - np.asarray(tumour.centre_mm, dtype=np.float32)[:, None, None, None]
    return off, np.sqrt((off**2).sum(axis=0))


def tumour_maps(
    tumour: Tumour, t: float, shape: tuple[int, int, int], affine: np.ndarray, brain_mask: np.ndarray
) -> dict[str, Any] | None:
    """The tumour at time ``t`` on the anatomy grid.

    Returns:
        ``None`` before onset, else a dict with ``labels`` (uint8 map, :data:`TUMOUR_LABELS`),
        soft weights ``w_oedema``, ``w_tumour``, ``w_necrosis`` (float32 in [0, 1]),
        ``displacement`` (1, 3, X, Y, Z) mass-effect pull-back field in voxels,
        ``radius_mm`` and the compartment volumes in mm^3.
    """
    radius = tumour.radius_at(t)
    if radius <= 0:
        return None
    spacing_vec = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = float(spacing_vec.mean())
    noise = _tumour_noise(tumour, shape, spacing)
    off, dist = _distances(tumour, shape, affine)
    rho = dist / (1.0 + tumour.irregularity * np.clip(noise, -2.5, 2.5))
    soft = max(0.6, 0.35 * spacing)

    def sig(z: np.ndarray) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)

    r_nec = tumour.necrosis_fraction * radius
    r_oed = tumour.oedema_factor * radius
    inside_brain = brain_mask.astype(bool)
    w_tum = sig((radius - rho) / soft) * inside_brain
    w_nec = sig((r_nec - rho) / soft) * inside_brain
    w_oed = sig((r_oed - rho) / soft) * inside_brain
    labels = np.zeros(shape, dtype=np.uint8)
    labels[(rho < r_oed) & inside_brain] = 3
    labels[(rho < radius) & inside_brain] = 2
    labels[(rho < r_nec) & inside_brain] = 1
    # mass effect: radial pull-back, volume conserving near the tumour, tapered far away
    r_m = radius * tumour.mass_effect ** (1.0 / 3.0)
    d = np.maximum(dist, 1e-3)
    d0 = np.cbrt(np.maximum(d**3 - r_m**3, 0.0))
    taper = np.clip((4.0 * r_m - d) / (2.0 * r_m), 0.0, 1.0)
    taper = taper * taper * (3 - 2 * taper)  # smoothstep
    delta = (d0 - d) * taper  # <= 0: read from closer to the centre
    disp_mm = off * (delta / d)[None]
    disp_vox = disp_mm / spacing_vec[:, None, None, None].astype(np.float32)
    voxel_volume = float(abs(np.linalg.det(affine[:3, :3])))
    return {
        "labels": labels,
        "w_tumour": w_tum.astype(np.float32),
        "w_necrosis": w_nec.astype(np.float32),
        "w_oedema": w_oed.astype(np.float32),
        "displacement": torch.from_numpy(disp_vox.astype(np.float32))[None],
        "radius_mm": radius,
        "noise": noise,
        "volume_necrosis_mm3": float((labels == 1).sum() * voxel_volume),
        "volume_enhancing_mm3": float((labels == 2).sum() * voxel_volume),
        "volume_oedema_mm3": float((labels == 3).sum() * voxel_volume),
    }


def paint_tumour(image: np.ndarray, maps: dict[str, Any], tumour: Tumour, white_matter: float) -> np.ndarray:
    """Paint the tumour intensities into a (mass-effect warped) anatomy image."""
    img = np.asarray(image, dtype=np.float32).copy()
    texture = 1.0 + 0.08 * np.clip(maps["noise"], -2.5, 2.5)
    img *= 1.0 - maps["w_oedema"] * (1.0 - tumour.intensity_oedema)
    rim = white_matter * tumour.intensity_rim * texture
    img = (1 - maps["w_tumour"]) * img + maps["w_tumour"] * rim
    core = white_matter * tumour.intensity_necrosis * texture
    img = (1 - maps["w_necrosis"]) * img + maps["w_necrosis"] * core
    return img.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# artefacts
# ------------------------------------------------------------------------------------------------


@dataclass
class Artefact:
    """An acquisition artefact of one visit."""

    kind: str
    severity: str
    parameters: dict[str, Any]


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = sorted(weights)
    p = np.array([max(0.0, weights[n]) for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def draw_artefact(seed: int, subject_index: int, visit_index: int, config: SimulationConfig) -> Artefact | None:
    """Decide whether a visit carries an artefact; draw its type, severity and parameters."""
    rng = rng_for(seed, subject_index, "artefact", visit_index)
    if rng.random() >= config.artefact_fraction:
        return None
    kind = _pick(rng, config.artefact_types)
    severity = _pick(rng, {s: config.artefact_severities.get(s, 0.0) for s in SEVERITIES})
    rngs = ARTEFACT_RANGES[kind][severity]
    n = int(rng.integers(int(rngs["n"][0]), int(rngs["n"][1]) + 1))
    params: dict[str, Any]
    if kind == "motion":
        signs = rng.choice([-1.0, 1.0], size=(n, 3))
        deg = signs * rng.uniform(*rngs["degrees"], size=(n, 3)) * rng.uniform(0.3, 1.0, size=(n, 3))
        signs = rng.choice([-1.0, 1.0], size=(n, 3))
        tr = signs * rng.uniform(*rngs["translation"], size=(n, 3)) * rng.uniform(0.3, 1.0, size=(n, 3))
        step = 1.0 / (n + 1)
        times = np.arange(1, n + 1) * step + rng.uniform(-0.3 * step, 0.3 * step, size=n)
        params = {"degrees": deg.round(4).tolist(), "translation_mm": tr.round(4).tolist(),
                  "times": np.sort(times).round(4).tolist()}
    elif kind == "ghosting":
        params = {"num_ghosts": n, "axis": int(rng.integers(0, 3)),
                  "intensity": round(float(rng.uniform(*rngs["intensity"])), 4), "restore": 0.02}
    else:
        pos = []
        while len(pos) < n:
            p = rng.random(3)
            if np.abs(p - 0.5).max() > 0.08:  # keep away from the centre of k-space
                pos.append(p.round(4).tolist())
        params = {"spikes_positions": pos, "intensity": round(float(rng.uniform(*rngs["intensity"])), 4)}
    return Artefact(kind, severity, params)


def apply_artefact(image: Any, artefact: Artefact) -> Any:
    """Apply an artefact to a ``torchio.ScalarImage`` with TorchIO's deterministic transforms."""
    from torchio.transforms.augmentation.intensity.random_ghosting import Ghosting
    from torchio.transforms.augmentation.intensity.random_motion import Motion
    from torchio.transforms.augmentation.intensity.random_spike import Spike

    p = artefact.parameters
    if artefact.kind == "motion":
        t = Motion(
            degrees=np.asarray(p["degrees"], dtype=float),
            translation=np.asarray(p["translation_mm"], dtype=float),
            times=np.asarray(p["times"], dtype=float),
            image_interpolation="linear",
        )
    elif artefact.kind == "ghosting":
        t = Ghosting(num_ghosts=int(p["num_ghosts"]), axis=int(p["axis"]), intensity=float(p["intensity"]),
                     restore=float(p["restore"]))
    elif artefact.kind == "spike":
        t = Spike(spikes_positions=np.asarray(p["spikes_positions"], dtype=float), intensity=float(p["intensity"]))
    else:  # pragma: no cover - guarded by draw_artefact
        raise ValueError(f"unknown artefact {artefact.kind!r}")
    return t(image)


def volume_ml(labels: np.ndarray, affine: np.ndarray, values: tuple[int, ...] = (1, 2)) -> float:
    """Volume in ml of the voxels whose label is in ``values``."""
    return float(np.isin(labels, values).sum() * abs(np.linalg.det(affine[:3, :3])) / 1000.0)


__all__ = [
    "ARTEFACT_RANGES",
    "SEVERITIES",
    "TUMOUR_LABELS",
    "Artefact",
    "Tumour",
    "apply_artefact",
    "draw_artefact",
    "draw_tumour",
    "paint_tumour",
    "tumour_maps",
    "volume_ml",
]
