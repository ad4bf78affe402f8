"""edgepack's packer: ONNX in, a compressed edgepack file out (prune, weight sharing, CSR, Huffman).
Importing this package is cheap; onnx is imported only by the functions that need it. The entry points are
`edgepack.pack` and `edgepack.unpack`."""
