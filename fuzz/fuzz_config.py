"""Coverage-guided fuzzing of what a user types and hands over besides models: the settings files (`pack --config`,
`energy --table`: JSON / TOML -> check_config, LayerSettings.from_dict, check_layer_names), sizes (`--budget`,
`--sram`: memory.parse_size), input arrays (`run --input`, `pack --calib`, `--data`: tables.read_arrays on .npy /
.npz bytes) and the command line itself (build_parser().parse_args with its argument types). The first byte picks
the target. Anything but an EdgepackError, argparse's exit, or success is a finding.

    pip install atheris
    python fuzz/make_config_corpus.py fuzz/config_corpus
    python fuzz/fuzz_config.py fuzz/config_corpus -max_total_time=1800 -rss_limit_mb=2048 -timeout=10 -max_len=4096

Reproduce a finding with `python fuzz/fuzz_config.py crash-<hash>`; turn it into a test in tests/test_config.py or
tests/test_inputs.py.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

with atheris.instrument_imports():
    from edgepack.cli import build_parser
    from edgepack.packer.encode import LayerSettings
    from edgepack.packer.pipeline import check_config, check_layer_names
    from edgepack.runtime.energy import load_table
    from edgepack.runtime.errors import EdgepackError
    from edgepack.runtime.memory import parse_size
    from edgepack.runtime.tables import read_arrays, read_table_file

TMP = tempfile.mkdtemp(prefix="edgepack-fuzz-config-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
WEIGHTS = {"conv1.w": ("Conv", "conv1"), "fc.w": ("Gemm", "fc"), "lstm.W": ("LSTM", "lstm")}
PARSER = build_parser()
COMMANDS = ("pack", "run", "info", "verify", "energy", "bench", "unpack")


def _file(suffix: str, data: bytes) -> str:
    path = os.path.join(TMP, "f" + suffix)
    with open(path, "wb") as f:
        f.write(data)
    return path


def settings_file(data: bytes, suffix: str) -> None:
    path = _file(suffix, data)
    cfg = check_config(read_table_file(path), path)
    for d in [cfg.get("default", {})] + list(cfg.get("layers", {}).values()):
        LayerSettings.from_dict(d, path)
    check_layer_names(cfg, WEIGHTS, path)


def energy_table(data: bytes, suffix: str) -> None:
    load_table(_file(suffix, data))


def size(data: bytes) -> None:
    parse_size(data.decode("utf-8", "replace"))


def arrays(data: bytes, suffix: str) -> None:
    read_arrays(_file(suffix, data))


def argv(data: bytes) -> None:
    words = data.decode("utf-8", "replace").split("\0")
    if words and words[0] not in COMMANDS:
        words.insert(0, COMMANDS[len(words[0]) % len(COMMANDS)])
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            PARSER.parse_args(words)
        except SystemExit:  # argparse's usage error: exit 2 with a message, as intended
            pass


def test_one_input(data: bytes) -> None:
    if not data:
        return
    pick, body = data[0] % 8, data[1:]
    targets = (lambda: settings_file(body, ".json"), lambda: settings_file(body, ".toml"),
               lambda: energy_table(body, ".json"), lambda: size(body), lambda: arrays(body, ".npy"),
               lambda: arrays(body, ".npz"), lambda: argv(body), lambda: energy_table(body, ".toml"))
    try:
        targets[pick]()
    except EdgepackError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
