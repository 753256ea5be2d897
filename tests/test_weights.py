"""fastattn.weights: the pure-NumPy safetensors reader/writer, .npz, state
dict checks and from_torch."""
import json
import pickle
import struct

import numpy as np
import pytest

from fastattn import weights
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
    st = pytest.importorskip("safetensors.numpy")
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
])
def test_malformed_files_raise_valueerror(tmp_path, header, data, n, match):
    p = _write(tmp_path / "bad.safetensors", header, data, n)
    with pytest.raises(ValueError, match=match):
        weights.load_file(p)


def test_truncated_file(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="at least 8"):
        weights.load_file(p)


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
        fm = weights.from_torch(tm)
        assert isinstance(fm, cls)
        ours = fm.state_dict()
        theirs = tm.state_dict()
        assert set(ours) == set(theirs)
        for k in ours:
            np.testing.assert_array_equal(ours[k], theirs[k].numpy())
    with pytest.raises(NotImplementedError):
        weights.from_torch(torch.nn.MultiheadAttention(E, H, add_bias_kv=True))
    with pytest.raises(NotImplementedError):
        weights.from_torch(torch.nn.Conv1d(2, 2, 1))
    fm = weights.from_torch(torch.nn.Linear(4, 4), dtype=np.float64)
    assert fm.dtype == np.float64


def test_modules_pickle(rng):
    for m in (Linear(4, 3, rng=0), LayerNorm(4), MultiHeadAttention(8, 2, rng=0)):
        m2 = pickle.loads(pickle.dumps(m))
        for (k, a), (k2, b) in zip(m.named_parameters(), m2.named_parameters()):
            assert k == k2
            np.testing.assert_array_equal(a, b)
