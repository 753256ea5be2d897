"""Linear, LayerNorm, RMSNorm, FeedForward: NumPy references and PyTorch parity."""
import numpy as np
import pytest

from fastattn.nn import Linear, LayerNorm, RMSNorm, FeedForward
from fastattn.reference import activation
from fastattn import from_torch
from conftest import tol


# every test runs with the projections on the tiled GEMM and on BLAS
pytestmark = pytest.mark.usefixtures("gemm_path")



def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch


def _ln_ref(x, w, b, eps, shape):
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    x = x.astype(np.float64)
    m = x.mean(axes, keepdims=True)
    v = ((x - m) ** 2).mean(axes, keepdims=True)
    y = (x - m) / np.sqrt(v + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_layernorm_reference(rng, dt):
    for shape, affine, bias in (((16,), True, True), ((3, 5), True, False), ((7,), False, False)):
        ln = LayerNorm(shape, eps=1e-6, elementwise_affine=affine, bias=bias, dtype=dt)
        if affine:
            ln.weight[...] = rng.uniform(0.5, 1.5, ln.weight.shape)
        if ln.bias is not None:
            ln.bias[...] = rng.uniform(-1, 1, ln.bias.shape)
        x = (rng.standard_normal((2, 4) + shape) * 3 + 1).astype(dt)
        out = ln(x)
        assert out.shape == x.shape and out.dtype == dt
        np.testing.assert_allclose(out, _ln_ref(x, ln.weight, ln.bias, 1e-6, shape),
                                   atol=tol(dt, "layer"), rtol=0)
        # strided input (non-contiguous) is handled
        xs = np.ascontiguousarray(np.swapaxes(x, 0, 1)).swapaxes(0, 1)
        np.testing.assert_allclose(ln(xs), out, atol=tol(dt, "layer"), rtol=0)
    ln = LayerNorm(8, dtype=dt)
    a, r = rng.standard_normal((2, 3, 8)).astype(dt), rng.standard_normal((2, 3, 8)).astype(dt)
    np.testing.assert_allclose(ln.add_forward(a, r), ln(a + r), atol=tol(dt, "layer") * 2, rtol=0)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_rmsnorm_reference(rng, dt):
    rn = RMSNorm(24, dtype=dt)
    rn.weight[...] = rng.uniform(0.5, 1.5, 24)
    x = rng.standard_normal((3, 5, 24)).astype(dt)
    eps = np.finfo(dt).eps
    ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * rn.weight
    np.testing.assert_allclose(rn(x), ref, atol=tol(dt, "layer"), rtol=0)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh", "silu", "swiglu"])
def test_feedforward_reference(rng, dt, act):
    ff = FeedForward(16, 24, activation=act, dtype=dt, rng=0)
    x = rng.standard_normal((2, 5, 16)).astype(dt)
    h = x.astype(np.float64) @ ff.linear1.weight.T + ff.linear1.bias
    if act == "swiglu":
        h = activation(h[..., :24], "silu") * h[..., 24:]
    else:
        h = activation(h, act)
    ref = h @ ff.linear2.weight.T + ff.linear2.bias
    np.testing.assert_allclose(ff(x), ref, atol=tol(dt, "layer"), rtol=0)


def test_feedforward_callable_activation(rng):
    ff = FeedForward(8, 12, activation=np.tanh, rng=0)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    ref = np.tanh(x @ ff.linear1.weight.T + ff.linear1.bias) @ ff.linear2.weight.T + ff.linear2.bias
    np.testing.assert_allclose(ff(x), ref, atol=1e-5)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_parity_with_torch(rng, dt):
    torch = _torch()
    td = torch.float64 if dt == np.float64 else torch.float32
    torch.manual_seed(0)
    x = rng.standard_normal((3, 7, 20)).astype(dt)
    tx = torch.from_numpy(x)
    mods = [torch.nn.Linear(20, 9, dtype=td), torch.nn.Linear(20, 9, bias=False, dtype=td),
            torch.nn.LayerNorm(20, eps=1e-4, dtype=td), torch.nn.LayerNorm((7, 20), dtype=td),
            torch.nn.LayerNorm(20, bias=False, dtype=td), torch.nn.RMSNorm(20, dtype=td),
            torch.nn.RMSNorm(20, eps=1e-3, dtype=td)]
    for m in mods:
        with torch.no_grad():
            for p in m.parameters():
                p.uniform_(0.5, 1.5)
            ref = m(tx).numpy()
        f = from_torch(m)
        assert f.dtype == dt
        np.testing.assert_allclose(f(x), ref, atol=tol(dt, "layer"), rtol=0, err_msg=repr(m))


def test_torch_gelu_variants(rng):
    torch = _torch()
    x = rng.standard_normal((4, 30)).astype(np.float32) * 3
    from fastattn.nn import _ops
    for approx, name in (("none", "gelu"), ("tanh", "gelu_tanh")):
        ref = torch.nn.functional.gelu(torch.from_numpy(x), approximate=approx).numpy()
        np.testing.assert_allclose(_ops.bias_act(x, None, name), ref, atol=1e-6)
    ref = torch.nn.functional.silu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ops.bias_act(x, None, "silu"), ref, atol=1e-6)


def test_bad_input(rng):
    lin = Linear(4, 3, rng=0)
    with pytest.raises(ValueError, match="embedding size 5"):
        lin(np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match="dtype float64"):
        lin(np.ones((2, 4)))
    ln = LayerNorm((2, 3))
    with pytest.raises(ValueError, match="normalized_shape"):
        ln(np.ones((4, 3, 2), np.float32))
    with pytest.raises(ValueError, match="activation"):
        FeedForward(4, 8, activation="softsign")
    with pytest.raises(TypeError, match="float32 or float64"):
        Linear(2, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="positive integer"):
        Linear(0, 2)
