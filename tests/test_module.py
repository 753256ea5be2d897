"""fastattn.nn.module: the Module base (parameter tree, state dicts, dtype
conversion, copies, files) and its input checks, on a small custom module."""
import pickle

import numpy as np
import pytest

from fastattn.nn.module import Module, check_input, resolve_dtype


class Leaf(Module):
    def __init__(self, n, dtype=None, bias=True):
        super().__init__(dtype)
        self._param("w", np.arange(n * 2, dtype=np.float64).reshape(n, 2))
        self._param("b", np.ones(n) if bias else None)
        self.changes = 0

    def forward(self, x):
        return x @ self.w.T

    def _on_dtype_change(self):
        self.changes += 1

    def extra_repr(self):
        return f"n={self.w.shape[0]}"


class Tree(Module):
    def __init__(self, dtype=None):
        super().__init__(dtype)
        self._param("scale", np.full(3, 2.0))
        self._child("head", Leaf(3, dtype))
        self._child("layers", [Leaf(2, dtype), Leaf(4, dtype, bias=False)])
        self._child("missing", None)

    def forward(self, x):
        return self.head(x) * self.scale


NAMES = ["scale", "head.w", "head.b", "layers.0.w", "layers.0.b", "layers.1.w"]


def test_tree_names_follow_registration_order():
    t = Tree()
    assert [n for n, _ in t.named_parameters()] == NAMES
    assert [n for n, _ in t.named_modules()] == ["", "head.", "layers.0.", "layers.1."]
    sd = t.state_dict()
    assert list(sd) == NAMES
    assert sd["head.w"] is t.head.w                   # no copies
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in sd.values())


def test_param_none_unregisters():
    leaf = Leaf(2)
    assert "b" in leaf.state_dict()
    leaf._param("b", None)
    assert leaf.b is None and list(leaf.state_dict()) == ["w"]


def test_load_state_dict_copies_and_converts(rng):
    t = Tree()
    new = {k: rng.standard_normal(v.shape) for k, v in t.state_dict().items()}
    new["layers.1.w"] = np.arange(8).reshape(4, 2)    # integers are accepted
    assert t.load_state_dict(new) is t
    for k, v in t.state_dict().items():
        assert v.dtype == np.float32 and v.flags.c_contiguous
        np.testing.assert_array_equal(v, np.asarray(new[k], np.float32))
    new["head.w"][...] = 99                           # the module owns its own copy
    assert not (t.head.w == 99).any()


def test_load_state_dict_strict_names():
    t = Tree()
    sd = dict(t.state_dict())
    del sd["head.b"]
    sd["extra.w"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"missing tensors: head\.b; unexpected tensors: extra\.w"):
        t.load_state_dict(sd)
    t2 = Tree().load_state_dict({"scale": np.zeros(3), "junk": np.ones(2)}, strict=False)
    np.testing.assert_array_equal(t2.scale, 0)
    np.testing.assert_array_equal(t2.head.b, 1)       # untouched


def test_load_state_dict_is_all_or_nothing(rng):
    t = Tree()
    before = {k: v.copy() for k, v in t.state_dict().items()}
    sd = {k: rng.standard_normal(v.shape) for k, v in before.items()}
    sd["layers.1.w"] = np.zeros((4, 3))                # last tensor has the wrong shape
    with pytest.raises(ValueError, match=r"tensor 'layers\.1\.w' has shape \(4, 3\) but "
                                         r"the layer expects \(4, 2\)"):
        t.load_state_dict(sd)
    sd["layers.1.w"] = np.zeros((4, 2), bool)
    with pytest.raises(TypeError, match=r"tensor 'layers\.1\.w' has dtype bool"):
        t.load_state_dict(sd)
    for k, v in t.state_dict().items():               # nothing was changed
        np.testing.assert_array_equal(v, before[k])


def test_astype_converts_every_parameter_and_calls_the_hook():
    t = Tree()
    assert t.astype(np.float64) is t
    assert t.dtype == np.float64 and t.head.dtype == np.float64
    assert all(v.dtype == np.float64 for v in t.state_dict().values())
    assert t.head.changes == 1 and t.layers[1].changes == 1
    x = np.ones((5, 2))
    assert t(x).dtype == np.float64                    # __call__ is forward
    with pytest.raises(TypeError, match="layer dtype must be float32 or float64, got float16"):
        t.astype(np.float16)
    assert t.dtype == np.float64


def test_resolve_dtype():
    assert resolve_dtype(None) == np.float32
    assert resolve_dtype("float64") == np.float64
    for bad in (np.int64, np.complex128, np.float16, bool):
        with pytest.raises(TypeError):
            resolve_dtype(bad)


def test_copy_and_pickle_are_independent():
    t = Tree()
    for other in (t.copy(), pickle.loads(pickle.dumps(t))):
        assert list(other.state_dict()) == NAMES
        other.head.w[...] = -1
        assert not (t.head.w == -1).any()
        assert other.layers[0] is not t.layers[0]


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_save_load_round_trip(tmp_path, rng, ext):
    t = Tree(np.float64)
    t.load_state_dict({k: rng.standard_normal(v.shape) for k, v in t.state_dict().items()})
    path = str(tmp_path / f"tree{ext}")
    t.save(path, metadata={"note": "test"})
    t2 = Tree(np.float64).load(path)
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(t2.state_dict()[k], v)
    with pytest.raises(KeyError, match="unexpected tensors"):
        Leaf(3).load(path)                              # other names: refused by strict


def test_repr_nests_children():
    r = repr(Tree())
    assert r.splitlines()[0] == "Tree("
    assert "  (head): Leaf(n=3)" in r and "  (layers.1): Leaf(n=4)" in r
    assert "missing" not in r and r.endswith(")")
    assert repr(Leaf(2)) == "Leaf(n=2)"


def test_check_input():
    x = np.zeros((2, 3, 4), np.float32)
    assert check_input(x, "src", np.dtype(np.float32), 4) is x
    y = check_input([[1.0, 2.0]], "src", np.dtype(np.float64), 2)
    assert isinstance(y, np.ndarray) and y.shape == (1, 2)
    with pytest.raises(TypeError, match=r"src has dtype float64 but the layer's weights are float32"):
        check_input(x.astype(np.float64), "src", np.dtype(np.float32))
    with pytest.raises(ValueError, match=r"src must have 2 or 3 dimensions, got shape \(4,\)"):
        check_input(x[0, 0], "src", np.dtype(np.float32))
    with pytest.raises(ValueError, match=r"src has embedding size 4 \(shape \(2, 3, 4\)\), expected 5"):
        check_input(x, "src", np.dtype(np.float32), 5)
    with pytest.raises(ValueError, match="must have 4 dimensions"):
        check_input(x, "q", np.dtype(np.float32), ndims=(4,))
