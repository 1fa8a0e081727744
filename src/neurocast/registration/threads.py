"""How many CPU threads registration (ITK/ANTs) and torch may use.

ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, the first time any ITK filter runs, and
keeps that number for the life of the process. :func:`set_threads` therefore sets the variable
*and* torch's intra-op thread count; call it at the start of a run (the command line does), before
any registration. If ANTs was already imported, the setting still applies as long as no ANTs/ITK
filter has run yet; after that, ITK keeps its first number and this function says so in its
return value, and warns when the number asked for differs from the one ITK kept (asking again for
the same number, as every step of a batch does, is silent; torch is always updated).

Reproducibility: ITK's multi-threaded registration metrics do not sum in a fixed order, so with
more than one ITK thread two runs of the same registration differ slightly (about 0.01 mm).
Importing :mod:`neurocast.registration` therefore sets ITK to one thread unless the environment
variable is already set; ``set_threads(n)`` with ``n > 1`` gives speed instead of bit-identical
reruns (torch's fits stay deterministic at any thread count).

Example:
    >>> from neurocast.registration.threads import set_threads
    >>> info = set_threads(2)  # doctest: +SKIP
    >>> info["itk_env"]  # doctest: +SKIP
    '2'
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

log = logging.getLogger(__name__)

ITK_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"

_itk_used = False
"""Set by neurocast's registration code the first time it runs an ANTs/ITK filter."""
_itk_threads: str | None = None
"""The value of :data:`ITK_ENV` when the first ITK filter ran (``None``: unset, ITK's own default)."""


def mark_itk_used() -> None:
    """Record that an ITK filter has run in this process (its thread count is now fixed)."""
    global _itk_used, _itk_threads
    if not _itk_used:
        _itk_threads = os.environ.get(ITK_ENV)
    _itk_used = True


def set_threads(n: int | None = None) -> dict[str, object]:
    """Set the number of threads of ITK/ANTs and torch (see the module docstring on reproducibility).

    Args:
        n: threads to use; ``None`` or ``0`` means every CPU this process may run on.

    Returns:
        ``{"threads": n, "itk_env": value set, "ants_imported": bool, "itk_fixed": bool,
        "torch_threads": torch.get_num_threads() or None}``. ``itk_fixed`` is ``True`` when an
        ITK filter already ran in this process through neurocast, so ITK keeps its earlier number.
    """
    if n is None or n == 0:
        n = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    os.environ[ITK_ENV] = str(n)
    ants_imported = "ants" in sys.modules
    if _itk_used and _itk_threads != str(n):
        kept = _itk_threads if _itk_threads is not None else "ITK's default"
        msg = (
            f"ITK/ANTs already ran in this process; it keeps its first thread count ({kept}) "
            f"(set {ITK_ENV}={n} before the first registration to change it)"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
    elif ants_imported and not _itk_used:
        log.info("ants is already imported; %s=%d applies from the first ITK filter on", ITK_ENV, n)
    torch_threads = None
    try:
        import torch

        torch.set_num_threads(n)
        torch_threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return {
        "threads": n,
        "itk_env": os.environ[ITK_ENV],
        "ants_imported": ants_imported,
        "itk_fixed": _itk_used,
        "torch_threads": torch_threads,
    }
