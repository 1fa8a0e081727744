"""neurocast: longitudinal brain MRI forecasting, anomaly detection and registration.

The package is organised in floors (see ``ARCHITECTURE.md`` in the project's shared folder)::

    cli  ->  progress, anomaly, simulate, report  ->  registration  ->  io, backbone, report

Lower floors never import upper ones. Heavy dependencies (torch, ANTsPy, MONAI) are imported by
the subpackages that need them, so ``import neurocast`` stays fast.
"""

import os as _os

# OpenMP threads that spin while waiting make torch 5-10x slower on a busy 2-core machine (measured
# in benchmarks/registration_deformation.md); let them sleep instead unless the user chose otherwise.
# This must happen before torch is imported, hence here.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from neurocast._version import __version__

__all__ = ["__version__"]
