"""neurocast: longitudinal brain MRI forecasting, anomaly detection and registration.

The package is organised in floors (see ``ARCHITECTURE.md`` in the project's shared folder)::

    cli  ->  progress, anomaly, simulate, report  ->  registration  ->  io, backbone, report

Lower floors never import upper ones. Heavy dependencies (torch, ANTsPy, MONAI) are imported by
the subpackages that need them, so ``import neurocast`` stays fast.
"""

from neurocast._version import __version__

__all__ = ["__version__"]
