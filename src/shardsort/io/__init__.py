"""Reading recordings and geometry; writing and reading workflow arrays.

Unlike the kernels, these modules do file I/O (and nothing else). They know
nothing of Snakemake.
"""

from __future__ import annotations

from .arrays import (
    ChunkedRecording,
    atomic_path,
    atomic_write_bytes,
    compression_of,
    read_array,
    read_rows,
    read_sidecar,
    write_array,
)
from .geometry import default_geometry, load_geometry
from .openephys import openephys_fields
from .raw import FormatFields, Recording, open_recording
from .spikeglx import read_meta, spikeglx_fields

__all__ = [
    "ChunkedRecording",
    "FormatFields",
    "Recording",
    "atomic_path",
    "atomic_write_bytes",
    "compression_of",
    "default_geometry",
    "load_geometry",
    "open_recording",
    "openephys_fields",
    "read_array",
    "read_meta",
    "read_rows",
    "read_sidecar",
    "spikeglx_fields",
    "write_array",
]
