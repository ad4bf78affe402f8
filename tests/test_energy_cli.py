"""`edgepack energy` end to end on a small packed model."""
from __future__ import annotations

import json

import numpy as np

import zoo
from edgepack.cli import main
from edgepack.packer.pipeline import pack


def test_energy_json_and_data(tmp_path, capsys):
    src = zoo.save(zoo.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "m.epk"
    pack(src, out, sparsity=0.8, bits=5)
    assert main(["energy", str(out), "--sram", "8KiB", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("original", "packed"):
        assert {"total_uj", "compute_uj", "memory_uj"} <= set(r[key])
        assert r[key]["total_uj"] == r[key]["compute_uj"] + r[key]["memory_uj"]
    assert r["sram_bytes"] == 8192
    assert r["packed"]["macs"] < 0.25 * r["original"]["macs"]
    assert r["packed"]["total_uj"] < r["original"]["total_uj"]
    x = np.maximum(np.random.default_rng(0).standard_normal((20, 64)), 0).astype(np.float32)  # half zeros
    np.save(tmp_path / "x.npy", x)
    assert main(["energy", str(out), "--data", str(tmp_path / "x.npy"), "--json"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["packed"]["macs"] < 0.7 * r["packed"]["macs"]  # zero inputs skipped
    assert main(["energy", str(out)]) == 0
    assert "SRAM sweep" in capsys.readouterr().out


def test_packed_weights_cost_what_the_plan_reads(tmp_path):
    """Held modes are charged their held bytes, a streamed weight its stored bytes; the as-stored variant always
    charges the file's bytes (the cachegrind check found the stored-bytes rule 3x low for a held plan)."""
    from edgepack import runtime
    from edgepack.runtime.energy import estimate, load_for_sram
    from edgepack.runtime.loader import read_packed
    from edgepack.runtime.summary import layer_table

    src = zoo.save(zoo.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "m.epk"
    pack(src, out, sparsity=0.8, bits=5)
    packed = read_packed(out)
    stored = sum(r["bytes"] for r in layer_table(packed)["layers"])
    for mode in ("dense", "compact", "streamed"):
        model = runtime.load(out, layer_modes=mode)
        r = estimate(model, packed, 1 << 30)
        held = sum(l.ram_bytes + l.mapped_bytes for l in model.plan.layers)
        assert set(r["modes"].values()) == {mode}
        if mode == "streamed":
            assert r["packed"]["weight_bytes"] == r["packed_as_stored"]["weight_bytes"]
        else:
            assert r["packed"]["weight_bytes"] == held
        assert r["packed_as_stored"]["weight_bytes"] <= stored
    dense = estimate(runtime.load(out, layer_modes="dense"), packed, 1 << 30)
    assert dense["packed"]["weight_bytes"] > 2 * dense["packed_as_stored"]["weight_bytes"]
    small, budget = load_for_sram(out, 64, 1)  # no plan fits 64 bytes: loaded without a budget
    assert budget is None and small.plan.budget is None


def test_macs_of_every_weight_op_layout(tmp_path):
    """Each weight multiplies once per output row of Gemm / MatMul (whichever way it is transposed), per output
    position of Conv and per input position of ConvTranspose: the estimate's MACs are the products' true counts."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgepack import runtime
    from edgepack.runtime.energy import model_layers
    from edgepack.runtime.loader import read_packed

    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"], name="mm"),  # (3, 64) @ (64, 16)
             helper.make_node("Gemm", ["a", "W2"], ["b"], name="gemm_n"),  # (3, 16) @ (16, 40)
             helper.make_node("Gemm", ["b", "W3"], ["c"], name="gemm_t", transB=1),  # (3, 40) @ (24, 40)^T
             helper.make_node("Reshape", ["c", "shape"], ["d"], name="rs"),  # (3, 24) -> (3, 6, 2, 2)
             helper.make_node("ConvTranspose", ["d", "W4"], ["e"], name="convt", strides=[2, 2]),  # -> (3, 5, 5, 5)
             helper.make_node("Conv", ["e", "W5"], ["y"], name="conv", pads=[1, 1, 1, 1])]  # -> (3, 7, 5, 5)
    inits = [init("W1", 64, 16), init("W2", 16, 40), init("W3", 24, 40), init("W4", 6, 5, 3, 3),
             init("W5", 7, 5, 3, 3), numpy_helper.from_array(np.array([3, 6, 2, 2], np.int64), "shape")]
    g = helper.make_graph(nodes, "macs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    out = tmp_path / "m.epk"
    pack(str(src), out, sparsity=0, bits=8)
    layers = {l.name: l for l in model_layers(runtime.load(out), read_packed(out))}
    want = {"mm": 3 * 64 * 16, "gemm_n": 3 * 16 * 40, "gemm_t": 3 * 40 * 24, "convt": 3 * 2 * 2 * 6 * 5 * 9,
            "conv": 3 * 5 * 5 * 7 * 5 * 9}
    assert {k: layers[k].weights * layers[k].out_positions for k in want} == want
