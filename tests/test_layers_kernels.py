"""fastattn._layers: the fused row kernels against NumPy references."""
import sys

import numpy as np
import pytest

from fastattn import reference
from fastattn.nn import _ops
from conftest import tol




def _rand(rng, shape, dt, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dt)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["layer", "rms", "none"])
@pytest.mark.parametrize("C", [1, 3, 8, 77, 384])
def test_add_norm_all_combinations(rng, dt, mode, C):
    N = 13
    a, r = _rand(rng, (N, C), dt), _rand(rng, (N, C), dt)
    ab, w, b = _rand(rng, C, dt), _rand(rng, C, dt), _rand(rng, C, dt)
    for use_ab in (False, True):
        for use_r in (False, True):
            for use_w, use_b in ((False, False), (True, False), (True, True), (False, True)):
                args = (ab if use_ab else None, r if use_r else None, mode,
                        w if use_w else None, b if use_b else None, 1e-5)
                s_ref, n_ref = reference.add_norm(a, *args)
                s, n = _ops.add_norm(a, *args, s=np.empty_like(a))
                np.testing.assert_allclose(s, s_ref, atol=tol(dt, "row_kernel") * 4, rtol=0)
                if mode != "none":
                    np.testing.assert_allclose(n, n_ref, atol=tol(dt, "row_kernel") * 8, rtol=0)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_add_norm_in_place_aliases(rng, dt):
    N, C = 9, 33
    a, r = _rand(rng, (N, C), dt), _rand(rng, (N, C), dt)
    ab, w, b = _rand(rng, C, dt), _rand(rng, C, dt), _rand(rng, C, dt)
    s_ref, n_ref = reference.add_norm(a, ab, r, "layer", w, b, 1e-5)
    a1 = a.copy()
    _ops.add_norm(a1, ab, r, "layer", w, b, 1e-5, n=a1)           # n is a
    np.testing.assert_allclose(a1, n_ref, atol=tol(dt, "row_kernel") * 8, rtol=0)
    a2, n2 = a.copy(), np.empty_like(a)
    _ops.add_norm(a2, ab, r, "layer", w, b, 1e-5, s=a2, n=n2)     # s is a
    np.testing.assert_allclose(a2, s_ref, atol=tol(dt, "row_kernel") * 4, rtol=0)
    np.testing.assert_allclose(n2, n_ref, atol=tol(dt, "row_kernel") * 8, rtol=0)
    r3 = r.copy()
    _ops.add_norm(a, ab, r3, "none", s=r3)                         # s is r
    np.testing.assert_allclose(r3, s_ref, atol=tol(dt, "row_kernel") * 4, rtol=0)


def test_add_norm_strided_rows_and_large_offsets(rng):
    base = _rand(rng, (20, 64), np.float32, 1.0) + 1000.0        # big mean
    a = base[::2, :40]                                             # row stride 128
    s, n = _ops.add_norm(a, None, None, "layer", None, None, 1e-5)
    _, n_ref = reference.add_norm(a, None, None, "layer", None, None, 1e-5)
    np.testing.assert_allclose(n, n_ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["identity", "relu", "gelu", "gelu_tanh", "silu"])
def test_bias_act(rng, dt, act):
    h = _rand(rng, (11, 50), dt, 3.0)
    bias = _rand(rng, 50, dt)
    ref = reference.activation(h.astype(np.float64) + bias, act)
    out = _ops.bias_act(h, bias, act)
    np.testing.assert_allclose(out, ref, atol=tol(dt, "row_kernel") * 4, rtol=tol(dt, "row_kernel") * 2)
    h2 = h.copy()
    _ops.bias_act(h2, None, act, out=h2)                             # in place
    np.testing.assert_allclose(h2, reference.activation(h, act), atol=tol(dt, "row_kernel") * 4,
                               rtol=tol(dt, "row_kernel") * 2)


def test_activation_edge_values():
    x = np.array([[-np.inf, -100, -1e-30, 0, 1e-30, 100, np.inf, np.nan]], np.float32)
    for act in ("relu", "gelu", "gelu_tanh", "silu"):
        out = _ops.bias_act(x, None, act)
        with np.errstate(all="ignore"):
            ref = reference.activation(x, act)
        assert np.isnan(out[0, -1])
        np.testing.assert_allclose(out[0, 1:-2], ref[0, 1:-2], atol=1e-6, err_msg=act)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_swiglu(rng, dt):
    F = 37
    h = _rand(rng, (6, 2 * F), dt, 2.0)
    bias = _rand(rng, 2 * F, dt)
    x = h.astype(np.float64) + bias
    ref = reference.activation(x[:, :F], "silu") * x[:, F:]
    np.testing.assert_allclose(_ops.swiglu(h, bias), ref, atol=tol(dt, "row_kernel") * 8, rtol=tol(dt, "row_kernel") * 4)
    h2 = h.copy()
    out = _ops.swiglu(h2, bias, out=h2[:, :F])                       # into the gate half
    np.testing.assert_allclose(out, ref, atol=tol(dt, "row_kernel") * 8, rtol=tol(dt, "row_kernel") * 4)


def test_thread_count_does_not_change_results(rng, monkeypatch):
    import fastattn
    monkeypatch.setattr(sys.modules["fastattn.threads"], "_ELEMS_PER_THREAD", 1024)  # force the team
    a = _rand(rng, (4096, 96), np.float32)
    r = _rand(rng, (4096, 96), np.float32)
    w = _rand(rng, 96, np.float32)
    h = _rand(rng, (512, 192), np.float32)
    outs = {}
    for n in (1, 2, 3):
        with fastattn.threads(n):
            outs[n] = (_ops.add_norm(a, None, r, "layer", w, None, 1e-5)[1],
                       _ops.bias_act(a, w, "gelu"), _ops.swiglu(h, None))
    for n in (2, 3):
        for x, y in zip(outs[1], outs[n]):
            np.testing.assert_array_equal(x, y)


def test_kernels_built_with_openmp():
    import os
    if os.environ.get("FASTATTN_SKIP_OPENMP_TEST"):
        pytest.skip("FASTATTN_SKIP_OPENMP_TEST set")
    from fastattn import _layers
    assert _layers.OPENMP


def test_codes_come_from_the_kernel_module():
    """The wrappers pass the codes fastattn._layers exports by name (no
    codes rebuilt from tuple order): every activation and norm of the layers
    has one, and each name selects its own function."""
    from fastattn import _layers
    from fastattn.nn.layers import ACTIVATIONS
    assert set(_layers.NORMS) == {"none", "layer", "rms"}
    assert set(ACTIVATIONS) - {"swiglu"} <= set(_layers.ACTIVATIONS)
    assert len(set(_layers.ACTIVATIONS.values())) == len(_layers.ACTIVATIONS)
    x = np.linspace(-3, 3, 64).reshape(2, 32)
    for act in _layers.ACTIVATIONS:
        np.testing.assert_allclose(_ops.bias_act(x, None, act), reference.activation(x, act),
                                   atol=1e-12, err_msg=act)

