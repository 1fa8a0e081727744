"""The regional atlas in template space: a label image plus a table of regions.

neurocast ships one default atlas, built from the six healthy IXI adults of the shared test data
and their DLMUSE label maps (see :mod:`neurocast.registration.build_atlas`, which rebuilds it):

* ``tpl-MNI152NLin2009aSym_res-2_atlas-neurocast_dseg.nii.gz``: int16 labels on the 2 mm working
  grid (:func:`~neurocast.registration.template.working_grid`), voxel values = DLMUSE label numbers
  (Neuromorphometrics/MUSE convention, e.g. 47/48 right/left hippocampus; 0 = outside the head);
* ``tpl-MNI152NLin2009aSym_res-2_atlas-neurocast_dseg.tsv``: the regions, one row each, columns

  ``index``          integer id of the region (the label number for a one-label region; 1001+ for
                     a composite region),
  ``name``           unique name (FreeSurfer style, e.g. ``Left-Hippocampus``, ``Grey-Matter``),
  ``abbreviation``   short unique name (e.g. ``lHip``, ``GM``),
  ``hemisphere``     ``left``, ``right``, ``bilateral`` or ``midline``,
  ``source_labels``  the label values of the image that make up the region, space separated
                     (one value, or several for a composite: the region is their union);

* ``..._dseg.json``: how it was built (subjects, seed, registration parameters, version).

Composite regions of the default atlas (DLMUSE label numbers; the single labels are named in the
table; the grey/white-matter split follows MUSE's derived regions 601 and 604, which it reproduces
exactly on the IXI label maps):

* ``Hippocampus`` = 47 48; ``Amygdala`` = 31 32; ``Lateral-Ventricles`` = 51 52;
* ``Ventricles`` = 4 11 49 50 51 52 (3rd, 4th, inferior lateral and lateral ventricles);
* ``Grey-Matter`` (MUSE 601) = cortical grey matter (every label >= 100) + deep grey matter (23 30
  accumbens, 31 32 amygdala, 36 37 caudate, 47 48 hippocampus, 55 56 pallidum, 57 58 putamen,
  59 60 thalamus, 75 76 basal forebrain) + cerebellar cortex (38 39) + vermis (71 72 73);
* ``White-Matter`` (MUSE 604) = cerebral white matter 81-95 (lobar white matter, fornix, internal
  capsule, corpus callosum) + cerebellar white matter 40 41 + ventral diencephalon 61 62;
* ``CSF`` = extraventricular CSF (1, 46) + all ventricles (4 11 49 50 51 52);
* ``Brain-Parenchyma`` = Grey-Matter + White-Matter + brainstem (35);
* ``Intracranial`` = every label > 0 (brain, CSF and the optic chiasm 69: the DLMUSE intracranial
  mask, MUSE 702).

Users can bring their own atlas: :meth:`Atlas.from_files` reads any integer label image plus a
table with at least ``index``, ``name`` and ``source_labels`` and checks them, with errors that
name the file and the problem.

Example:
    >>> from neurocast.registration.atlas import load_atlas
    >>> atlas = load_atlas()  # doctest: +SKIP
    >>> atlas.source_labels("Left-Hippocampus")  # doctest: +SKIP
    (48,)
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from neurocast.errors import InvalidImageError, InvalidTableError
from neurocast.registration.template import TEMPLATE_NAME, Grid, load_template, working_grid
from neurocast.registration.transforms import resample

ATLAS_NAME = "neurocast"
ATLAS_STEM = f"tpl-{TEMPLATE_NAME}_res-2_atlas-{ATLAS_NAME}_dseg"
ATLAS_DSEG = f"{ATLAS_STEM}.nii.gz"
ATLAS_TSV = f"{ATLAS_STEM}.tsv"
ATLAS_JSON = f"{ATLAS_STEM}.json"
REQUIRED_COLUMNS = ("index", "name", "source_labels")
TABLE_COLUMNS = ("index", "name", "abbreviation", "hemisphere", "source_labels")
HEMISPHERES = ("left", "right", "bilateral", "midline")
MAX_LABEL = 32767  # int16

# --------------------------------------------------------------------------------------------------
# region definitions of the default atlas (DLMUSE label numbers)

_SINGLE: list[tuple[int, str, str, str]] = [
    # index, name, abbreviation, hemisphere  (names as in the shared data's labels.tsv)
    (4, "3rd-Ventricle", "3rdVen", "midline"),
    (11, "4th-Ventricle", "4thVen", "midline"),
    (23, "Right-Accumbens-Area", "rAcc", "right"),
    (30, "Left-Accumbens-Area", "lAcc", "left"),
    (31, "Right-Amygdala", "rAmy", "right"),
    (32, "Left-Amygdala", "lAmy", "left"),
    (35, "Brain-Stem", "BStem", "midline"),
    (36, "Right-Caudate", "rCau", "right"),
    (37, "Left-Caudate", "lCau", "left"),
    (38, "Right-Cerebellum-Exterior", "rCbeCx", "right"),
    (39, "Left-Cerebellum-Exterior", "lCbeCx", "left"),
    (40, "Right-Cerebellum-White-Matter", "rCbeWM", "right"),
    (41, "Left-Cerebellum-White-Matter", "lCbeWM", "left"),
    (47, "Right-Hippocampus", "rHip", "right"),
    (48, "Left-Hippocampus", "lHip", "left"),
    (49, "Right-Inf-Lat-Vent", "rInfLatVen", "right"),
    (50, "Left-Inf-Lat-Vent", "lInfLatVen", "left"),
    (51, "Right-Lateral-Ventricle", "rLatVen", "right"),
    (52, "Left-Lateral-Ventricle", "lLatVen", "left"),
    (55, "Right-Pallidum", "rPal", "right"),
    (56, "Left-Pallidum", "lPal", "left"),
    (57, "Right-Putamen", "rPut", "right"),
    (58, "Left-Putamen", "lPut", "left"),
    (59, "Right-Thalamus", "rTha", "right"),
    (60, "Left-Thalamus", "lTha", "left"),
    (61, "Right-Ventral-DC", "rVenDC", "right"),
    (62, "Left-Ventral-DC", "lVenDC", "left"),
    (75, "Left-Basal-Forebrain", "lBasFor", "left"),
    (76, "Right-Basal-Forebrain", "rBasFor", "right"),
]

DEEP_GM_LABELS = (23, 30, 31, 32, 36, 37, 47, 48, 55, 56, 57, 58, 59, 60, 75, 76)
CEREBELLAR_GM_LABELS = (38, 39, 71, 72, 73)
WM_LABELS = (40, 41, 61, 62, *range(81, 96))
VENTRICLE_LABELS = (4, 11, 49, 50, 51, 52)
EXTRAVENTRICULAR_CSF_LABELS = (1, 46)
BRAINSTEM_LABELS = (35,)
CORTICAL_MIN_LABEL = 100


def default_region_table(present_labels: Iterable[int]) -> pd.DataFrame:
    """The region table of the default atlas for an image holding ``present_labels``.

    Composite regions list only the labels present in the image (cortical labels are all labels
    >= 100 that occur).
    """
    present = sorted({int(v) for v in present_labels} - {0})
    cortical = tuple(v for v in present if v >= CORTICAL_MIN_LABEL)
    gm = tuple(sorted((*cortical, *DEEP_GM_LABELS, *CEREBELLAR_GM_LABELS)))
    wm = tuple(sorted(WM_LABELS))
    composites: list[tuple[int, str, str, str, tuple[int, ...]]] = [
        (1001, "Hippocampus", "Hip", "bilateral", (47, 48)),
        (1002, "Amygdala", "Amy", "bilateral", (31, 32)),
        (1003, "Lateral-Ventricles", "LatVen", "bilateral", (51, 52)),
        (1004, "Ventricles", "Ven", "bilateral", VENTRICLE_LABELS),
        (1005, "Grey-Matter", "GM", "bilateral", gm),
        (1006, "White-Matter", "WM", "bilateral", wm),
        (1007, "CSF", "CSF", "bilateral", tuple(sorted((*EXTRAVENTRICULAR_CSF_LABELS, *VENTRICLE_LABELS)))),
        (1008, "Brain-Parenchyma", "Brain", "bilateral", tuple(sorted((*gm, *wm, *BRAINSTEM_LABELS)))),
        (1009, "Intracranial", "ICV", "bilateral", tuple(present)),
    ]
    rows = [(i, n, a, h, (i,)) for i, n, a, h in _SINGLE]
    rows += composites
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    keep = [all(v in present for v in labs) or idx >= 1000 for idx, labs in zip(table["index"], table["source_labels"], strict=True)]
    table = table[keep].reset_index(drop=True)
    table["source_labels"] = [tuple(v for v in labs if v in present) for labs in table["source_labels"]]
    return table


# --------------------------------------------------------------------------------------------------
# the Atlas


def format_labels(labels: Iterable[int]) -> str:
    """``source_labels`` as written in a TSV cell: space-separated integers."""
    return " ".join(str(int(v)) for v in labels)


def parse_labels(cell: object) -> tuple[int, ...]:
    """Parse a ``source_labels`` cell (integers separated by spaces, commas or semicolons)."""
    if isinstance(cell, tuple | list | np.ndarray):
        return tuple(int(v) for v in cell)
    text = str(cell).replace(",", " ").replace(";", " ").split()
    if not text:
        raise ValueError("no label values")
    out = []
    for t in text:
        f = float(t)  # raises ValueError on text
        if not f.is_integer():
            raise ValueError(f"{t!r} is not an integer")
        out.append(int(f))
    return tuple(out)


@dataclass
class Atlas:
    """A label image in template space and its table of regions.

    Attributes:
        labels: int16 label image (RAS+ grid; 0 = background).
        regions: one row per region: ``index`` (int), ``name``, ``abbreviation``, ``hemisphere``
            (str) and ``source_labels`` (tuple of label values whose union is the region).
        source: where it was read from (for provenance), or ``None``.
    """

    labels: nib.Nifti1Image
    regions: pd.DataFrame
    source: dict = field(default_factory=dict)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_files(cls, dseg: str | os.PathLike[str], tsv: str | os.PathLike[str]) -> Atlas:
        """Read a user atlas: an integer label image and its region table (TSV).

        The table needs the columns ``index`` (unique integers), ``name`` (unique, non-empty) and
        ``source_labels`` (label values of the image, separated by spaces); ``abbreviation``
        (default: the name) and ``hemisphere`` (``left``/``right``/``bilateral``/``midline``, default
        ``n/a``) are optional. A one-label region may leave ``source_labels`` empty (``n/a``):
        its ``index`` is then the label value.

        Raises:
            InvalidImageError: the label image is missing, not 3-D, or not integer-valued.
            InvalidTableError: the table is missing or malformed; every problem is listed
                (column, row, value, message), including labels that do not occur in the image.
        """
        labels = _read_label_image(dseg)
        present = set(np.unique(np.asarray(labels.dataobj)).tolist())
        regions = _read_region_table(tsv, present)
        return cls(labels, regions, {"dseg": str(Path(dseg)), "tsv": str(Path(tsv))})

    # -- geometry -------------------------------------------------------------------------------

    @property
    def grid(self) -> Grid:
        """The grid of :attr:`labels`."""
        return Grid(tuple(int(s) for s in self.labels.shape[:3]), np.asarray(self.labels.affine, float))  # type: ignore[arg-type]

    @property
    def data(self) -> np.ndarray:
        """The label array (int16)."""
        return np.asarray(self.labels.dataobj, dtype=np.int16)

    def resample(self, grid: Grid) -> Atlas:
        """The atlas on another grid in template space (nearest neighbour)."""
        if grid == self.grid:
            return self
        out = resample(self.data, self.labels.affine, grid.shape, grid.affine, order=0).astype(np.int16)
        return Atlas(grid.image(out, dtype=np.int16), self.regions.copy(), dict(self.source, grid=str(grid.shape)))

    # -- regions --------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Region names, in table order."""
        return list(self.regions["name"])

    def region(self, name: str) -> pd.Series:
        """The table row of a region, by name or abbreviation (case-insensitive).

        Raises:
            KeyError: no such region (the message suggests close names).
        """
        key = str(name).strip().lower()
        for col in ("name", "abbreviation"):
            hit = self.regions[self.regions[col].astype(str).str.lower() == key]
            if len(hit):
                return hit.iloc[0]
        choices = [*self.regions["name"].astype(str), *self.regions["abbreviation"].astype(str)]
        close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no region named {name!r} in the atlas{hint}")

    def source_labels(self, name: str) -> tuple[int, ...]:
        """Label values making up a region."""
        return tuple(self.region(name)["source_labels"])

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask of a region on the atlas grid."""
        return np.isin(self.data, self.source_labels(name))

    def table_for_tsv(self) -> pd.DataFrame:
        """The region table as written to TSV (``source_labels`` as space-separated text)."""
        return region_table_for_tsv(self.regions)


def region_table_for_tsv(regions: pd.DataFrame) -> pd.DataFrame:
    """A region table with ``source_labels`` as space-separated text, columns in standard order."""
    out = regions.copy()
    out["source_labels"] = [format_labels(v) for v in out["source_labels"]]
    cols = [c for c in TABLE_COLUMNS if c in out.columns] + [c for c in out.columns if c not in TABLE_COLUMNS]
    return out[cols]


def _read_label_image(path: str | os.PathLike[str]) -> nib.Nifti1Image:
    from neurocast.io.nifti import read_info

    path = Path(path)
    read_info(path)  # existence, format and geometry checks, with clear errors
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if not np.all(np.isfinite(data)):
        raise InvalidImageError(path, "label image contains NaN or Inf")
    if not np.allclose(data, np.round(data)):
        raise InvalidImageError(path, "label image is not integer-valued (is it an intensity image?)")
    if data.min() < 0 or data.max() > MAX_LABEL:
        raise InvalidImageError(path, f"label values must lie in 0..{MAX_LABEL}, found {data.min()}..{data.max()}")
    if data.max() == 0:
        raise InvalidImageError(path, "label image is empty (all zeros)")
    arr = np.round(data).astype(np.int16)
    out = nib.Nifti1Image(arr, img.affine)
    out = nib.as_closest_canonical(out)
    out = nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.int16), out.affine)
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    return out


def _read_region_table(path: str | os.PathLike[str], present: set[int]) -> pd.DataFrame:
    path = Path(path)

    def fail(problems: list[dict]) -> None:
        raise InvalidTableError(path, problems)

    if not path.is_file():
        fail([{"column": None, "row": None, "value": None, "message": "file does not exist"}])
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        fail([{"column": None, "row": None, "value": None, "message": f"not a readable TSV table ({exc})"}])
    problems: list[dict] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns and not (c == "source_labels" and "index" in frame.columns)]
    for c in missing:
        problems.append({"column": c, "row": None, "value": None,
                         "message": f"required column is missing (columns found: {list(frame.columns)})"})
    if problems:
        fail(problems)
    if len(frame) == 0:
        fail([{"column": None, "row": None, "value": None, "message": "table has no regions"}])
    if "source_labels" not in frame.columns:
        frame["source_labels"] = ""
    if "abbreviation" not in frame.columns:
        frame["abbreviation"] = frame["name"]
    if "hemisphere" not in frame.columns:
        frame["hemisphere"] = "n/a"
    indices, labels = [], []
    for row, rec in enumerate(frame.to_dict("records"), start=1):
        try:
            f = float(rec["index"])
            if not f.is_integer():
                raise ValueError
            idx = int(f)
        except ValueError:
            problems.append({"column": "index", "row": row, "value": rec["index"], "message": "expected an integer"})
            idx = None
        indices.append(idx)
        name = str(rec["name"]).strip()
        if name in ("", "n/a"):
            problems.append({"column": "name", "row": row, "value": rec["name"], "message": "region name is empty"})
        hemi = str(rec["hemisphere"]).strip()
        if hemi not in (*HEMISPHERES, "n/a", ""):
            problems.append({"column": "hemisphere", "row": row, "value": hemi,
                             "message": f"must be one of {list(HEMISPHERES)} or n/a"})
        cell = str(rec["source_labels"]).strip()
        labs: tuple[int, ...] = ()
        if cell in ("", "n/a"):
            if idx is not None:
                labs = (idx,)
        else:
            try:
                labs = parse_labels(cell)
            except ValueError as exc:
                problems.append({"column": "source_labels", "row": row, "value": cell,
                                 "message": f"expected label values separated by spaces ({exc})"})
        bad = [v for v in labs if v <= 0 or v not in present]
        if bad:
            problems.append({"column": "source_labels", "row": row, "value": cell or str(idx),
                             "message": f"label value(s) {bad} do not occur in the label image"})
        labels.append(labs)
    for col in ("name", "abbreviation"):
        dup = frame[col][frame[col].duplicated()]
        for row, v in dup.items():
            problems.append({"column": col, "row": int(row) + 1, "value": v, "message": "duplicate value"})
    idx_series = pd.Series(indices)
    for row, v in idx_series[idx_series.notna() & idx_series.duplicated()].items():
        problems.append({"column": "index", "row": int(row) + 1, "value": v, "message": "duplicate index"})
    if problems:
        fail(problems)
    out = pd.DataFrame({
        "index": pd.Series(indices, dtype=int),
        "name": frame["name"].str.strip(),
        "abbreviation": frame["abbreviation"].str.strip(),
        "hemisphere": frame["hemisphere"].str.strip().replace("", "n/a"),
        "source_labels": labels,
    })
    extra = [c for c in frame.columns if c not in out.columns]
    for c in extra:
        out[c] = frame[c]
    return out


# --------------------------------------------------------------------------------------------------
# the shipped atlas


def atlas_dir() -> Path:
    """Folder of the shipped atlas files (inside the installed package)."""
    return Path(str(resources.files("neurocast").joinpath("data", "atlas")))


@functools.lru_cache(maxsize=1)
def _shipped() -> Atlas:
    d = atlas_dir()
    dseg, tsv = d / ATLAS_DSEG, d / ATLAS_TSV
    if not dseg.is_file() or not tsv.is_file():
        raise FileNotFoundError(
            f"the default atlas is missing from {d}; rebuild it with "
            "`python -m neurocast.registration.build_atlas`"
        )
    atlas = Atlas.from_files(dseg, tsv)
    atlas.source["name"] = ATLAS_NAME
    return atlas


def load_atlas(grid: Grid | None = None) -> Atlas:
    """Load the shipped default atlas, optionally resampled (nearest neighbour) to ``grid``.

    Args:
        grid: a grid in template space (e.g. ``working_grid(1.0)``); ``None`` keeps the atlas's own
            2 mm working grid.

    Returns:
        A new :class:`Atlas` (its table may be modified freely).
    """
    base = _shipped()
    atlas = Atlas(base.labels, base.regions.copy(), dict(base.source))
    return atlas if grid is None else atlas.resample(grid)


def template_on_grid(grid: Grid | None = None) -> nib.Nifti1Image:
    """The template T1w (brain-extracted, [0, 1]) resampled linearly from 1 mm onto ``grid``."""
    grid = working_grid(2.0) if grid is None else grid
    import scipy.ndimage as ndi

    t1 = load_template("T1w", 1)
    src = np.asarray(t1.dataobj, dtype=np.float32)
    spacing = np.asarray(grid.spacing_mm)
    if np.any(spacing > 1.0):  # anti-aliasing: Gaussian of the FWHM that takes 1 mm to the grid's
        sigma = np.sqrt(np.clip(spacing**2 - 1.0, 0, None)) / 2.3548
        src = ndi.gaussian_filter(src, sigma)
    data = resample(src, t1.affine, grid.shape, grid.affine, order=1)
    return grid.image(np.clip(data, 0, None).astype(np.float32))
