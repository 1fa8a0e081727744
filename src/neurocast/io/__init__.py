"""Ground floor: files in and out.

BIDS discovery (:mod:`neurocast.io.bids`), NIfTI reading and validation (:mod:`neurocast.io.nifti`),
tables checked against ``data_specs`` (:mod:`neurocast.io.tables`), atomic writes
(:mod:`neurocast.io.atomic`), BIDS derivatives and provenance (:mod:`neurocast.io.derivatives`).
This package imports nothing else from neurocast except :mod:`neurocast.errors`.
"""

from neurocast.io.atomic import (
    atomic_path,
    write_json_atomic,
    write_nifti_atomic,
    write_text_atomic,
    write_tsv_atomic,
)
from neurocast.io.nifti import ImageInfo, load_image, read_info, voxel_size

__all__ = [
    "ImageInfo",
    "atomic_path",
    "load_image",
    "read_info",
    "voxel_size",
    "write_json_atomic",
    "write_nifti_atomic",
    "write_text_atomic",
    "write_tsv_atomic",
]
