"""Every on-disk number of the edgepack format v1, shared by the reader and the writer (spec/format.md, section 2)."""

MAGIC = b"\x89EPK\r\n\x1a\n"  # PNG-style: catches text-mode mangling and 7-bit transfers
VERSION_MAJOR = 1
VERSION_MINOR = 1  # the newest minor this code reads and writes; a file states the lowest minor it needs
# (packer/writer.py: format_minor): 1 when an encoding has `row_dims`, else 0

HEADER_SIZE = 64
SECTION_ENTRY_SIZE = 32
SECTION_ALIGN = 64
MAX_SECTIONS = 16

# Section kinds. Readers MUST reject unknown kinds unless bit 15 (KIND_OPTIONAL) is set, then they MAY skip them.
KIND_META = 1
KIND_GRAPH = 2
KIND_DATA = 3
KIND_OPTIONAL = 0x8000
KIND_NAMES = {KIND_META: "meta", KIND_GRAPH: "graph", KIND_DATA: "data"}

# Section flags. FLAG_DEFLATE: the section is stored zlib-compressed (RFC 1950); meta and graph only.
FLAG_DEFLATE = 1

# Caps: checked before anything is allocated.
MAX_META_BYTES = 1 << 20
MAX_GRAPH_BYTES = 16 << 20
MAX_DATA_BYTES = 1 << 34
MAX_NODES = 100_000
MAX_TENSORS = 100_000
MAX_RANK = 8
MAX_ELEMENTS = 1 << 31  # per tensor
MAX_STRING = 4096  # names, op types, string attributes
MAX_CODE_BITS = 12  # codebook / gap symbols: alphabets of at most 4096 symbols
MAX_PACKED_BITS = 16
MAX_CODE_LEN = 15  # Huffman code lengths
LENGTHS_BITS = 4  # Huffman code-length tables are stored 4-bit packed

# Which inputs of which ops hold weight matrices that the packer compresses (prune, codebook, CSR). The runtime runs
# Gemm / MatMul / Conv on them as stored (runtime/layers.py) and expands the others (ConvTranspose; LSTM and GRU's W
# and R, [directions, gates x hidden, in]) to dense float32 at load, counted as constants in the memory plan.
WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (1,), "LSTM": (1, 2), "GRU": (1, 2)}
# The matrix view the packer gives those weights when it is not rows = shape[0] (the encodings' `row_dims`, spec
# section 6): LSTM / GRU W and R [directions, gates x hidden, in] have a row per gate row of every direction, so that
# row scales and chunks follow the gate rows.
WEIGHT_ROW_DIMS = {"LSTM": 2, "GRU": 2}
# Shape arithmetic: ops that compute with tensor shapes. The packer folds them once the input shapes are static; the
# runtime does not run them, so a graph packed with dynamic input dimensions that still holds one cannot run (the
# packer warns, the runtime's load says which --input-shape to pack with).
SHAPE_ARITHMETIC = frozenset({"Shape", "Size", "ConstantOfShape", "Range", "Expand"})

# Encodings of a tensor ("encoding" -> "type" in the graph section).
ENC_DENSE = "dense"
ENC_INT8 = "int8"
ENC_CODEBOOK = "codebook"
ENC_SPARSE = "sparse_codebook"
ENCODINGS = (ENC_DENSE, ENC_INT8, ENC_CODEBOOK, ENC_SPARSE)

# Stream codings.
CODING_PACKED = "packed"
CODING_HUFFMAN = "huffman"

# Tensor dtypes the format knows, by name; the storage dtype of a dense tensor is one of these, little-endian.
DTYPES = {
    "float32": "<f4",
    "float16": "<f2",
    "float64": "<f8",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "bool": "?",
}
CODEBOOK_DTYPES = ("float32", "float16")

# Attribute kinds in the graph section (ONNX attribute types that survive a round trip).
ATTR_KINDS = ("int", "float", "string", "ints", "floats", "strings")
