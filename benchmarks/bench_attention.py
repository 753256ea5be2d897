"""Benchmark fastattn's scaled_dot_product_attention against its peers.

One run times, at the same thread count for everybody:

- ``fastattn``      fastattn.scaled_dot_product_attention
- ``numpy``         a float32/float64 NumPy implementation written here
                    (q @ kᵀ · scale, max-subtracted softmax, @ v; causal via an
                    np.triu mask); materialises the B·H·L·S score matrix
- ``torch``         torch.nn.functional.scaled_dot_product_attention
- ``ort_mha``       ONNX Runtime, com.microsoft MultiHeadAttention contrib op
- ``ort_attention`` ONNX Runtime, standard ONNX ``Attention`` op (opset 23)

plus two ceilings measured in the same process with the same threads: a large
GEMM through NumPy (``@``, BLAS) as the compute ceiling and a 1 GiB read
through NumPy (a threaded matrix-vector product, and a single-threaded
``np.add.reduce``) as the memory-read bandwidth reference.

Every peer's output is compared with the NumPy reference (or torch where the
NumPy reference is skipped for memory) before it is timed; an ONNX Runtime op
that errors or disagrees is reported as n/a with the reason. fastattn's max abs
difference is printed in the table.

Usage::

    python benchmarks/bench_attention.py                  # full grid, all cores
    python benchmarks/bench_attention.py --quick          # ~1 minute subset
    python benchmarks/bench_attention.py --threads 1,2 --dtype float64
    python benchmarks/bench_attention.py --markdown out.md --json out.json --plot out.png
    python benchmarks/bench_attention.py --dtype bfloat16 [--quick]   # bf16 mode (below)

``--dtype bfloat16`` runs its own grid (:func:`bf16_main`): fastattn on bf16
q/k/v (bf16 output) against fastattn float32 and torch's
scaled_dot_product_attention on bf16 tensors, over prefill (head_dim 32, 64,
80, 128; L = S from 128 to 4096; causal and not) and decode (L = 1, GQA,
S from 1k to 32k), in GFLOP/s and GB/s of K/V read.  The three are timed
interleaved (one call of each in turn, medians), so the ratios hold on a
loaded machine.

The timed callables are built by the ``make_*`` functions below, so an asv
suite (or a notebook) can import and reuse them.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import sys
import time
from typing import Optional

import numpy as np

try:  # run as a script (python benchmarks/bench_attention.py) or as a module
    from _timing import (busy_warning, default_threads, describe_machine, limit_threads, machine_info,
                         measure, optional_import, set_env_threads, write_json)
except ImportError:  # pragma: no cover
    from benchmarks._timing import (busy_warning, default_threads, describe_machine, limit_threads,
                                    machine_info, measure, optional_import, set_env_threads,
                                    write_json)

HERE = os.path.dirname(os.path.abspath(__file__))

IMPLS = ("fastattn", "numpy", "torch", "ort_mha", "ort_attention")
LABELS = {
    "fastattn": "fastattn",
    "numpy": "NumPy",
    "torch": "torch",
    "ort_mha": "ORT MHA",
    "ort_attention": "ORT Attention",
}
PEERS = ("torch", "ort_mha", "ort_attention")  # "the faster peer" is the fastest of these
# order in which a cell runs its implementations: the reference first
RUN_ORDER = ("numpy", "torch", "ort_mha", "ort_attention", "fastattn")
TOL = {"float32": 1e-4, "float64": 1e-10}


# ----------------------------------------------------------------------------
# the grid


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention problem: query (B, H, L, D), key/value (B, Hkv, S, D)."""

    kind: str  # "mha", "gqa", "decode" or "fewq" (2..63 query rows per head)
    B: int
    H: int
    Hkv: int
    L: int
    S: int
    D: int
    causal: bool

    @property
    def label(self) -> str:
        heads = f"{self.H}" if self.H == self.Hkv else f"{self.H}:{self.Hkv}"
        return f"{self.B}×{heads}×{self.L}×{self.S}×{self.D}"

    @property
    def key(self) -> tuple:
        """Identifies the shape without the causal flag."""
        return (self.kind, self.B, self.H, self.Hkv, self.L, self.S, self.D)

    def flops(self) -> float:
        """4·B·H·L·S·D (two GEMMs of 2·L·S·D each per head), half for causal."""
        f = 4.0 * self.B * self.H * self.L * self.S * self.D
        return f / 2 if self.causal else f

    def kv_bytes(self, itemsize: int) -> int:
        """Bytes of K and V read once."""
        return 2 * self.B * self.Hkv * self.S * self.D * itemsize

    def score_bytes(self, itemsize: int) -> int:
        """Size of the B·H·L·S score matrix the NumPy reference materialises."""
        return self.B * self.H * self.L * self.S * itemsize


def full_grid() -> list:
    cases = []
    for B, H, L in [(1, 12, 128), (8, 12, 128), (1, 12, 512), (4, 12, 1024),
                    (1, 16, 2048), (1, 16, 4096), (1, 8, 8192)]:
        for causal in (False, True):
            cases.append(Case("mha", B, H, H, L, L, 64, causal))
    for causal in (False, True):
        cases.append(Case("gqa", 1, 32, 8, 2048, 2048, 128, causal))
    for B in (1, 8):
        for S in (4096, 16384):
            # one query row: bottom-right causal would be identical to non-causal
            cases.append(Case("decode", B, 32, 32, 1, S, 128, False))
    return cases


def decode_hd_grid() -> list:
    """Decode (one query row) at head_dim 32/64/80/128 over K+V sizes from
    cache-resident (4 MiB) to memory-bound (256 MiB); plus the batch-4 and
    GQA shapes of issue 10 (``--kinds decode_hd``)."""
    cases = []
    for D in (32, 64, 80, 128):
        for mib in (4, 16, 64, 256):
            S = max(64, mib * 2**20 // (2 * 8 * D * 4) // 64 * 64)
            cases.append(Case("decode", 1, 8, 8, 1, S, D, False))
    cases.append(Case("decode", 4, 8, 8, 1, 8192, 64, False))
    cases.append(Case("decode", 1, 32, 8, 1, 8192, 64, False))
    cases.append(Case("decode", 1, 32, 8, 1, 8192, 128, False))
    return cases


def fewq_grid() -> list:
    """Few-query attention (chunked prefill, speculative verification): L = 2
    to 63 query rows per head against S = 1k..12k keys (``--kinds fewq``)."""
    return [Case("fewq", 1, 12, 12, L, S, 64, False)
            for L in (2, 4, 8, 16, 32, 63) for S in (1024, 4096, 12000)]


def fewq_full_grid() -> list:
    """The fuller few-query grid (``--kinds fewq_full``): L = 2..64 query rows
    per head x head_dim 32/64/80/128 x S = 1k and 8k keys, without and with
    GQA (8 heads, or 16 query heads on 4 kv heads: at least 4 tasks for 2
    threads either way), plus S = 32k at head_dim 64 and 128."""
    cases = []
    for H, Hkv in ((8, 8), (16, 4)):
        for S in (1024, 8192):
            for D in (32, 64, 80, 128):
                for L in (2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 56, 63, 64):
                    cases.append(Case("fewq", 1, H, Hkv, L, S, D, False))
        for D in (64, 128):
            for L in (4, 16, 32, 48):
                cases.append(Case("fewq", 1, H, Hkv, L, 32768, D, False))
    return cases


def quick_grid() -> list:
    cases = []
    for B, H, L in [(1, 12, 128), (1, 12, 512), (1, 16, 2048)]:
        for causal in (False, True):
            cases.append(Case("mha", B, H, H, L, L, 64, causal))
    cases.append(Case("gqa", 1, 32, 8, 1024, 1024, 128, True))
    cases.append(Case("decode", 1, 32, 32, 1, 4096, 128, False))
    cases.append(Case("decode", 8, 32, 32, 1, 4096, 128, False))
    return cases


def make_inputs(case: Case, dtype, seed: int = 0):
    """Standard-normal q (B, H, L, D), k and v (B, Hkv, S, D), C-contiguous."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)

    def rand(shape):
        return rng.standard_normal(shape, dtype=dtype)

    q = rand((case.B, case.H, case.L, case.D))
    k = rand((case.B, case.Hkv, case.S, case.D))
    v = rand((case.B, case.Hkv, case.S, case.D))
    return q, k, v


# ----------------------------------------------------------------------------
# implementations: each make_* returns (run, result) where run() is the timed
# call and result(out) converts run()'s return value to a (B, H, L, D) array.


class NotAvailable(Exception):
    """An implementation cannot run this case; the message says why."""


def numpy_sdpa(q, k, v, is_causal=False, scale=None):
    """Plain NumPy attention in the input dtype: q @ kᵀ · scale, softmax with
    max subtraction, @ v. Causal is top-left aligned (np.triu mask). Grouped
    query heads (H a multiple of Hkv) share their key/value head by stacking
    the query rows of a group, so K and V are not repeated in memory.
    Materialises the (B, H, L, S) score matrix; operations after the first
    matmul are in place so that is the only large temporary."""
    B, H, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    g = H // Hkv
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    qg = np.ascontiguousarray(q).reshape(B, Hkv, g * L, D)
    s = qg @ k.swapaxes(-1, -2)  # (B, Hkv, g*L, S)
    s *= s.dtype.type(scale)
    s5 = s.reshape(B, Hkv, g, L, S)
    if is_causal:
        np.copyto(s5, -np.inf, where=np.triu(np.ones((L, S), dtype=bool), 1))
    s5 -= s5.max(axis=-1, keepdims=True)
    np.exp(s5, out=s5)
    s5 /= s5.sum(axis=-1, keepdims=True)
    out = s @ v  # (B, Hkv, g*L, D)
    return out.reshape(B, H, L, D)


def make_numpy(case, q, k, v, threads, max_bytes=4 * 2**30):
    need = case.score_bytes(q.itemsize)
    if need > max_bytes:
        raise NotAvailable(
            f"skipped: needs {need / 2**30:.1f} GiB for the score matrix (limit {max_bytes / 2**30:.1f} GiB)")

    def run():
        return numpy_sdpa(q, k, v, is_causal=case.causal)

    return run, (lambda out: out)


def make_fastattn(case, q, k, v, threads, module=None, why="fastattn not importable"):
    if module is None:
        raise NotAvailable(why)
    module.set_num_threads(threads)
    fn = module.scaled_dot_product_attention
    kw = {"is_causal": case.causal}
    if case.H != case.Hkv:
        kw["enable_gqa"] = True
    if case.causal and case.L != case.S:
        kw["causal_alignment"] = "bottom_right"

    def run():
        return fn(q, k, v, **kw)

    return run, (lambda out: out)


def make_torch(case, q, k, v, threads):
    torch, why = optional_import("torch")
    if torch is None:
        raise NotAvailable(f"torch not importable ({why})")
    torch.set_num_threads(threads)
    F = torch.nn.functional
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))  # zero copy
    kw = {"is_causal": case.causal}
    if case.H != case.Hkv:
        kw["enable_gqa"] = True
    if case.causal and case.L != case.S:
        raise NotAvailable("torch is_causal is top-left aligned only")

    def run():
        with torch.inference_mode():
            return F.scaled_dot_product_attention(tq, tk, tv, **kw)

    return run, (lambda out: out.numpy())


def _ort_modules():
    ort, why = optional_import("onnxruntime")
    if ort is None:
        raise NotAvailable(f"onnxruntime not importable ({why})")
    onnx, why = optional_import("onnx")
    if onnx is None:
        raise NotAvailable(f"onnx not importable ({why})")
    # Failures come back as exceptions (reported as n/a); without this ORT also
    # logs them in red on stderr, through the progress bar.
    ort.set_default_logger_severity(4)
    return ort, onnx


def _ort_session(ort, model, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 4  # errors come back as exceptions; keep stderr clean
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise NotAvailable(f"session creation failed: {_first_line(exc)}") from None


def _ort_bound_runner(ort, sess, feeds: dict, out_name: str, out_array: np.ndarray):
    """IOBinding over the caller's arrays: no input copies, output written in
    place into ``out_array`` (no per-call allocation or copy-out)."""
    binding = sess.io_binding()
    keep = []
    for name, arr in feeds.items():
        val = ort.OrtValue.ortvalue_from_numpy(arr)
        keep.append(val)
        binding.bind_ortvalue_input(name, val)
    out_val = ort.OrtValue.ortvalue_from_numpy(out_array)
    keep.append(out_val)
    binding.bind_ortvalue_output(out_name, out_val)

    def run(_keep=keep):
        sess.run_with_iobinding(binding)
        return out_array

    return run


def _onnx_elem_type(onnx, dtype):
    return {np.dtype(np.float32): onnx.TensorProto.FLOAT,
            np.dtype(np.float64): onnx.TensorProto.DOUBLE}[np.dtype(dtype)]


def build_ort_mha_model(onnx, case: Case, dtype):
    """com.microsoft MultiHeadAttention: query (B, L, H·D); key and value given
    4-D as (B, H, S, D) ("BNSH", accepted by the CPU kernel without a bias);
    output (B, L, H·D). Causal via the ``unidirectional`` attribute."""
    h = onnx.helper
    T = _onnx_elem_type(onnx, dtype)
    attrs = {"num_heads": case.H}
    if case.causal:
        attrs["unidirectional"] = 1
    node = h.make_node("MultiHeadAttention", ["query", "key", "value"], ["output"],
                       domain="com.microsoft", **attrs)
    graph = h.make_graph(
        [node], "mha",
        [h.make_tensor_value_info("query", T, [case.B, case.L, case.H * case.D]),
         h.make_tensor_value_info("key", T, [case.B, case.Hkv, case.S, case.D]),
         h.make_tensor_value_info("value", T, [case.B, case.Hkv, case.S, case.D])],
        [h.make_tensor_value_info("output", T, [case.B, case.L, case.H * case.D])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 23), h.make_opsetid("com.microsoft", 1)])


def make_ort_mha(case, q, k, v, threads):
    ort, onnx = _ort_modules()
    # GQA (Hkv < H) is attempted too: the n/a reason is then ORT's own words.
    model = build_ort_mha_model(onnx, case, q.dtype)
    sess = _ort_session(ort, model, threads)
    # The query layout change is done once here, outside the timed call: a
    # caller of MHA holds (B, L, H·D) straight from its projection.
    q3 = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).reshape(case.B, case.L, case.H * case.D)
    out = np.empty((case.B, case.L, case.H * case.D), dtype=q.dtype)
    run = _ort_bound_runner(ort, sess, {"query": q3, "key": k, "value": v}, "output", out)

    def result(o):
        return o.reshape(case.B, case.L, case.H, case.D).transpose(0, 2, 1, 3)

    return run, result


def build_ort_attention_model(onnx, case: Case, dtype):
    """ONNX Attention (opset 23): 4-D q (B, H, L, D), k/v (B, Hkv, S, D) with
    GQA when Hkv < H; output (B, H, L, D). ``is_causal=1``."""
    h = onnx.helper
    T = _onnx_elem_type(onnx, dtype)
    node = h.make_node("Attention", ["Q", "K", "V"], ["Y"], is_causal=int(case.causal))
    graph = h.make_graph(
        [node], "attention",
        [h.make_tensor_value_info("Q", T, [case.B, case.H, case.L, case.D]),
         h.make_tensor_value_info("K", T, [case.B, case.Hkv, case.S, case.D]),
         h.make_tensor_value_info("V", T, [case.B, case.Hkv, case.S, case.D])],
        [h.make_tensor_value_info("Y", T, [case.B, case.H, case.L, case.D])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 23)])


def make_ort_attention(case, q, k, v, threads):
    ort, onnx = _ort_modules()
    if case.causal and case.L != case.S:
        raise NotAvailable("causal with L != S not benchmarked (alignment differs between ops)")
    model = build_ort_attention_model(onnx, case, q.dtype)
    sess = _ort_session(ort, model, threads)
    out = np.empty(q.shape, dtype=q.dtype)
    run = _ort_bound_runner(ort, sess, {"Q": q, "K": k, "V": v}, "Y", out)
    return run, (lambda o: o)


MAKERS = {
    "numpy": make_numpy,
    "fastattn": make_fastattn,
    "torch": make_torch,
    "ort_mha": make_ort_mha,
    "ort_attention": make_ort_attention,
}


# ----------------------------------------------------------------------------
# ceilings


def gemm_ceiling(n: int, dtype, *, repeat: int = 5, budget: float = 6.0) -> dict:
    """GFLOP/s of an n×n×n GEMM through NumPy ``@`` (BLAS, current threads).
    A ceiling is a best case, so ``gflops`` uses the fastest call (the median
    is in ``gflops_median``)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=dtype)
    b = rng.standard_normal((n, n), dtype=dtype)
    c = np.empty((n, n), dtype=dtype)
    t = measure(lambda: np.matmul(a, b, out=c), warmup=1, repeat=repeat, min_repeat=2, budget=budget)
    return {"size": n, "dtype": np.dtype(dtype).name, "gflops": 2.0 * n**3 / t.min / 1e9,
            "gflops_median": 2.0 * n**3 / t.median / 1e9, "timing": t.as_dict()}


def read_bandwidth(nbytes: int, *, repeat: int = 7, budget: float = 3.0) -> dict:
    """Memory-read bandwidth in GB/s (1e9 B/s) over an ``nbytes`` float32 array:
    ``gemv``: A @ x with A of 4096 columns (BLAS sgemv, current threads);
    ``reduce``: np.add.reduce over the flat array (NumPy, one thread).
    ``gbs`` is the larger of the two, the reference for decode rows. Best
    call, like the GEMM ceiling (medians are kept too)."""
    cols = 4096
    rows = max(1, nbytes // (4 * cols))
    a = np.ones((rows, cols), dtype=np.float32)  # touched: pages are resident
    x = np.ones(cols, dtype=np.float32)
    y = np.empty(rows, dtype=np.float32)
    flat = a.reshape(-1)
    real = a.nbytes
    t_gemv = measure(lambda: np.matmul(a, x, out=y), warmup=1, repeat=repeat, min_repeat=3, budget=budget)
    t_red = measure(lambda: np.add.reduce(flat), warmup=1, repeat=repeat, min_repeat=3, budget=budget)
    res = {
        "bytes": real,
        "gemv_gbs": real / t_gemv.min / 1e9,
        "reduce_gbs": real / t_red.min / 1e9,
        "gemv_gbs_median": real / t_gemv.median / 1e9,
        "reduce_gbs_median": real / t_red.median / 1e9,
        "gemv": t_gemv.as_dict(),
        "reduce": t_red.as_dict(),
    }
    res["gbs"] = max(res["gemv_gbs"], res["reduce_gbs"])
    return res


# ----------------------------------------------------------------------------
# running one cell


def _first_line(exc) -> str:
    text = f"{exc}".strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 220 else line[:217] + "..."


def run_case(case: Case, dtype, threads: int, impls, *, fa_module=None, fa_why=None, repeat=10, budget=1.0,
             numpy_max_bytes=4 * 2**30, settle=0.25, progress=None) -> dict:
    """Check then time every implementation on one case. Returns a dict with
    per-implementation status ("ok", "n/a", "mismatch", "error"), reason,
    max abs difference from the reference, and timings.

    ``settle`` seconds of sleep before each implementation: thread pools keep
    spinning for a while after their last call (OpenBLAS ~0.1 s, ORT, OpenMP),
    and on a machine with few cores a spinning pool of the *previous*
    implementation slowed the next one's small calls by up to 8× (measured:
    torch at 1×12×128×128×64 took 5 ms right after the NumPy reference,
    0.8 ms alone)."""
    q, k, v = make_inputs(case, dtype)
    tol = TOL[np.dtype(dtype).name]
    ref = None
    ref_name = None
    out = {}
    for name in RUN_ORDER:
        if name not in impls:
            continue
        if progress is not None:
            progress(name, False)
        gc.collect()  # drop the previous implementation's session / buffers
        time.sleep(settle)
        rec = {"status": None, "reason": None, "maxdiff": None, "checked_against": None}
        out[name] = rec
        try:
            if name == "numpy":
                run, result = make_numpy(case, q, k, v, threads, numpy_max_bytes)
            elif name == "fastattn":
                run, result = make_fastattn(case, q, k, v, threads, fa_module,
                                            fa_why or "fastattn not importable")
            else:
                run, result = MAKERS[name](case, q, k, v, threads)
            t0 = time.perf_counter()
            first = run()  # correctness check; also the first warm-up call
            first_s = time.perf_counter() - t0
            got = np.asarray(result(first))
        except NotAvailable as exc:
            rec.update(status="n/a", reason=str(exc))
            continue
        except MemoryError as exc:
            rec.update(status="n/a", reason=f"MemoryError: {_first_line(exc)}")
            continue
        except Exception as exc:
            rec.update(status="n/a", reason=f"{type(exc).__name__}: {_first_line(exc)}")
            continue
        if ref is None:
            if name == "fastattn":
                rec["reason"] = "no reference available: unchecked"
            else:
                ref, ref_name = np.array(got, copy=True), name
                rec["checked_against"] = "itself (reference)"
        else:
            if got.shape != ref.shape:
                rec.update(status="mismatch", reason=f"shape {got.shape} != {ref.shape}")
            else:
                diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if got.size else 0.0
                if not np.isfinite(diff):
                    diff = float("inf")
                rec["maxdiff"] = diff
                rec["checked_against"] = ref_name
                if diff > tol:
                    rec.update(status="mismatch", reason=f"max abs diff {diff:.3g} vs {ref_name} > {tol:g}")
        del first, got
        if rec["status"] == "mismatch" and name != "fastattn":
            rec["status"] = "n/a"  # a peer that computes something else is not timed
            continue
        # More warm-up for fast calls; slow ones are already warm after the check.
        warm = 0 if first_s > 0.5 else 2
        try:
            t = measure(run, warmup=warm, repeat=repeat, min_repeat=3, budget=budget)
        except Exception as exc:
            rec.update(status="error", reason=f"{type(exc).__name__}: {_first_line(exc)}")
            continue
        rec["timing"] = t.as_dict()
        rec["first_call_s"] = first_s
        if rec["status"] is None:
            rec["status"] = "ok"
        del run, result
    if progress is not None:
        progress(None, True)
    gc.collect()
    return {"case": dataclasses.asdict(case), "label": case.label, "flops": case.flops(),
            "kv_bytes": case.kv_bytes(np.dtype(dtype).itemsize), "reference": ref_name,
            "tolerance": tol, "impls": out}


# ----------------------------------------------------------------------------
# report


def _ms(cell, name):
    rec = cell["impls"].get(name)
    if not rec or "timing" not in rec:
        return None
    return rec["timing"]["median_s"] * 1e3


def _fmt(x, nd=2):
    if x is None:
        return "n/a"
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{nd}f}"


def _ratio(a_ms, b_ms):
    """Speed ratio of a over b (>1: a is faster)."""
    if a_ms is None or b_ms is None or a_ms <= 0:
        return None
    return b_ms / a_ms


def best_peer(cell, impls):
    best = None
    for p in PEERS:
        if p in impls:
            ms = _ms(cell, p)
            if ms is not None and (best is None or ms < best[1]):
                best = (p, ms)
    return best


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summarize(cells, impls) -> dict:
    ratios = []
    for c in cells:
        bp = best_peer(c, impls)
        r = _ratio(_ms(c, "fastattn"), bp[1]) if bp else None
        if r is not None:
            ratios.append((r, c["label"] + (" causal" if c["case"]["causal"] else ""), bp[0]))
    s = {"geomean_vs_best_peer": geomean([r for r, _, _ in ratios]), "n_cells": len(ratios)}
    if ratios:
        r, lab, p = min(ratios)
        s["min_vs_best_peer"] = {"ratio": r, "cell": lab, "peer": p}
    for p in ("numpy",) + PEERS:
        s[f"geomean_vs_{p}"] = geomean([_ratio(_ms(c, "fastattn"), _ms(c, p)) for c in cells])
    # causal speed-up per shape: ms(non-causal) / ms(causal)
    by_key = {}
    for c in cells:
        key = tuple(c["case"][f] for f in ("kind", "B", "H", "Hkv", "L", "S", "D"))
        by_key.setdefault(key, {})[c["case"]["causal"]] = c
    causal = []
    for key, pair in by_key.items():
        if True in pair and False in pair:
            row = {"label": pair[False]["label"], "L": key[4]}
            for name in impls:
                row[name] = _ratio(_ms(pair[True], name), _ms(pair[False], name))
            causal.append(row)
    s["causal_speedup"] = causal
    return s


def markdown_report(result: dict) -> str:
    impls = result["impls"]
    lines = []
    for run in result["runs"]:
        cells = run["cells"]
        ceil = run["ceiling"]
        bw = run["bandwidth"]
        gflops_ceil = ceil["gflops"] if ceil else None
        lines.append(f"### {result['dtype']}, {run['threads']} thread(s)")
        lines.append("")
        if ceil:
            drift = ""
            if run.get("ceiling_start") and run.get("ceiling_end"):
                drift = (f" (best call; before the grid {run['ceiling_start']['gflops']:.0f}, "
                         f"after {run['ceiling_end']['gflops']:.0f})")
            lines.append(f"- Ceiling: {ceil['size']}³ {'s' if ceil['dtype'] == 'float32' else 'd'}gemm via NumPy @: "
                         f"**{ceil['gflops']:.0f} GFLOP/s**{drift}")
        if bw:
            drift = ""
            if run.get("bandwidth_start") and run.get("bandwidth_end"):
                drift = (f" (best call; before {run['bandwidth_start']['gbs']:.1f}, "
                         f"after {run['bandwidth_end']['gbs']:.1f})")
            lines.append(f"- Memory read ({bw['bytes'] / 2**30:.2f} GiB, float32): A@x (BLAS gemv) "
                         f"**{bw['gemv_gbs']:.1f} GB/s**, np.add.reduce (1 thread) {bw['reduce_gbs']:.1f} GB/s"
                         f"{drift}")
        lines.append("")
        # table 1: times and ratios
        peers = [p for p in ("numpy",) + PEERS if p in impls]
        head = ["shape B×H×L×S×D", "causal"] + [f"ms {LABELS[i]}" for i in impls]
        if "fastattn" in impls:
            head += [f"fa vs {LABELS[p]}" for p in peers] + ["fa vs best peer", "fa max abs diff"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
        for c in cells:
            row = [c["label"], "yes" if c["case"]["causal"] else "no"]
            row += [_fmt(_ms(c, i), 3) for i in impls]
            if "fastattn" in impls:
                fa = _ms(c, "fastattn")
                for p in peers:
                    r = _ratio(fa, _ms(c, p))
                    row.append("n/a" if r is None else f"{r:.2f}×")
                bp = best_peer(c, impls)
                r = _ratio(fa, bp[1]) if bp else None
                row.append("n/a" if r is None else f"{r:.2f}× ({LABELS[bp[0]]})")
                rec = c["impls"].get("fastattn", {})
                md = rec.get("maxdiff")
                flag = " ⚠" if rec.get("status") == "mismatch" else ""
                row.append(("n/a" if md is None else f"{md:.1e}") + flag)
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines.append("Ratios are speed ratios (peer ms / fastattn ms): above 1 fastattn is faster. "
                     "Best peer: the fastest of torch and the ORT ops.")
        lines.append("")
        # table 2: throughput
        head = ["shape B×H×L×S×D", "causal"] + [f"GFLOP/s {LABELS[i]}" for i in impls]
        head += [f"% gemm {LABELS[i]}" for i in impls]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
        for c in cells:
            row = [c["label"], "yes" if c["case"]["causal"] else "no"]
            gf = {}
            for i in impls:
                ms = _ms(c, i)
                gf[i] = c["flops"] / (ms * 1e-3) / 1e9 if ms else None
                row.append(_fmt(gf[i], 1))
            for i in impls:
                row.append("n/a" if gf[i] is None or not gflops_ceil else f"{100 * gf[i] / gflops_ceil:.0f}%")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines.append("FLOPs: 4·B·H·L·S·D, half that for causal.")
        lines.append("")
        # table 3: decode bandwidth
        dec = [c for c in cells if c["case"]["kind"] in ("decode", "fewq")]
        if dec:
            head = ["decode / few-query B×H×L×S×D", "K+V MiB"] + [f"GB/s {LABELS[i]}" for i in impls]
            head += [f"% read bw {LABELS[i]}" for i in impls]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
            for c in dec:
                row = [c["label"], f"{c['kv_bytes'] / 2**20:.0f}"]
                gb = {}
                for i in impls:
                    ms = _ms(c, i)
                    gb[i] = c["kv_bytes"] / (ms * 1e-3) / 1e9 if ms else None
                    row.append(_fmt(gb[i], 1))
                for i in impls:
                    row.append("n/a" if gb[i] is None or not bw else f"{100 * gb[i] / bw['gbs']:.0f}%")
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
            lines.append("Decode bandwidth counts K and V read once (2·B·Hkv·S·D·itemsize); "
                         "% is of the NumPy read bandwidth above (the faster of gemv and reduce).")
            lines.append("")
        # summary
        s = run["summary"]
        lines.append("**Summary**")
        lines.append("")
        if s.get("geomean_vs_best_peer") is not None:
            lines.append(f"- fastattn vs the faster peer, geometric mean over {s['n_cells']} cells: "
                         f"**{s['geomean_vs_best_peer']:.2f}×**")
            m = s["min_vs_best_peer"]
            lines.append(f"- minimum: **{m['ratio']:.2f}×** at {m['cell']} (vs {LABELS[m['peer']]})")
            for p in ("numpy",) + PEERS:
                g = s.get(f"geomean_vs_{p}")
                if g is not None:
                    lines.append(f"- geometric mean vs {LABELS[p]}: {g:.2f}×")
        else:
            lines.append("- no cell with both fastattn and a peer timed")
        if s["causal_speedup"]:
            lines.append("")
            lines.append("Causal speed-up (ms non-causal / ms causal; 2.0 would be ideal):")
            lines.append("")
            lines.append("| shape | L | " + " | ".join(LABELS[i] for i in impls) + " |")
            lines.append("|---|---:|" + "---:|" * len(impls))
            for row in s["causal_speedup"]:
                vals = ["n/a" if row.get(i) is None else f"{row[i]:.2f}×" for i in impls]
                lines.append(f"| {row['label']} | {row['L']} | " + " | ".join(vals) + " |")
        # reasons for n/a
        notes = {}
        for c in cells:
            for i, rec in c["impls"].items():
                if rec.get("reason"):
                    notes.setdefault((i, rec["reason"]), []).append(
                        c["label"] + (" causal" if c["case"]["causal"] else ""))
        if notes:
            lines.append("")
            lines.append("Not timed / notes:")
            lines.append("")
            for (i, reason), where in notes.items():
                lines.append(f"- {LABELS[i]}: {reason} — {', '.join(where)}")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: str) -> Optional[str]:
    """Grouped bars: GFLOP/s per shape per implementation (non-decode cells),
    and GB/s of K+V for decode cells; one figure row per thread count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"plot skipped: matplotlib not importable ({exc})"
    impls = result["impls"]
    runs = result["runs"]
    fig, axes = plt.subplots(len(runs), 2, figsize=(16, 4.8 * len(runs)), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1]})
    for r, run in enumerate(runs):
        for col, decode in enumerate((False, True)):
            ax = axes[r][col]
            cells = [c for c in run["cells"] if (c["case"]["kind"] == "decode") == decode]
            if not cells:
                ax.set_visible(False)
                continue
            width = 0.8 / len(impls)
            xs = np.arange(len(cells))
            for j, i in enumerate(impls):
                vals = []
                for c in cells:
                    ms = _ms(c, i)
                    if ms is None:
                        vals.append(0.0)
                    elif decode:
                        vals.append(c["kv_bytes"] / (ms * 1e-3) / 1e9)
                    else:
                        vals.append(c["flops"] / (ms * 1e-3) / 1e9)
                ax.bar(xs + (j - (len(impls) - 1) / 2) * width, vals, width, label=LABELS[i])
            if decode and run["bandwidth"]:
                ax.axhline(run["bandwidth"]["gbs"], color="k", ls="--", lw=1, label="NumPy read bw")
            if not decode and run["ceiling"]:
                ax.axhline(run["ceiling"]["gflops"], color="k", ls="--", lw=1, label="gemm ceiling")
            ax.set_xticks(xs)
            ax.set_xticklabels([c["label"] + ("\ncausal" if c["case"]["causal"] else "") for c in cells],
                               rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("GB/s of K+V" if decode else "GFLOP/s")
            ax.set_title(("decode " if decode else "") + f"{result['dtype']}, {run['threads']} thread(s)")
            ax.grid(axis="y", alpha=0.3)
            if not decode:
                ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default=None,
                   help="thread count for every implementation, or a comma list for a sweep "
                        "(default: all usable cores)")
    p.add_argument("--dtype", choices=("float32", "float64", "bfloat16"), default="float32",
                   help="bfloat16: the bf16 mode (fastattn bf16 vs fastattn float32 vs torch bf16)")
    p.add_argument("--quick", action="store_true", help="small subset, about a minute")
    p.add_argument("--repeat", type=int, default=None,
                   help="max timed calls per cell and implementation (default 100, quick 50); "
                        "the --budget usually stops earlier")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls per cell and implementation before stopping early "
                        "(at least 3 calls; default 1.0, quick 0.3)")
    p.add_argument("--kinds", default="mha,gqa,decode",
                   help="comma list of grid parts to run: mha, gqa, decode (the default), and "
                        "decode_hd (decode at head_dim 32/64/80/128, K+V 4-256 MiB), fewq "
                        "(L = 2..63 query rows against S = 1k..12k keys), fewq_full (L = 2..64 x "
                        "head_dim 32/64/80/128 x S 1k/8k/32k, with and without GQA)")
    p.add_argument("--impls", default=",".join(IMPLS),
                   help=f"comma list from {','.join(IMPLS)} (default all)")
    p.add_argument("--fastattn-module", default=os.environ.get("FASTATTN_BENCH_MODULE", "fastattn"),
                   help="module providing the fastattn API (default fastattn, or $FASTATTN_BENCH_MODULE); "
                        "lets the script run against a stand-in")
    p.add_argument("--numpy-max-gib", type=float, default=4.0,
                   help="skip the NumPy reference where its score matrix exceeds this (default 4)")
    p.add_argument("--settle", type=float, default=0.25,
                   help="seconds to sleep before each implementation so the previous one's "
                        "spinning thread pools go idle (default 0.25)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the gemm and bandwidth references")
    p.add_argument("--markdown", metavar="FILE", help="also write the Markdown report here")
    p.add_argument("--json", metavar="FILE", default=os.path.join(HERE, "results", "attention.json"),
                   help="raw results (default benchmarks/results/attention.json; '' to skip)")
    p.add_argument("--plot", metavar="FILE", default=os.path.join(HERE, "results", "attention.png"),
                   help="PNG plot (default benchmarks/results/attention.png; '' to skip)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads_list = ([int(t) for t in str(args.threads).split(",")] if args.threads
                    else [default_threads()])
    if any(t < 1 for t in threads_list):
        raise SystemExit("--threads must be >= 1")
    if args.dtype == "bfloat16":
        return bf16_main(args, threads_list)
    # Before importing torch / onnxruntime / fastattn, which read these at load.
    set_env_threads(max(threads_list))
    impls = tuple(i for i in IMPLS if i in args.impls.split(","))
    unknown = set(args.impls.split(",")) - set(IMPLS)
    if unknown:
        raise SystemExit(f"unknown --impls {sorted(unknown)}; choose from {IMPLS}")
    repeat = args.repeat or (50 if args.quick else 100)
    budget = args.budget if args.budget is not None else (0.3 if args.quick else 1.0)
    dtype = np.dtype(args.dtype)
    kinds = set(args.kinds.split(","))
    known = {"mha", "gqa", "decode", "decode_hd", "fewq", "fewq_full"}
    if kinds - known:
        raise SystemExit(f"unknown --kinds {sorted(kinds - known)}")
    cases = [c for c in (quick_grid() if args.quick else full_grid()) if c.kind in kinds]
    if "decode_hd" in kinds:
        cases += [c for c in decode_hd_grid() if c not in cases]
    if "fewq" in kinds:
        cases += fewq_grid()
    if "fewq_full" in kinds:
        cases += [c for c in fewq_full_grid() if c not in cases]

    fa_module, fa_why = None, None
    if "fastattn" in impls:
        fa_module, why = optional_import(args.fastattn_module)
        if fa_module is None:
            fa_why = f"cannot import {args.fastattn_module!r}: {why}"
        elif not hasattr(fa_module, "scaled_dot_product_attention"):
            fa_why = f"{args.fastattn_module!r} has no scaled_dot_product_attention"
            fa_module = None
        if fa_why:
            print(f"[bench] fastattn skipped: {fa_why}", file=sys.stderr)
    for name in ("torch", "onnxruntime", "onnx"):
        mod, why = optional_import(name)  # import now so threadpoolctl sees their pools
        if mod is None:
            print(f"[bench] {name} not importable ({why}): its columns will be n/a", file=sys.stderr)

    busy = busy_warning()
    if busy:
        print(f"[bench] WARNING: {busy}", file=sys.stderr)
    info = machine_info(args.fastattn_module if fa_module is not None else "fastattn",
                        with_fastattn_info=fa_module is not None)
    result = {"benchmark": "attention", "dtype": dtype.name, "impls": list(impls),
              "fastattn_module": args.fastattn_module if fa_module is not None else None,
              "args": vars(args), "machine": info, "runs": [],
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    tqdm_mod, _ = (None, None) if args.no_progress else optional_import("tqdm")
    total = len(cases) * len(impls) * len(threads_list)
    bar = tqdm_mod.tqdm(total=total, file=sys.stderr, unit="impl", dynamic_ncols=True) if tqdm_mod else None

    t_start = time.perf_counter()
    for threads in threads_list:
        limits = limit_threads(threads)
        if fa_module is not None and hasattr(fa_module, "set_num_threads"):
            fa_module.set_num_threads(threads)
            limits["fastattn"] = fa_module.get_num_threads() if hasattr(fa_module, "get_num_threads") else threads
        run = {"threads": threads, "limits": limits, "cells": [], "ceiling": None, "bandwidth": None}

        def ceilings(when, run=run, threads=threads):
            # measured before and after the grid: the best of both is the
            # reference, the pair shows how much the machine drifted
            if args.no_ceiling:
                return
            if bar is not None:
                bar.set_description(f"{threads}t ceilings ({when})")
            else:
                print(f"[bench] {threads} thread(s): gemm and bandwidth references ({when})", file=sys.stderr)
            n = 2048 if args.quick else 4096
            c = gemm_ceiling(n, dtype, budget=1.0 if args.quick else 4.0)
            b = read_bandwidth((256 if args.quick else 1024) * 2**20, budget=0.5 if args.quick else 2.0)
            run[f"ceiling_{when}"], run[f"bandwidth_{when}"] = c, b
            if run["ceiling"] is None or c["gflops"] > run["ceiling"]["gflops"]:
                run["ceiling"] = c
            if run["bandwidth"] is None or b["gbs"] > run["bandwidth"]["gbs"]:
                run["bandwidth"] = b

        ceilings("start")
        for case in cases:
            tag = f"{threads}t {case.label}{' causal' if case.causal else ''}"

            started = []

            def progress(name, last, tag=tag, started=started):
                # called before each implementation, and once after the last
                if bar is not None:
                    if started:
                        bar.update(1)
                    if not last:
                        bar.set_description(f"{tag} {LABELS[name]}")
                elif not last:
                    print(f"[bench] {tag} {LABELS[name]}", file=sys.stderr)
                started.append(name)

            cell = run_case(case, dtype, threads, impls, fa_module=fa_module, fa_why=fa_why,
                            repeat=repeat, budget=budget,
                            numpy_max_bytes=args.numpy_max_gib * 2**30, settle=args.settle,
                            progress=progress)
            run["cells"].append(cell)
        ceilings("end")
        run["summary"] = summarize(run["cells"], impls)
        result["runs"].append(run)
    if bar is not None:
        bar.close()
    result["elapsed_s"] = time.perf_counter() - t_start

    report = [f"## Attention benchmark ({dtype.name}{', quick' if args.quick else ''})", "",
              describe_machine(info), ""]
    if busy:
        report += [f"> **Warning:** {busy}.", ""]
    report += [markdown_report(result),
              f"_Total benchmark time {result['elapsed_s']:.0f} s. Median of {repeat} calls at most, "
              f"stopping after {budget:g} s of timed calls (at least 3), after warm-up._", ""]
    text = "\n".join(report)
    print(text)
    if args.markdown:
        folder = os.path.dirname(os.path.abspath(args.markdown))
        os.makedirs(folder, exist_ok=True)
        with open(args.markdown, "w") as fh:
            fh.write(text)
    if args.json:
        write_json(args.json, result)
        print(f"[bench] raw results written to {args.json}", file=sys.stderr)
    if args.plot:
        msg = plot(result, args.plot)
        print(f"[bench] {msg}" if msg else f"[bench] plot written to {args.plot}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------
# --dtype bfloat16: fastattn bf16 vs fastattn float32 vs torch bf16

BF16_IMPLS = ("fastattn_bf16", "fastattn_f32", "torch_bf16")


def bf16_grid(quick: bool) -> list:
    """(kind, B, H, Hkv, L, S, D, causal): prefill and decode cells."""
    cells = []
    dims = (64, 128) if quick else (32, 64, 80, 128)
    lengths = (512, 2048) if quick else (128, 512, 1024, 2048, 4096)
    for D in dims:
        for n in lengths:
            for causal in (False, True):
                H = 8 if n <= 1024 else 4
                cells.append(("prefill", 1, H, H, n, n, D, causal))
    for S in ((4096, 32768) if quick else (1024, 4096, 16384, 32768)):
        cells.append(("decode", 4, 32, 8, 1, S, 128, False))
    return cells


def bf16_main(args, threads_list) -> int:
    set_env_threads(max(threads_list))
    import fastattn
    ml_dtypes, why = optional_import("ml_dtypes")
    if ml_dtypes is None:
        raise SystemExit(f"--dtype bfloat16 needs ml_dtypes ({why})")
    torch, twhy = optional_import("torch")
    bf = np.dtype(ml_dtypes.bfloat16)
    busy = busy_warning()
    if busy:
        print(f"[bench] WARNING: {busy}", file=sys.stderr)
    repeat = args.repeat or (7 if args.quick else 15)
    rows = []
    for threads in threads_list:
        limit_threads(threads)
        fastattn.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        for kind, B, H, Hkv, L, S, D, causal in bf16_grid(args.quick):
            rng = np.random.default_rng(0)
            q32 = rng.standard_normal((B, H, L, D), dtype=np.float32)
            k32 = rng.standard_normal((B, Hkv, S, D), dtype=np.float32)
            v32 = rng.standard_normal((B, Hkv, S, D), dtype=np.float32)
            qb, kb, vb = q32.astype(bf), k32.astype(bf), v32.astype(bf)
            kw = {"is_causal": causal, "enable_gqa": Hkv != H}
            if causal and L != S:
                kw["causal_alignment"] = "bottom_right"
            fns = {
                "fastattn_bf16": lambda: fastattn.scaled_dot_product_attention(qb, kb, vb, **kw),
                "fastattn_f32": lambda: fastattn.scaled_dot_product_attention(
                    q32, k32, v32, **kw),
            }
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(x).to(torch.bfloat16) for x in (q32, k32, v32))
                fns["torch_bf16"] = lambda: torch.nn.functional.scaled_dot_product_attention(
                    tq, tk, tv, is_causal=causal, enable_gqa=Hkv != H)
            # accuracy before timing: the bf16 result against the float32 one
            ref = fns["fastattn_f32"]()
            err = float(np.max(np.abs(fns["fastattn_bf16"]().astype(np.float32) - ref)))
            if "torch_bf16" in fns:
                terr = float(np.max(np.abs(fns["torch_bf16"]().float().numpy() - ref)))
            else:
                terr = float("nan")
            times = {name: [] for name in fns}
            for name, fn in fns.items():
                fn()                                    # warm-up
            budget = args.budget if args.budget is not None else (0.5 if args.quick else 1.5)
            t_end = time.perf_counter() + budget * len(fns)
            for i in range(repeat):                     # interleaved rounds
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
                if i >= 2 and time.perf_counter() > t_end:
                    break
            med = {name: float(np.median(t)) for name, t in times.items()}
            flops = 4.0 * B * H * L * S * D * (0.5 if causal and L == S else 1.0)
            row = {"threads": threads, "kind": kind, "B": B, "H": H, "Hkv": Hkv, "L": L, "S": S,
                   "D": D, "causal": causal, "err_bf16_vs_f32": err, "err_torch_vs_f32": terr,
                   "ms": {n: 1e3 * t for n, t in med.items()}, "rounds": len(times["fastattn_f32"])}
            for name, t in med.items():
                isz = 4 if name == "fastattn_f32" else 2
                row.setdefault("gflops", {})[name] = flops / t / 1e9
                row.setdefault("gbs", {})[name] = 2 * B * Hkv * S * D * isz / t / 1e9
            rows.append(row)
            def r(a, b):
                return med[b] / med[a] if a in med and b in med else float("nan")
            print(f"[bench] {threads}t {kind} B{B} H{H}/{Hkv} L{L} S{S} D{D}"
                  f"{' causal' if causal else ''}: bf16 {row['gflops']['fastattn_bf16']:.0f} "
                  f"GFLOP/s ({row['gbs']['fastattn_bf16']:.1f} GB/s), x{r('fastattn_bf16', 'fastattn_f32'):.2f} "
                  f"fp32, x{r('fastattn_bf16', 'torch_bf16'):.2f} torch bf16", file=sys.stderr)
    text = bf16_markdown(rows, fastattn, busy)
    print(text)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as fh:
            fh.write(text)
    if args.json:
        path = args.json
        if path == os.path.join(HERE, "results", "attention.json"):
            path = os.path.join(HERE, "results", "attention_bf16.json")
        write_json(path, {"benchmark": "attention_bf16", "rows": rows, "args": vars(args),
                          "machine": machine_info("fastattn", with_fastattn_info=True)})
        print(f"[bench] raw results written to {path}", file=sys.stderr)
    return 0


def bf16_markdown(rows, fastattn, busy) -> str:
    def g(xs):
        xs = [x for x in xs if x == x and x > 0]
        return geomean(xs) if xs else float("nan")
    out = [f"## Attention benchmark (bfloat16: fastattn bf16 vs fastattn float32 vs torch bf16)", "",
           f"fastattn build `{fastattn.isa}` (bf16 attention path "
           f"`{getattr(fastattn.kernels, 'ATTN_BF16_PATH', '?')}`); timed interleaved, medians.", ""]
    if busy:
        out += [f"> **Warning:** {busy}.", ""]
    out += ["| threads | kind | shape (B, H/Hkv, L, S, D) | causal | fastattn bf16 GFLOP/s | GB/s "
            "| fastattn fp32 GFLOP/s | torch bf16 GFLOP/s | bf16 / fp32 | bf16 / torch bf16 "
            "| max abs diff bf16 vs fp32 (torch) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for w in rows:
        gf = w["gflops"]
        ms = w["ms"]
        rf = ms["fastattn_f32"] / ms["fastattn_bf16"]
        rt = ms["torch_bf16"] / ms["fastattn_bf16"] if "torch_bf16" in ms else float("nan")
        w["ratio_f32"], w["ratio_torch"] = rf, rt
        out.append(f"| {w['threads']} | {w['kind']} | {w['B']}, {w['H']}/{w['Hkv']}, {w['L']}, "
                   f"{w['S']}, {w['D']} | {'yes' if w['causal'] else ''} | "
                   f"{gf['fastattn_bf16']:.0f} | {w['gbs']['fastattn_bf16']:.1f} | "
                   f"{gf['fastattn_f32']:.0f} | {gf.get('torch_bf16', float('nan')):.0f} | "
                   f"{rf:.2f}x | {rt:.2f}x | {w['err_bf16_vs_f32']:.1e} ({w['err_torch_vs_f32']:.1e}) |")
    for kind in ("prefill", "decode"):
        sel = [w for w in rows if w["kind"] == kind]
        if sel:
            out.append("")
            out.append(f"**{kind}** geometric means: bf16 / fp32 {g([w['ratio_f32'] for w in sel]):.2f}x, "
                       f"bf16 / torch bf16 {g([w['ratio_torch'] for w in sel]):.2f}x "
                       f"(targets: >= 1.6x and >= 2x).")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
