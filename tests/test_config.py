"""pack --config: every wrong type, unknown key and misspelt layer name is an InputError that names it (issue 14
item 7); booleans are booleans; JSON with a key twice is refused."""
from __future__ import annotations

import json

import pytest

import zoo
from edgepack.cli import main
from edgepack.packer.encode import LayerSettings
from edgepack.packer.pipeline import check_config, pack
from edgepack.runtime.errors import InputError


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return zoo.save(zoo.mlp(), tmp_path_factory.mktemp("cfg") / "mlp.onnx")


WRONG = [
    ({"default": 5}, "'default' must be a table"),
    ({"layers": 5}, "'layers' must be a table"),
    ({"layers": {"fc1": 3}}, "layers.'fc1' must be a table"),
    ({"default": {"bits": "4"}}, r'bits must be a whole number .* found "4" \(text\)'),
    ({"default": {"bits": 4.5}}, r"bits must be a whole number .* found 4.5"),
    ({"default": {"bits": True}}, r"bits must be a whole number .* found True \(a boolean\)"),
    ({"default": {"bits": 99}}, r"bits 99 must be in \[1, "),
    ({"default": {"sparsity": "abc"}}, r'sparsity must be a number .* found "abc" \(text\)'),
    ({"default": {"sparsity": 1.5}}, r"sparsity 1.5 must be a number in \[0, 1\]"),
    ({"default": {"quality": -1}}, r"quality -1 must be a finite number >= 0"),
    ({"default": {"sparsity": None}}, r"sparsity must be a number"),
    ({"default": {"quality": [1]}}, r"quality must be a finite number >= 0, found \[1\] \(a list\)"),
    ({"default": {"seed": 1.5}}, r"seed must be a whole number .* found 1.5"),
    ({"default": {"seed": -1}}, r"seed -1 must be in"),
    ({"default": {"huffman": "no"}}, r'huffman must be true or false \(a boolean\), found "no"'),
    ({"default": {"huffman": 0}}, r"huffman must be true or false"),
    ({"default": {"channel_scales": "yes"}}, r"channel_scales must be \"auto\", true or false"),
    ({"default": {"channel_scales": 1}}, r"channel_scales must be"),
    ({"default": {"init": 3}}, r"init must be one of linear, random, density, companded, auto, found 3"),
    ({"default": {"encoding": "sparse"}}, r"encoding must be one of"),
    ({"default": {"codebook_dtype": "float64"}}, r"codebook_dtype must be one of float32, float16"),
    ({"default": {"chunk_symbols": 0}}, r"chunk_symbols 0 must be in"),
    ({"default": {"sparsty": 0.5}}, r"unknown setting\(s\) 'sparsty' \(did you mean 'sparsity'\?\)"),
    ({"defaults": {}}, r"unknown key\(s\) 'defaults'"),
    ({"layers": {"fc2": {"bits": "4"}}}, r"settings of 'w2': bits must be a whole number"),
]


@pytest.mark.parametrize("cfg,match", WRONG, ids=[json.dumps(c)[:40] for c, _ in WRONG])
def test_wrong_config_is_named(mlp, tmp_path, cfg, match):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=match):
        pack(mlp, tmp_path / "m.epk", config=path, check_fidelity=False)
    assert not (tmp_path / "m.epk").exists()
    with pytest.raises(InputError, match=match):  # a dict given to the API is checked the same way
        pack(mlp, tmp_path / "m.epk", config=cfg, check_fidelity=False)


def test_misspelt_layer_names_the_closest(mlp, tmp_path):
    with pytest.raises(InputError, match=r"layers 'fc_1' \(closest: 'fc1'.*\) name no compressible weight"):
        pack(mlp, tmp_path / "m.epk", config={"layers": {"fc_1": {"bits": 3}}}, check_fidelity=False)
    with pytest.raises(InputError, match=r"'relu1'"):  # a real node, but one without a weight to compress
        pack(mlp, tmp_path / "m.epk", config={"layers": {"relu1": {"bits": 3}}}, check_fidelity=False)
    # node names and tensor names both work
    report = pack(mlp, tmp_path / "m.epk", config={"layers": {"fc1": {"bits": 3}, "w3": {"encoding": "dense"}}},
                  check_fidelity=False)
    by = {r["name"]: r for r in report.info["layers"]}
    assert by["w1"]["k"] <= 8 and by["w3"]["encoding"] == "dense float32"


def test_booleans_are_booleans(mlp, tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('[default]\nhuffman = false\nchannel_scales = true\nbits = 4\n')
    report = pack(mlp, tmp_path / "m.epk", config=path, check_fidelity=False)
    assert report.info["streams_stored_bytes"] == report.info["streams_packed_bytes"]  # no Huffman anywhere
    path.write_text('[default]\nhuffman = "no"\n')
    with pytest.raises(InputError, match="huffman must be true or false"):
        pack(mlp, tmp_path / "m.epk", config=path, check_fidelity=False)


def test_duplicate_json_key_and_unparsable(mlp, tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text('{"default": {"bits": 4, "bits": 6}}')
    with pytest.raises(InputError, match="'bits' appears twice"):
        pack(mlp, tmp_path / "m.epk", config=path, check_fidelity=False)
    path.write_text('{"default": {"sparsity": NaN}}')
    with pytest.raises(InputError, match="NaN is not a JSON number"):
        pack(mlp, tmp_path / "m.epk", config=path, check_fidelity=False)
    path.write_text('[1, 2]')
    with pytest.raises(InputError, match="expected a table"):
        pack(mlp, tmp_path / "m.epk", config=path, check_fidelity=False)
    with pytest.raises(InputError, match="cannot open"):
        pack(mlp, tmp_path / "m.epk", config=tmp_path / "missing.json", check_fidelity=False)


def test_cli_config_errors_exit_2_with_the_name(mlp, tmp_path, capsys):
    path = tmp_path / "cfg.json"
    for cfg, match in [({"default": {"bits": "4"}}, 'bits must be a whole number'),
                       ({"layers": {"fc_1": {}}}, "closest: 'fc1'"), ({"default": 5}, "'default' must be")]:
        path.write_text(json.dumps(cfg))
        assert main(["pack", mlp, "-o", str(tmp_path / "m.epk"), "--config", str(path), "-q"]) == 2
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err


def test_settings_api():
    assert LayerSettings.from_dict({"bits": 4, "huffman": False}, "x").bits == 4
    assert check_config({}) == {}
    with pytest.raises(InputError, match="expected a table of settings"):
        LayerSettings.from_dict([("bits", 4)], "x")
