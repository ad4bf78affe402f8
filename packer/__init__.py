"""edgepack's packer: ONNX in, a compressed edgepack file out (prune, weight sharing, CSR, Huffman).
Importing this package is cheap; onnx is imported only by the functions that need it."""

__version__ = "0.1.0"


def pack(*args, **kwargs):
    """See packer.pipeline.pack."""
    from .pipeline import pack as _pack

    return _pack(*args, **kwargs)


def unpack(*args, **kwargs):
    """See packer.unpack.unpack."""
    from .unpack import unpack as _unpack

    return _unpack(*args, **kwargs)
