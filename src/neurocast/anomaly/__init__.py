"""neurocast.anomaly: reconstruction-based anomaly detection and QA screening.

A model of the shared diffusion backbone, trained on healthy scans, reconstructs a pseudo-healthy
version of a scan from partially noised copies; what it cannot reconstruct is the anomaly. Scores
say *lesion* (a compact, local residual) or *artefact* (a diffuse residual plus background-based
image quality metrics), calibrated on healthy references at a chosen false-positive rate.

=========================  =================================================================
:mod:`.iqm`                MRIQC's anatomical IQMs (CJV, CNR, SNR, EFC, FBER, QI1, WM2max)
:mod:`.scan`               :class:`Scan` (template-space image, mask, prior, native geometry),
                           :func:`prepare_scan` (preprocessing + IQMs)
:mod:`.training`           axial slices, intensities and the prior as backbone training items
:mod:`.maps`               residual -> anomaly map (erosion, median filter), masks, clusters
:mod:`.normative`          the map standardised voxel by voxel against healthy references
:mod:`.scores`             lesion score, artefact features and score
:mod:`.calibration`        thresholds at a false-positive rate, flags, percentiles
:mod:`.model`              :class:`AnomalyDetector` (fit, calibrate, score, save, load)
:mod:`.overlay`            the QA picture: input, reconstruction, overlay through the finding
:mod:`.workflow`           :func:`qa_dataset`, :func:`train_detector` (BIDS in, derivatives out)
=========================  =================================================================

Example:
    >>> from neurocast.anomaly import AnomalyDetector, prepare_scan  # doctest: +SKIP
    >>> det = AnomalyDetector.load("models/anomaly")  # doctest: +SKIP
    >>> result = det.score(prepare_scan("sub-01_ses-m12_T1w.nii.gz",
    ...                                 prior=prepare_scan("sub-01_ses-bl_T1w.nii.gz")))  # doctest: +SKIP
    >>> result.flag, round(result.percentile)  # doctest: +SKIP
    ('review-lesion', 100)
"""

from neurocast.anomaly.calibration import Calibration, calibrate_scores
from neurocast.anomaly.iqm import IQMResult, compute_iqms
from neurocast.anomaly.model import AnomalyDetector, AnomalyResult
from neurocast.anomaly.scan import Scan, prepare_scan

__all__ = [
    "AnomalyDetector",
    "AnomalyResult",
    "Calibration",
    "IQMResult",
    "Scan",
    "calibrate_scores",
    "compute_iqms",
    "prepare_scan",
]
