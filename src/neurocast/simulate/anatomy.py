"""Anatomy: the template and atlas on the working grid, each subject's baseline brain, the head.

* **Template assets** (cached per grid): the nilearn MNI152NLin2009aSym T1w (brain-extracted)
  resampled onto the working grid with anti-aliasing, its brain mask, and the regional atlas of
  :func:`neurocast.registration.atlas.load_atlas`, whose regions are mapped onto the simulator's
  region groups by name (:func:`region_group`).
* **Subject anatomy** = template warped by ``exp(v_anat)`` (pull convention:
  ``subject(x) = template(x + u(x))``), with ``v_anat = v_volume + v_shape``:

  - ``v_volume`` gives the subject its ventricle size (log scale by diagnosis and age plus a
    subject effect) and ``baseline_atrophy_years`` of its own regional atrophy (so AD subjects
    start with smaller hippocampi), calibrated like the progression field
    (:func:`neurocast.simulate.fields.calibrated_velocity`);
  - ``v_shape`` is a smooth Gaussian random field (RMS ``shape_variation_mm``, correlation
    ``shape_correlation_mm``) for individual shape.

  Head size is not part of this warp: it is the scaling between template space and the scanner
  (:mod:`.acquisition`), as an affine registration would remove it.
* **Real anatomy** (``base_scans``): a real T1w scan preprocessed into template space
  (:func:`neurocast.registration.preprocess.preprocess_t1w`, brain-extracted) replaces the warped
  template; atlas labels come from the atlas (affine alignment only, so they fit the real brain
  less tightly than they fit the template).
* **Whole head**: the template is brain-extracted, so heads are given a synthetic shell outside
  the brain mask: a thin CSF layer, inner table, diploe, outer table, muscle, subcutaneous fat and
  skin, each a layer of the distance from the brain mask with a subject-specific thickness
  (x0.85-1.2) modulated by a smooth random field (+-20 %). It is closed underneath (no neck): the
  point is a realistic-looking skull and scalp for skull stripping to remove, not anatomy.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from neurocast.simulate.config import REGION_GROUPS, SimulationConfig
from neurocast.simulate.subjects import Subject, rng_for

_GROUP_PATTERNS: list[tuple[str, str]] = [
    ("hippocampus", r"hippocamp"),
    ("amygdala", r"amygdal"),
    ("ventricles", r"ventric|inf[-_ ]?lat[-_ ]?vent|\bvent\b"),
    ("cerebellum", r"cerebell|vermis"),
    ("brainstem", r"stem|pons|medulla|midbrain"),
    ("deep_gm", r"thalam|caudate|putamen|pallid|accumbens|ventral[-_ ]?dc|basal[-_ ]?forebrain|diencephal"),
    ("white_matter", r"white|\bwm\b|corpus[-_ ]?callos|fornix|cerebral[-_ ]?wm"),
    ("cortex", r"cortex|cortical|\bgm\b|grey|gray|gyrus|lobe|frontal|parietal|temporal|occipital|insula|cingulate|cuneus|precuneus|fusiform|entorhinal|pole|operculum|orbital"),
]
_BALANCE_PATTERNS = r"\bcsf\b|cerebrospinal|extra[-_ ]?cerebral|background|unknown"

SHELL_LAYERS: tuple[tuple[str, float, float], ...] = (
    # (tissue, thickness mm, intensity relative to white matter)
    ("csf", 1.5, 0.08),
    ("inner_table", 2.0, 0.05),
    ("diploe", 2.5, 0.55),
    ("outer_table", 1.5, 0.05),
    ("muscle", 1.5, 0.45),
    ("fat", 3.5, 1.05),
    ("skin", 1.5, 0.6),
)
"""Layers of the synthetic head shell, from the brain outward."""


def region_group(name: str) -> str | None:
    """Map an atlas region name onto a simulator region group (``None``: the balance tissue)."""
    text = str(name).lower().replace("_", " ")
    if re.search(_BALANCE_PATTERNS, text) and not re.search(r"ventric", text):
        return None
    for group, pattern in _GROUP_PATTERNS:
        if re.search(pattern, text):
            return group
    return None


def _column(frame: pd.DataFrame, candidates: tuple[str, ...]) -> str:
    for c in candidates:
        if c in frame.columns:
            return c
    raise KeyError(f"atlas regions table has none of the columns {candidates}; it has {list(frame.columns)}")


def _source_labels(row: pd.Series) -> tuple[int, ...]:
    cell = row.get("source_labels") if hasattr(row, "get") else None
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return (int(row["label"]),)
    if isinstance(cell, (tuple, list, np.ndarray)):
        return tuple(int(v) for v in cell)
    return tuple(int(float(t)) for t in str(cell).replace(",", " ").split())


def label_groups(regions: pd.DataFrame) -> dict[int, str | None]:
    """Region group of every label value of the atlas image.

    Single-label regions are mapped by their name (:func:`region_group`). A label that only
    appears in composite regions (e.g. the cortical labels of ``Grey-Matter`` and the lobar white
    matter of ``White-Matter`` in the default atlas) takes the group of the first composite, in
    table order, whose name maps to a group; the rest (extra-cerebral CSF, optic chiasm...) is
    ``None``: the balance tissue.
    """
    out: dict[int, str | None] = {}
    composites = []
    for _, row in regions.iterrows():
        labs = _source_labels(row)
        if len(labs) == 1:
            out[labs[0]] = region_group(row["name"])
        else:
            composites.append((region_group(row["name"]), labs))
    for group, labs in composites:
        for v in labs:
            if v not in out and group is not None:
                out[v] = group
    for _, labs in composites:
        for v in labs:
            out.setdefault(v, None)
    return out


@dataclass
class TemplateAssets:
    """Template, brain mask and atlas on one working grid (shared by all subjects).

    Attributes:
        regions: the atlas's regions: ``label`` (region index), ``name``, ``source_labels`` (tuple
            of label values), ``composite`` (more than one label), ``group`` (simulator region
            group of all its labels, or ``None`` when they differ or belong to the balance).
        groups_of_labels: label value -> region group (``None``: balance tissue).
    """

    grid: Any
    field_shape: tuple[int, int, int]
    field_affine: np.ndarray
    t1: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    regions: pd.DataFrame
    groups_of_labels: dict[int, str | None]
    white_matter: float

    @property
    def shape(self) -> tuple[int, int, int]:
        """The working grid's shape."""
        return tuple(self.grid.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """The working grid's voxel-to-mm matrix."""
        return np.asarray(self.grid.affine)

    @property
    def spacing(self) -> float:
        """Mean voxel size of the working grid (mm)."""
        return float(np.mean(self.grid.spacing_mm))

    def group_masks(self, labels: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(group -> boolean mask, balance mask) for a label map in this atlas's labelling."""
        groups: dict[str, np.ndarray] = {}
        for g in REGION_GROUPS:
            values = [v for v, gg in self.groups_of_labels.items() if gg == g]
            if values:
                m = np.isin(labels, values)
                if m.any():
                    groups[g] = m
        balance = ~np.any(np.stack(list(groups.values())), axis=0) if groups else np.ones(labels.shape, bool)
        return groups, balance


@functools.lru_cache(maxsize=4)
def template_assets(grid_spacing_mm: float, field_spacing_mm: float) -> TemplateAssets:
    """Template T1w, brain mask and atlas on ``working_grid(grid_spacing_mm)`` (cached)."""
    from neurocast.registration.atlas import load_atlas, template_on_grid
    from neurocast.registration.deformation import coarse_shape, field_affine
    from neurocast.registration.template import load_template, working_grid
    from neurocast.registration.transforms import resample

    grid = working_grid(grid_spacing_mm)
    t1 = np.asarray(template_on_grid(grid).dataobj, dtype=np.float32)
    mask_img = load_template("brain_mask", 1)
    src_spacing = float(np.sqrt((mask_img.affine[:3, :3] ** 2).sum(axis=0)).mean())
    sigma = max(0.0, 0.42 * (grid_spacing_mm / src_spacing - 1.0))
    mask_src = np.asarray(mask_img.dataobj, dtype=np.float32)
    if sigma > 0:
        mask_src = ndimage.gaussian_filter(mask_src, sigma)
    mask = resample(mask_src, mask_img.affine, grid.shape, grid.affine, order=1) > 0.5
    t1 = np.where(mask, t1, 0.0).astype(np.float32)

    atlas = load_atlas(grid)
    labels = np.asarray(atlas.labels.dataobj).astype(np.int16)
    if labels.shape != tuple(grid.shape):
        raise ValueError(f"atlas labels {labels.shape} are not on the working grid {grid.shape}")
    raw = atlas.regions.copy()
    lab_col = _column(raw, ("index", "label", "value", "id"))
    name_col = _column(raw, ("name", "region", "label_name"))
    regions = pd.DataFrame({"label": raw[lab_col].astype(int).to_numpy(), "name": raw[name_col].astype(str).to_numpy()})
    regions["source_labels"] = [
        _source_labels(pd.Series({"label": lab, "source_labels": raw["source_labels"].iloc[i] if "source_labels" in raw else None}))
        for i, lab in enumerate(regions["label"])
    ]
    regions = regions[regions["label"] != 0].reset_index(drop=True)
    groups_of_labels = label_groups(regions)
    regions["composite"] = [len(s) > 1 for s in regions["source_labels"]]
    regions["group"] = [
        (lambda gs: gs.pop() if len(gs) == 1 else None)({groups_of_labels.get(v) for v in labs})
        for labs in regions["source_labels"]
    ]
    wm_values = [v for v, g in groups_of_labels.items() if g == "white_matter"]
    wm_mask = np.isin(labels, wm_values) & mask
    white_matter = float(np.median(t1[wm_mask])) if wm_mask.any() else float(np.percentile(t1[mask], 75))
    fshape = coarse_shape(grid.shape, field_spacing_mm / grid_spacing_mm)
    faff = field_affine(grid.affine, grid.shape, fshape)
    return TemplateAssets(grid, fshape, faff, t1, mask, labels, regions, groups_of_labels, white_matter)


@dataclass
class SubjectAnatomy:
    """A subject's baseline brain on the working grid (template space)."""

    image: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    groups: dict[str, np.ndarray]
    balance: np.ndarray
    white_matter: float
    parameters: dict[str, Any] = field(default_factory=dict)


def anatomy_targets(subject: Subject, rates: Any, config: SimulationConfig, rng: np.random.Generator) -> tuple[dict[str, float], float]:
    """Log volume of each region group relative to the template, and the ventricle log scale."""
    vent = (
        config.ventricle_log_scale.get(subject.diagnosis, 0.5)
        + config.ventricle_log_scale_per_decade * (subject.age - config.reference_age) / 10.0
        + rng.normal(0.0, config.ventricle_log_scale_sd)
    )
    vent = float(np.clip(vent, -0.3, 1.4))
    targets = {}
    for g, lv in rates.log_volume_per_year().items():
        if g == "ventricles":
            targets[g] = vent
        else:
            targets[g] = float(config.baseline_atrophy_years * lv)
    return targets, vent


def make_anatomy(
    seed: int, subject: Subject, rates: Any, assets: TemplateAssets, config: SimulationConfig
) -> SubjectAnatomy:
    """Warp the template into the subject's baseline anatomy (see the module docstring)."""
    from neurocast.registration.deformation import integrate_velocity, warp
    from neurocast.simulate.fields import calibrated_velocity, smooth_random_field

    rng = rng_for(seed, subject.index, "anatomy")
    targets, vent = anatomy_targets(subject, rates, config, rng)
    groups_t, balance_t = assets.group_masks(assets.labels)
    v_vol, achieved = calibrated_velocity(groups_t, targets, balance_t, assets.field_shape, max_gain=2.5)
    fspacing = np.sqrt((assets.field_affine[:3, :3] ** 2).sum(axis=0))
    corr = config.shape_correlation_mm / float(fspacing.mean())
    noise = smooth_random_field(rng, assets.field_shape, corr, channels=3)
    v_shape = torch.from_numpy(noise * (config.shape_variation_mm / fspacing[:, None, None, None]).astype(np.float32))[None]
    v = v_vol + v_shape
    u = integrate_velocity(v)
    img = warp(torch.from_numpy(assets.t1)[None, None], u)[0, 0].numpy()
    lab = warp(torch.from_numpy(assets.labels.astype(np.int32))[None, None], u, mode="nearest")[0, 0].numpy().astype(np.int16)
    mask = warp(torch.from_numpy(assets.brain_mask.astype(np.float32))[None, None], u)[0, 0].numpy() > 0.5
    img = np.where(mask, img, 0.0).astype(np.float32)
    lab = np.where(mask, lab, 0).astype(np.int16)
    groups, balance = assets.group_masks(lab)
    params = {
        "source": "template",
        "ventricle_log_scale": vent,
        "anatomy_log_volume_targets": targets,
        "anatomy_log_volume_linear": achieved,
        "shape_variation_mm": config.shape_variation_mm,
    }
    return SubjectAnatomy(img.astype(np.float32), lab, mask, groups, balance, assets.white_matter, params)


BASE_SCAN_EXCLUDE = re.compile(r"(dlmuse|mask|seg|label|dseg|probseg)", re.IGNORECASE)
LABEL_SUFFIXES = ("_DLMUSE.nii.gz", "_dseg.nii.gz", "_DLMUSE.nii", "_dseg.nii")


def list_base_scans(folder: str | Path) -> list[Path]:
    """T1w scans in ``folder`` (``*.nii``/``*.nii.gz``, not label maps or masks), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: base scan folder does not exist")
    scans = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.name.endswith((".nii", ".nii.gz")) and not BASE_SCAN_EXCLUDE.search(p.name)
    )
    if not scans:
        raise FileNotFoundError(f"{folder}: no T1w NIfTI scans found for --base-scans")
    return scans


def companion_labels(scan: Path) -> Path | None:
    """A label map beside a base scan (``<stem>_DLMUSE.nii.gz`` or ``<stem>_dseg.nii.gz``), if any."""
    stem = scan.name[: -len(".nii.gz")] if scan.name.endswith(".nii.gz") else scan.stem
    for suffix in LABEL_SUFFIXES:
        cand = scan.with_name(stem + suffix)
        if cand.is_file():
            return cand
    return None


@functools.lru_cache(maxsize=16)
def _preprocessed_base(path: str, grid_spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """(image, brain mask, labels or None, qc) of a base scan on the working grid (cached)."""
    from neurocast.registration.preprocess import preprocess_t1w
    from neurocast.registration.template import working_grid
    from neurocast.registration.transforms import resample

    grid = working_grid(grid_spacing_mm)
    res = preprocess_t1w(path, grid=grid, seed=0, on_fail="report")
    image = np.asarray(res.image.dataobj, dtype=np.float32)
    mask = np.asarray(res.brain_mask.dataobj) > 0
    labels = None
    lab_path = companion_labels(Path(path))
    if lab_path is not None:
        import nibabel as nib

        lab_img = nib.load(str(lab_path))
        labels = resample(
            np.asarray(lab_img.dataobj).astype(np.int32), lab_img.affine, grid.shape, grid.affine,
            world_matrix=res.template_to_native, order=0,
        ).astype(np.int16)
    qc = {k: v for k, v in res.qc.items() if isinstance(v, (bool, int, float, str))}
    return image, mask, labels, qc


def make_base_anatomy(
    seed: int, subject: Subject, rates: Any, assets: TemplateAssets, config: SimulationConfig
) -> SubjectAnatomy:
    """Baseline anatomy from a real scan (``config.base_scans``), preprocessed into template space.

    The scan is drawn per subject from the folder. Its labels are its own label map when one lies
    beside it (``<stem>_DLMUSE.nii.gz``/``_dseg``) and uses the atlas's label numbers, else the
    atlas labels (affine alignment only) inside the scan's brain mask. Intensities are scaled so
    that the white-matter peak matches the template's white matter.
    """
    scans = list_base_scans(config.base_scans)  # type: ignore[arg-type]
    rng = rng_for(seed, subject.index, "base_scan")
    scan = scans[int(rng.integers(len(scans)))]
    image, mask, own_labels, qc = _preprocessed_base(str(scan.resolve()), float(config.grid_spacing_mm))
    known = set(assets.groups_of_labels)
    source_labels = "atlas"
    if own_labels is not None:
        present = set(int(v) for v in np.unique(own_labels)) - {0}
        if present and len(present & known) >= 0.5 * len(present):
            labels = np.where(np.isin(own_labels, list(known)), own_labels, 0).astype(np.int16)
            source_labels = str(companion_labels(scan).name)  # type: ignore[union-attr]
        else:
            labels = assets.labels.copy()
    else:
        labels = assets.labels.copy()
    labels = np.where(mask, labels, 0).astype(np.int16)
    img = (np.where(mask, image, 0.0) * assets.white_matter).astype(np.float32)
    groups, balance = assets.group_masks(labels)
    params = {"source": f"base:{scan.name}", "labels": source_labels, "preprocess_qc": qc,
              "ventricle_log_scale": None}
    return SubjectAnatomy(img, labels, mask, groups, balance, assets.white_matter, params)


@dataclass
class Head:
    """The subject's head on a padded canvas around the working grid (template space)."""

    canvas_affine: np.ndarray
    canvas_shape: tuple[int, int, int]
    pad: int
    shell: np.ndarray
    outline_mm: np.ndarray
    centre_mm: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    def compose(self, brain: np.ndarray) -> np.ndarray:
        """Canvas image: the brain (working grid) inside, the shell around it."""
        p = self.pad
        out = self.shell.copy()
        sl = tuple(slice(p, p + n) for n in brain.shape)
        out[sl] = out[sl] + brain
        return out

    def embed(self, array: np.ndarray) -> np.ndarray:
        """A working-grid array placed on the canvas (zeros around it)."""
        out = np.zeros(self.canvas_shape, dtype=np.asarray(array).dtype)
        out[tuple(slice(self.pad, self.pad + n) for n in array.shape)] = array
        return out


def make_head(
    seed: int, subject: Subject, anatomy: SubjectAnatomy, assets: TemplateAssets, skull_stripped: bool
) -> Head:
    """Build the canvas and the synthetic scalp/skull shell.

    Every head is acquired whole: a subject delivered skull-stripped is stripped after the
    acquisition (:func:`neurocast.simulate.acquisition.skull_strip`), as a skull-stripping tool
    strips a scanner's image, so its artefacts carry the scalp's ghosts into the brain.
    ``skull_stripped`` is recorded in the head's parameters.
    """
    from neurocast.simulate.fields import smooth_random_field

    spacing = assets.spacing
    total = sum(t for _, t, _ in SHELL_LAYERS)
    pad = int(np.ceil((total * 1.35 + 4.0) / spacing))
    shape = tuple(int(n + 2 * pad) for n in assets.shape)
    aff = assets.affine.copy()
    aff[:3, 3] = aff[:3, 3] - aff[:3, :3] @ np.full(3, pad)
    mask = np.zeros(shape, dtype=bool)
    sl = tuple(slice(pad, pad + n) for n in assets.shape)
    mask[sl] = anatomy.brain_mask
    params: dict[str, Any] = {"skull_stripped": bool(skull_stripped)}
    rng = rng_for(seed, subject.index, "anatomy", 1)
    scale = float(rng.uniform(0.85, 1.2))
    noise = smooth_random_field(rng, shape, 25.0 / spacing, channels=1)[0]
    dist = ndimage.distance_transform_edt(~mask) * spacing
    d = dist / (scale * (1.0 + 0.2 * np.clip(noise, -2.5, 2.5)))
    edges = np.cumsum([0.0] + [t for _, t, _ in SHELL_LAYERS])
    # piecewise-constant profile with 0.5 mm ramps between layers
    shell = np.zeros(shape, dtype=np.float32)
    wm = anatomy.white_matter
    for (_, _, rel), a, b in zip(SHELL_LAYERS, edges[:-1], edges[1:], strict=True):
        w = np.clip((d - a) / 0.5 + 0.5, 0, 1) * np.clip((b - d) / 0.5 + 0.5, 0, 1)
        shell += (w * rel * wm).astype(np.float32)
    shell[mask] = 0.0
    params.update({"shell_thickness_scale": scale, "shell_layers": [list(x) for x in SHELL_LAYERS]})
    head_mask = d < edges[-1]
    outline = head_mask & ~ndimage.binary_erosion(head_mask)
    pts = np.argwhere(outline)
    step = max(1, len(pts) // 6000)
    pts = pts[::step].astype(float)
    points_mm = pts @ aff[:3, :3].T + aff[:3, 3]
    bidx = np.argwhere(anatomy.brain_mask)
    centre = (bidx.mean(axis=0) @ assets.affine[:3, :3].T + assets.affine[:3, 3]) if len(bidx) else points_mm.mean(axis=0)
    return Head(aff, shape, pad, shell, points_mm, np.asarray(centre, float), params)  # type: ignore[arg-type]


__all__ = [
    "SHELL_LAYERS",
    "Head",
    "SubjectAnatomy",
    "TemplateAssets",
    "anatomy_targets",
    "list_base_scans",
    "make_anatomy",
    "make_base_anatomy",
    "make_head",
    "region_group",
    "template_assets",
]
