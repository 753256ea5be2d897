"""fastattn.weights: safetensors (through the safetensors package), .npz, state
dict checks and from_torch."""
import json
import os
import pickle
import struct

import numpy as np
import pytest

from fastattn import weights, from_torch
from fastattn.nn import (MultiHeadAttention, TransformerEncoderLayer,
                         TransformerDecoderLayer, Transformer, LayerNorm, Linear)


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def _tensors(rng):
    return {
        "a.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(5),
        "c.idx": np.arange(6, dtype=np.int64).reshape(2, 3),
        "d.flag": np.array([True, False, True]),
        "e.half": rng.standard_normal(4).astype(np.float16),
        "f.empty": np.zeros((0, 3), np.float32),
        "g.scalar": np.array(2.5, np.float32),
        "h.strided": rng.standard_normal((4, 6)).astype(np.float32)[::2, ::3],
        "i.bigendian": np.arange(4, dtype=">f4"),
        "j.u8": np.arange(7, dtype=np.uint8),
    }


def _equal(a, b):
    assert set(a) == set(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape, k
        assert x.dtype.newbyteorder("=") == y.dtype, k
        np.testing.assert_array_equal(x, y, err_msg=k)


def test_safetensors_roundtrip(tmp_path, rng):
    t = _tensors(rng)
    p = tmp_path / "w.safetensors"
    weights.save_file(t, p, metadata={"format": "np", "k": "v"})
    back, meta = weights.load_file(p, with_metadata=True)
    _equal(t, back)
    assert meta == {"format": "np", "k": "v"}
    for v in back.values():
        assert v.flags.owndata or v.base is not None and v.flags.writeable
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0


def test_interop_with_the_safetensors_package(tmp_path, rng):
    import safetensors.numpy as st
    t = {k: v for k, v in _tensors(rng).items() if k not in ("h.strided", "i.bigendian")}
    ours = tmp_path / "ours.safetensors"
    theirs = tmp_path / "theirs.safetensors"
    weights.save_file(t, ours)
    st.save_file(t, str(theirs), metadata={"x": "y"})
    _equal(t, st.load_file(str(ours)))
    back, meta = weights.load_file(theirs, with_metadata=True)
    _equal(t, back)
    assert meta == {"x": "y"}


def test_bf16_is_widened(tmp_path):
    f = np.array([1.0, -2.5, 3.140625], np.float32)
    bf = (f.view(np.uint32) >> 16).astype("<u2")
    hdr = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    p = tmp_path / "bf.safetensors"
    p.write_bytes(struct.pack("<Q", len(hdr)) + hdr + bf.tobytes())
    np.testing.assert_array_equal(weights.load_file(p)["x"], f)


def _write(p, header, data=b"", n=None):
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(hb) if n is None else n) + hb + data)
    return p


@pytest.mark.parametrize("header,data,n,match", [
    (b"", b"", None, "header does not start"),
    (b"[1, 2]", b"", None, "does not start"),
    (b"{not json", b"", None, "not valid JSON"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "outside"),
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "needs 12"),
    ({"x": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unsupported dtype"),
    ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "outside"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8, None, "data_offsets"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlaps"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "gap"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, None, "cover"),
    ({"x": [1, 2]}, b"", None, "object"),
    ({"__metadata__": {"a": 1}}, b"", None, "__metadata__"),
    ({}, b"", 10 ** 6, "past the end"),
    ({}, b"", 2 ** 62, "limit"),
    # oversized shapes: the byte count cannot match, whatever the offsets
    ({"x": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 8]}},
     b"\0" * 8, None, "needs 4835703278458516698824704"),
    ({"x": {"dtype": "F32", "shape": [2 ** 62, 4], "data_offsets": [0, 0]}}, b"", None, "needs"),
    # dtypes the package knows but NumPy (and fastattn) cannot hold
    ({"x": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, None,
     "unsupported dtype 'F8_E4M3'"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "overlaps"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 3, None, "outside"),
])
def test_malformed_files_raise_valueerror(tmp_path, header, data, n, match):
    p = _write(tmp_path / "bad.safetensors", header, data, n)
    for read in (weights.load_file, weights.load, weights.open_safetensors):
        with pytest.raises(ValueError, match=match) as e:
            read(p)
        assert str(p) in str(e.value)


def test_truncated_file(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="at least 8") as e:
        weights.load_file(p)
    assert str(p) in str(e.value)
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="0 bytes"):
        weights.load_file(p)


def test_lazy_reader(tmp_path, rng):
    t = _tensors(rng)
    p = tmp_path / "w.safetensors"
    weights.save_file(t, p, metadata={"m": "1"})
    with weights.open_safetensors(p) as f:
        assert set(f.keys()) == set(t) and len(f) == len(t) and "b" in f
        assert f.metadata == {"m": "1"}
        assert f.shape("h.strided") == (2, 2) and f.dtype("i.bigendian") == np.float32
        a = f.get("a.weight")
        np.testing.assert_array_equal(a, t["a.weight"])
        a[0, 0] = 7                                   # our own copy
        np.testing.assert_array_equal(f["a.weight"], t["a.weight"])
        _equal(t, dict(f.items()))
        with pytest.raises(KeyError, match="no tensor named 'zz'"):
            f.get("zz")
    with pytest.raises(ValueError, match="closed"):
        f.get("b")
    np.testing.assert_array_equal(a[1], t["a.weight"][1])   # still valid after close


def test_lazy_bf16(tmp_path):
    f32 = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)
    bf = (f32.view(np.uint32) >> 16).astype("<u2")
    p = _write(tmp_path / "bf.safetensors",
               {"x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
                "y": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
               bf.tobytes() + f32.tobytes())
    with weights.open_safetensors(p) as f:
        assert f.dtype("x") == np.float32
        np.testing.assert_array_equal(f.get("x"), f32.reshape(2, 2))
        np.testing.assert_array_equal(f.get("y"), f32)


def test_file_truncated_while_open_raises_not_crashes(tmp_path):
    """A checkpoint rewritten in place under an open reader: an error naming
    the file, chained to the package's, never a SIGBUS (the package's mmap
    backend would die here)."""
    from safetensors import SafetensorError
    p = tmp_path / "w.safetensors"
    weights.save_file({"a": np.ones(4, np.float32), "w": np.ones((512, 512))}, p)
    with weights.open_safetensors(p) as f:
        p.write_bytes(p.read_bytes()[:200])
        with pytest.raises(ValueError, match="could not read") as e:
            f.get("w")
        assert str(p) in str(e.value)
        assert isinstance(e.value.__cause__, SafetensorError)


def test_file_replaced_while_open_reads_the_file_opened(tmp_path):
    p = tmp_path / "w.safetensors"
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    bf = (np.ones(2, np.float32).view(np.uint32) >> 16).astype("<u2")
    weights.save_file({"w": w}, p)
    _write(p, {"b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
               "w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [4, 68]}},
           bf.tobytes() + w.tobytes())
    with weights.open_safetensors(p) as f:
        os.replace(_write(tmp_path / "other.safetensors",
                          {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                          b"\0" * 8), p)
        np.testing.assert_array_equal(f.get("w"), w)
        np.testing.assert_array_equal(f.get("b"), np.ones(2, np.float32))


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError):
        weights.save_file({"x": np.array(["a"])}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError):
        weights.save_file({"x": np.ones(2)}, tmp_path / "x.safetensors", metadata={"a": 1})
    with pytest.raises(TypeError):
        weights.save_file([np.ones(2)], tmp_path / "x.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_module_save_load_roundtrip(tmp_path, rng, suffix):
    t = Transformer(16, 2, 2, 1, 24, batch_first=True, rng=1)
    p = tmp_path / ("model" + suffix)
    t.save(p)
    t2 = Transformer(16, 2, 2, 1, 24, batch_first=True, rng=2)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    y = rng.standard_normal((2, 3, 16)).astype(np.float32)
    assert np.abs(t(x, y) - t2(x, y)).max() > 1e-3
    t2.load(p)
    np.testing.assert_array_equal(t(x, y), t2(x, y))
    sd = weights.load(p)
    assert set(sd) == set(t.state_dict())


def test_npz_never_unpickles(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        weights.load(p)


def test_state_dict_errors_name_tensor_and_shapes(tmp_path):
    layer = TransformerEncoderLayer(16, 2, 32, rng=0)
    sd = {k: v.copy() for k, v in layer.state_dict().items()}
    bad = dict(sd)
    bad["linear1.weight"] = np.zeros((31, 16), np.float32)
    with pytest.raises(ValueError, match=r"'linear1.weight' has shape \(31, 16\).*expects \(32, 16\)"):
        layer.load_state_dict(bad)
    missing = dict(sd)
    del missing["norm2.bias"]
    with pytest.raises(KeyError, match="missing tensors: norm2.bias"):
        layer.load_state_dict(missing)
    extra = dict(sd)
    extra["norm3.weight"] = np.ones(16)
    with pytest.raises(KeyError, match="unexpected tensors: norm3.weight"):
        layer.load_state_dict(extra)
    layer.load_state_dict(missing, strict=False)          # partial load allowed
    before = layer.linear2.weight.copy()
    bad2 = dict(sd)
    bad2["linear2.weight"] = np.zeros((16, 32), np.float32)
    bad2["self_attn.in_proj_weight"] = np.zeros((3, 3))
    with pytest.raises(ValueError):
        layer.load_state_dict(bad2)
    np.testing.assert_array_equal(layer.linear2.weight, before)   # nothing changed
    p = tmp_path / "bad.safetensors"
    weights.save_file(bad, p)
    with pytest.raises(ValueError, match="linear1.weight"):
        layer.load(p)


def test_state_dict_dtype_conversion():
    ln = LayerNorm(4, dtype=np.float64)
    ln.load_state_dict({"weight": np.full(4, 2, np.float32), "bias": np.zeros(4, np.float16)})
    assert ln.weight.dtype == np.float64 and ln.bias.dtype == np.float64


@pytest.mark.filterwarnings("ignore:enable_nested_tensor:UserWarning")
def test_from_torch_every_supported_module():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    E, H = 16, 2
    mods = {
        torch.nn.Linear(E, 3): Linear,
        torch.nn.LayerNorm(E): LayerNorm,
        torch.nn.MultiheadAttention(E, H): MultiHeadAttention,
        torch.nn.TransformerEncoderLayer(E, H, 32): TransformerEncoderLayer,
        torch.nn.TransformerDecoderLayer(E, H, 32, activation="gelu"): TransformerDecoderLayer,
        torch.nn.Transformer(E, H, 1, 1, 32): Transformer,
    }
    for tm, cls in mods.items():
        fm = from_torch(tm)
        assert isinstance(fm, cls)
        ours = fm.state_dict()
        theirs = tm.state_dict()
        assert set(ours) == set(theirs)
        for k in ours:
            np.testing.assert_array_equal(ours[k], theirs[k].numpy())
    with pytest.raises(NotImplementedError):
        from_torch(torch.nn.MultiheadAttention(E, H, add_bias_kv=True))
    with pytest.raises(NotImplementedError):
        from_torch(torch.nn.Conv1d(2, 2, 1))
    fm = from_torch(torch.nn.Linear(4, 4), dtype=np.float64)
    assert fm.dtype == np.float64


def test_modules_pickle(rng):
    for m in (Linear(4, 3, rng=0), LayerNorm(4), MultiHeadAttention(8, 2, rng=0)):
        m2 = pickle.loads(pickle.dumps(m))
        for (k, a), (k2, b) in zip(m.named_parameters(), m2.named_parameters()):
            assert k == k2
            np.testing.assert_array_equal(a, b)
