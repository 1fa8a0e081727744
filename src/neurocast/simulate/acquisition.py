"""Acquisition: from the subject's template-space head to a raw scanner image.

For each visit:

1. **Head pose and scanner grid.** The template-space head is placed in scanner coordinates by
   ``template_to_native = P_v @ S``: ``S`` scales the head about the brain centre (the subject's
   head size and shape, fixed per subject) and ``P_v`` is a rigid pose (rotation of a few degrees
   about each axis, translation of a few mm) drawn per visit. The scanner's voxel grid has the
   protocol's voxel size, a stored orientation (e.g. ``LPS``, ``PSR``) and an oblique tilt of a few
   degrees; its field of view covers the head. The truth keeps ``native_to_template`` (the inverse,
   RAS mm to template RAS mm) for every visit.
2. **Resampling** of the template-space head into the scanner grid (trilinear; masks nearest).
3. **Intensities** (TorchIO transforms, parameters drawn here and recorded): contrast
   curve (``Gamma``, subject gamma times a small visit change), smooth multiplicative bias field
   (``BiasField``; evaluated on a 4x coarser copy of the grid and interpolated, which is the same
   smooth polynomial at a fraction of the cost), optional artefact (:mod:`.anomalies`), Rician noise
   (magnitude of the image plus complex Gaussian noise, SD drawn per visit; TorchIO only has
   Gaussian noise), and a scanner gain mapping white matter
   to a few hundred to a few thousand; stored as int16.
4. **Skull stripping** (subjects delivered skull-stripped): the acquired image is set to 0
   outside the visit's true brain mask (:func:`skull_strip`), after the artefact and the noise, as
   a skull-stripping tool would deliver it. The mask follows the visit's brain: the baseline's,
   carried by the visit's atrophy and mass effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from neurocast.simulate.config import SimulationConfig
from neurocast.simulate.subjects import rng_for


def rotation_matrix(degrees: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """3x3 rotation about x, then y, then z (degrees)."""
    ax, ay, az = (math.radians(float(d)) for d in degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def orientation_matrix(code: str) -> np.ndarray:
    """3x3 matrix whose column ``k`` is the RAS unit vector of stored voxel axis ``k``."""
    ornt = nib.orientations.axcodes2ornt(tuple(code))
    m = np.zeros((3, 3))
    for k, (axis, flip) in enumerate(ornt):
        m[int(axis), k] = float(flip)
    return m


@dataclass
class Scanner:
    """Per-subject acquisition settings."""

    protocol: int
    orientation: str
    skull_stripped: bool
    log_gamma: float
    gain: float
    head_scale: tuple[float, float, float]


@dataclass
class VisitAcquisition:
    """Everything that shapes one raw image (recorded in the truth)."""

    protocol: int
    voxel_mm: tuple[float, float, float]
    orientation: str
    head_rotation_deg: tuple[float, float, float]
    head_translation_mm: tuple[float, float, float]
    grid_tilt_deg: tuple[float, float, float]
    gamma: float
    bias_coefficients: list[float]
    noise_sd_fraction: float
    noise_seed: int
    gain: float
    template_to_native: np.ndarray = field(repr=False, default_factory=lambda: np.eye(4))
    native_affine: np.ndarray = field(repr=False, default_factory=lambda: np.eye(4))
    native_shape: tuple[int, int, int] = (0, 0, 0)

    @property
    def native_to_template(self) -> np.ndarray:
        """4x4 map from native (scanner RAS mm) to template RAS mm."""
        return np.linalg.inv(self.template_to_native)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record."""
        return {
            "protocol": self.protocol,
            "voxel_mm": [float(v) for v in self.voxel_mm],
            "orientation": self.orientation,
            "head_rotation_deg": [round(float(v), 6) for v in self.head_rotation_deg],
            "head_translation_mm": [round(float(v), 6) for v in self.head_translation_mm],
            "grid_tilt_deg": [round(float(v), 6) for v in self.grid_tilt_deg],
            "gamma": round(float(self.gamma), 6),
            "bias_coefficients": [round(float(c), 6) for c in self.bias_coefficients],
            "noise_sd_fraction": round(float(self.noise_sd_fraction), 6),
            "gain": round(float(self.gain), 4),
            "native_shape": [int(n) for n in self.native_shape],
        }


def draw_scanner(seed: int, subject_index: int, male: bool, config: SimulationConfig) -> Scanner:
    """The subject's scanner, contrast and head size."""
    rng = rng_for(seed, subject_index, "scanner")
    protocol = int(rng.integers(len(config.native_voxel_sizes)))
    orientation = str(config.orientations[int(rng.integers(len(config.orientations)))])
    stripped = bool(rng.random() < config.skull_stripped_fraction)
    log_gamma = float(rng.normal(0.0, config.gamma_subject_sd))
    gain = float(rng.uniform(*config.intensity_scale_range))
    sex = math.sqrt(config.male_head_scale) if male else 1.0 / math.sqrt(config.male_head_scale)
    glob = math.exp(rng.normal(0.0, config.head_scale_sd)) * sex
    axes = np.exp(rng.normal(0.0, config.head_axis_scale_sd, size=3))
    factors = glob * axes
    lo, hi = config.head_volume_ratio_range
    volume = float(np.prod(factors))
    factors = factors * (min(max(volume, lo), hi) / volume) ** (1.0 / 3.0)
    scale = tuple(float(f) for f in factors)
    return Scanner(protocol, orientation, stripped, log_gamma, gain, scale)  # type: ignore[arg-type]


def _n_bias_coefficients(order: int) -> int:
    return sum(1 for x in range(order + 1) for y in range(order + 1 - x) for _ in range(order + 1 - x - y))


def draw_visit_acquisition(
    seed: int,
    subject_index: int,
    visit_index: int,
    scanner: Scanner,
    centre_mm: np.ndarray,
    head_points_mm: np.ndarray,
    config: SimulationConfig,
) -> VisitAcquisition:
    """Draw a visit's pose, grid and intensity settings and build its scanner grid.

    Args:
        centre_mm: (3,) template-space point the head scaling is centred on.
        head_points_mm: (N, 3) template-space points the field of view must cover (the head's
            outline).
    """
    rng = rng_for(seed, subject_index, "acquisition", visit_index)
    protocol = scanner.protocol
    if visit_index > 0 and rng.random() < config.protocol_change_probability and len(config.native_voxel_sizes) > 1:
        others = [p for p in range(len(config.native_voxel_sizes)) if p != scanner.protocol]
        protocol = int(others[int(rng.integers(len(others)))])
    else:
        rng.random()  # keep the stream aligned whatever the branch
    sd = config.rotation_sd_degrees
    rot = tuple(float(np.clip(rng.normal(0, sd), -3 * sd, 3 * sd)) for _ in range(3))
    tr = tuple(float(rng.normal(0, config.translation_sd_mm)) for _ in range(3))
    tilt = tuple(float(np.clip(rng.normal(0, sd), -3 * sd, 3 * sd)) for _ in range(3))
    gamma = math.exp(scanner.log_gamma + rng.normal(0.0, config.gamma_visit_sd))
    ncoef = _n_bias_coefficients(config.bias_field_order)
    cmax = config.bias_field_max_coefficient
    coefs = rng.uniform(-cmax, cmax, size=ncoef).tolist()
    noise = float(rng.uniform(*config.noise_fraction_range))
    noise_seed = int(rng.integers(0, 2**31 - 1))
    voxel = tuple(float(v) for v in config.native_voxel_sizes[protocol])

    # template -> native (scanner) world: scale about the centre, then rigid pose
    s = np.diag([*scanner.head_scale, 1.0])
    to_c = np.eye(4)
    to_c[:3, 3] = -centre_mm
    from_c = np.eye(4)
    from_c[:3, 3] = centre_mm
    pose = np.eye(4)
    pose[:3, :3] = rotation_matrix(rot)
    pose[:3, 3] = tr
    t2n = pose @ from_c @ s @ to_c

    # scanner grid: stored axis directions (orientation code) tilted a little, covering the head
    dirs = rotation_matrix(tilt) @ orientation_matrix(scanner.orientation)
    corners = (t2n[:3, :3] @ np.asarray(head_points_mm, float).T).T + t2n[:3, 3]
    coords = corners @ dirs  # coordinates along the grid axes
    lo = coords.min(axis=0) - 4.0
    hi = coords.max(axis=0) + 4.0
    vox = np.asarray(voxel)
    shape = tuple(int(n) for n in np.ceil((hi - lo) / vox).astype(int) + 1)
    affine = np.eye(4)
    affine[:3, :3] = dirs * vox[None, :]
    affine[:3, 3] = dirs @ lo
    return VisitAcquisition(
        protocol, voxel, scanner.orientation, rot, tr, tilt, gamma, coefs, noise, noise_seed,  # type: ignore[arg-type]
        scanner.gain, t2n, affine, shape,  # type: ignore[arg-type]
    )


def sampling_grid(volume_shape: tuple[int, int, int], volume_affine: np.ndarray, acq: VisitAcquisition) -> torch.Tensor:
    """The ``grid_sample`` grid that reads a template-space volume at the visit's native voxels.

    Args:
        volume_shape: shape of the template-space volume (e.g. the head canvas).
        volume_affine: its voxel-to-mm matrix.
        acq: the visit acquisition (native grid and pose).

    Returns:
        (1, x, y, z, 3) float32 grid in ``align_corners=True`` normalised coordinates.
    """
    # native voxel -> native mm -> template mm -> volume voxel -> normalised [-1, 1]
    m = np.linalg.inv(volume_affine) @ acq.native_to_template @ acq.native_affine
    norm = np.diag([2.0 / (n - 1) for n in volume_shape] + [1.0])
    norm[:3, 3] = -1.0
    m = (norm @ m).astype(np.float32)
    axes = [torch.arange(n, dtype=torch.float32) for n in acq.native_shape]
    coords = []
    for c in (2, 1, 0):  # grid_sample wants (z, y, x) for an input indexed (X, Y, Z)
        row = torch.from_numpy(m[c])
        coords.append(
            row[0] * axes[0][:, None, None] + row[1] * axes[1][None, :, None]
            + row[2] * axes[2][None, None, :] + row[3]
        )
    return torch.stack(coords, dim=-1)[None]


def sample(volume: np.ndarray | torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample an (X, Y, Z) volume at a :func:`sampling_grid` (zero outside); returns (x, y, z)."""
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float32))[None, None]
    return F.grid_sample(vol, grid, mode=mode, padding_mode="zeros", align_corners=True)[0, 0]


def sample_voxel_average(volume: np.ndarray | torch.Tensor, grid: torch.Tensor, samples_per_axis: int = 2) -> torch.Tensor:
    """Each native voxel as the mean of the volume over the voxel (the partial-volume effect).

    A scanner's voxel records the signal of its whole extent, not of its centre. Each voxel is
    split into ``samples_per_axis ** 3`` equal sub-voxels and the volume is read (trilinear)
    at their centres and averaged, as the BrainWeb simulator does (Kwan et al. 1999). Point
    sampling (``samples_per_axis=1``) of the simulator's 2 mm anatomy gives every voxel a
    smoothing that depends on where it falls between the anatomy's grid nodes, so two visits in
    different head poses differ by more than their anatomy (see ``benchmarks/simulate_truth_check.md``).

    Args:
        volume: (X, Y, Z) template-space volume.
        grid: the visit's :func:`sampling_grid`, (1, x, y, z, 3); its voxel steps are read off it.
        samples_per_axis: sub-voxels per axis (1 = the voxel centre only).

    Returns:
        (x, y, z) float32 tensor on the native grid; zero outside the volume.

    Example:
        >>> grid = sampling_grid(canvas.shape, canvas_affine, acquisition)  # doctest: +SKIP
        >>> native = sample_voxel_average(canvas, grid, 2)  # 8 points per voxel  # doctest: +SKIP
    """
    n = int(samples_per_axis)
    if n < 1:
        raise ValueError(f"samples_per_axis must be >= 1, got {samples_per_axis}")
    if n == 1:
        return sample(volume, grid)
    g = grid[0]
    # the grid is affine in the native voxel index, so one voxel step along axis a is a constant
    steps = [
        (g[1, 0, 0] - g[0, 0, 0]) if g.shape[0] > 1 else torch.zeros(3),
        (g[0, 1, 0] - g[0, 0, 0]) if g.shape[1] > 1 else torch.zeros(3),
        (g[0, 0, 1] - g[0, 0, 0]) if g.shape[2] > 1 else torch.zeros(3),
    ]
    offsets = (np.arange(n) + 0.5) / n - 0.5  # sub-voxel centres, in voxels
    vol = np.asarray(volume, dtype=np.float32)  # converted once; `sample` reads it without a copy
    total = torch.zeros(grid.shape[1:4], dtype=torch.float32)
    for a in offsets:
        for b in offsets:
            for c in offsets:
                shift = float(a) * steps[0] + float(b) * steps[1] + float(c) * steps[2]
                total += sample(vol, grid + shift)
    return total / n**3


def resample_to_native(
    volume: np.ndarray | torch.Tensor,
    volume_affine: np.ndarray,
    acq: VisitAcquisition,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Sample a template-space volume on the visit's scanner grid (trilinear or nearest).

    Args:
        volume: (X, Y, Z) array on the template-space grid ``volume_affine``.
        volume_affine: its voxel-to-mm matrix.
        acq: the visit acquisition (native grid and pose).
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        (x, y, z) float32 tensor on the native grid; zero outside the volume.
    """
    shape = tuple(np.asarray(volume).shape)
    return sample(volume, sampling_grid(shape, volume_affine, acq), mode)  # type: ignore[arg-type]


def coarse_bias_field(shape: tuple[int, int, int], order: int, coefficients: list[float]) -> torch.Tensor:
    """TorchIO's polynomial bias field, evaluated on a ~4x coarser grid and interpolated."""
    from torchio.transforms.augmentation.intensity.random_bias_field import BiasField

    small = tuple(max(4, math.ceil(n / 4)) for n in shape)
    dummy = np.zeros((1, *small), dtype=np.float32)
    field_small = BiasField.generate_bias_field(dummy, order, coefficients)
    t = torch.from_numpy(np.ascontiguousarray(field_small, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="trilinear", align_corners=True)[0, 0]


def apply_intensities(
    native: torch.Tensor,
    acq: VisitAcquisition,
    white_matter: float,
    artefact: Any = None,
) -> np.ndarray:
    """Contrast, bias field, artefact, Rician noise and scanner gain on a native-grid image.

    Args:
        native: (x, y, z) float image in template intensity units (brain white matter ~ ``white_matter``).
        acq: the visit acquisition.
        white_matter: white-matter intensity of the clean image.
        artefact: an :class:`~neurocast.simulate.anomalies.Artefact` or ``None``.

    Returns:
        (x, y, z) int16 array of stored values.
    """
    import torchio as tio
    from torchio.transforms.augmentation.intensity.random_gamma import Gamma

    x = torch.clamp(native, min=0.0) / float(white_matter)  # white matter ~ 1
    img = tio.ScalarImage(tensor=x[None].contiguous(), affine=acq.native_affine)
    img = Gamma(gamma=float(acq.gamma))(img)
    data = img.data[0] * coarse_bias_field(tuple(x.shape), 3 if not acq.bias_coefficients else
                                          _order_from_n(len(acq.bias_coefficients)), acq.bias_coefficients)
    if artefact is not None:
        from neurocast.simulate.anomalies import apply_artefact

        img = tio.ScalarImage(tensor=data[None].contiguous(), affine=acq.native_affine)
        data = apply_artefact(img, artefact).data[0]
        data = torch.clamp(data, min=0.0)
    rng = np.random.default_rng(acq.noise_seed)
    sd = np.float32(acq.noise_sd_fraction)
    clean = data.numpy().astype(np.float32)
    n1 = rng.standard_normal(clean.shape, dtype=np.float32) * sd
    n2 = rng.standard_normal(clean.shape, dtype=np.float32) * sd
    noisy = np.sqrt((clean + n1) ** 2 + n2**2)  # Rician magnitude noise
    stored = np.clip(np.rint(noisy * acq.gain), 0, np.iinfo(np.int16).max).astype(np.int16)
    return stored


def skull_strip(stored: np.ndarray, brain: np.ndarray | torch.Tensor) -> np.ndarray:
    """A scanner image as a skull-stripping tool delivers it: zero outside the brain mask.

    The head was acquired whole (its artefacts and noise included), so ghosts of the scalp that
    fall inside the brain stay, and nothing is left of the air: the background is exactly 0.

    Args:
        stored: (x, y, z) stored values from :func:`apply_intensities`.
        brain: (x, y, z) boolean brain mask on the same grid.

    Example:
        >>> import numpy as np
        >>> img = np.full((4, 4, 4), 7, np.int16); brain = np.zeros((4, 4, 4), bool); brain[1:3] = True
        >>> out = skull_strip(img, brain)
        >>> int(out[0].max()), int(out[1].min())
        (0, 7)
    """
    mask = brain.numpy() if isinstance(brain, torch.Tensor) else np.asarray(brain)
    return np.where(mask.astype(bool), stored, np.zeros((), dtype=stored.dtype)).astype(stored.dtype)


def _order_from_n(n: int) -> int:
    for order in range(0, 10):
        if _n_bias_coefficients(order) == n:
            return order
    raise ValueError(f"{n} bias coefficients do not match a polynomial order")


def native_image(data: np.ndarray, acq: VisitAcquisition) -> nib.Nifti1Image:
    """A NIfTI image of stored values on the visit's scanner grid (qform = sform, code scanner)."""
    img = nib.Nifti1Image(np.asarray(data), acq.native_affine)
    img.set_qform(acq.native_affine, code=1)
    img.set_sform(acq.native_affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.set_data_dtype(np.asarray(data).dtype)
    return img


__all__ = [
    "Scanner",
    "VisitAcquisition",
    "apply_intensities",
    "coarse_bias_field",
    "draw_scanner",
    "draw_visit_acquisition",
    "native_image",
    "orientation_matrix",
    "resample_to_native",
    "rotation_matrix",
    "sample_voxel_average",
    "skull_strip",
]
