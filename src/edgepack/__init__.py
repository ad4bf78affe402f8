"""edgepack: Deep Compression for ONNX models, and a runtime that runs the compressed form on small devices.

`edgepack.runtime` (numpy + numba only) loads and runs packed files on the device; `edgepack.packer` (onnx,
onnxruntime: ``pip install "edgepack[packer]"``) makes them on the workstation. Importing this package imports the
runtime only; `pack` and `unpack` import the packer when first called.
"""
from edgepack.runtime import BudgetError, EdgepackError, FormatError, InputError, MemoryPlan, Model, UnsupportedError
from edgepack.runtime import load, supported_ops

__version__ = "0.2.0"


def pack(*args, **kwargs):
    """Compress an ONNX model into an edgepack file: see `edgepack.packer.pipeline.pack` (needs edgepack[packer])."""
    from edgepack.packer.pipeline import pack as _pack

    return _pack(*args, **kwargs)


def unpack(*args, **kwargs):
    """Write a packed file back to ONNX: see `edgepack.packer.unpack.unpack` (needs edgepack[packer])."""
    from edgepack.packer.unpack import unpack as _unpack

    return _unpack(*args, **kwargs)


__all__ = ["BudgetError", "EdgepackError", "FormatError", "InputError", "MemoryPlan", "Model", "UnsupportedError",
           "load", "pack", "supported_ops", "unpack", "__version__"]
