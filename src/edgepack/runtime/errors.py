"""The error hierarchy of edgepack: one type per cause, messages that say what, where, expected and found."""


class EdgepackError(Exception):
    """Base of every error edgepack raises on purpose."""


class FormatError(EdgepackError, ValueError):
    """A packed file (or a stream inside it) breaks the format specification (spec/format.md)."""


class ChecksumError(FormatError):
    """A CRC-32 stored in the file does not match the bytes it covers."""


class UnsupportedError(EdgepackError):
    """Valid input that this version cannot handle: an op, an encoding, a format version, an ONNX feature."""


class BudgetError(EdgepackError):
    """The memory budget cannot hold the model; the message states the smallest budget that would."""


class InputError(EdgepackError, ValueError):
    """Bad input to Model.run: wrong names, shapes, dtypes or non-finite values."""
