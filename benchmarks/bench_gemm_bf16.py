"""bf16 GEMM: fastattn.bf16.linear on every kernel build that runs here, beside
fastattn's fp32 GEMM, torch's bf16 matmul and NumPy's sgemm, interleaved.

    python benchmarks/bench_gemm_bf16.py                     # MiniLM + decode shapes, 1 and 2 threads
    python benchmarks/bench_gemm_bf16.py --threads 1 --shapes minilm --rounds 3

Y = X W^T (no bias), weights packed once and hot in cache (repeated calls);
GFLOP/s = 2 M N K / time.  Every cell is the median over ``--rounds`` rounds
of the median of a block of calls (``--block`` seconds), the implementations
taking turns block by block within each round, so machine load hits them
alike.  On a shared machine quote the ratios (the ``x fp32`` columns), not
the absolute numbers; the widening paths compare with the fp32 GEMM of the
same vector width (``fp32 fastattn`` is the selected build's, ``fp32 avx2``
the avx2 build's).  Prints a Markdown table; writes nothing into
RESULTS.md/README.md (``--json PATH`` saves the raw cells).

Shapes: MiniLM (all-MiniLM-L6-v2: d=384, FFN 1536) M = 1, 8, 12 (a short
query), 32, 64, 256, 1024, 4096 for (N, K) = (1536, 384), (384, 1536), (384, 384); decode: M = 1 and 8
with N = 50257, K = 768 (GPT-2's LM head) and N = K = 2048.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _timing  # noqa: E402,F401  (puts the repository root on sys.path)

import numpy as np  # noqa: E402

MINILM = [(M, N, K) for (N, K) in ((1536, 384), (384, 1536), (384, 384))
          for M in (1, 8, 12, 32, 64, 256, 1024, 4096)]
DECODE = [(M, N, K) for (N, K) in ((50257, 768), (2048, 2048)) for M in (1, 8)]


def _impls(M, N, K, nt, builds, with_torch):
    import ml_dtypes
    import fastattn
    from fastattn import _dispatch
    from fastattn import bf16 as B
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    xb = x.astype(ml_dtypes.bfloat16)
    out = {}
    for name in builds:
        mod = _dispatch.load_build(name)
        B._k = mod
        p = B.pack_weight(w)
        y = np.empty((M, N), np.float32)

        def call(mod=mod, p=p, y=y):
            B._k = mod
            B.linear(xb, p, out=y, num_threads=nt)
        out[f"bf16 {name}"] = call
    if builds:
        # the best build again, storing bf16 (half the output bytes)
        mod = _dispatch.load_build(builds[0])
        B._k = mod
        p0 = B.pack_weight(w)
        yb = np.empty((M, N), ml_dtypes.bfloat16)

        def call_b(mod=mod):
            B._k = mod
            B.linear(xb, p0, out=yb, num_threads=nt)
        out[f"bf16 {builds[0]} ->bf16"] = call_b
    B._k = _dispatch.kernels
    k = fastattn.kernels
    yf = np.empty((M, N), np.float32)
    lc = k.LinearCall(x=x, xs=K, w=w, ws=K, out=yf, ys=N, nthreads=nt)
    out["fp32 fastattn"] = lambda: k.linear(lc)
    # each widening build's own fp32 GEMM (what its bf16 path must not be
    # slower than): on packed panels, as the models call it, and on the raw
    # weight, as linear(x, w) without a PackedWeight does
    for name in builds:
        kb = _dispatch.load_build(name)
        if not kb.BF16_PATH.startswith("widen"):
            continue
        wpb = kb.pack_weight(w, 1)
        yp = np.empty((M, N), np.float32)
        lcp = kb.LinearCall(x=x, xs=K, wp=wpb, out=yp, ys=N, nthreads=nt)
        out[f"fp32 {name} packed"] = lambda kb=kb, lcp=lcp: kb.linear(lcp)
        if name != fastattn.isa:
            yu = np.empty((M, N), np.float32)
            lcu = kb.LinearCall(x=x, xs=K, w=w, ws=K, out=yu, ys=N, nthreads=nt)
            out[f"fp32 {name}"] = lambda kb=kb, lcu=lcu: kb.linear(lcu)
    yn = np.empty((M, N), np.float32)
    wt = w.T
    out["numpy sgemm"] = lambda: np.matmul(x, wt, out=yn)
    if with_torch:
        import torch
        tx = torch.from_numpy(x).to(torch.bfloat16)
        tw = torch.from_numpy(w).to(torch.bfloat16)
        out["torch bf16"] = lambda: torch.nn.functional.linear(tx, tw)
    return out


def _block(fn, seconds):
    fn()
    ts = []
    t_end = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
        if len(ts) >= 3 and time.perf_counter() > t_end:
            break
    return statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--shapes", default="minilm,decode", help="minilm, decode or both")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=float, default=0.05)
    ap.add_argument("--builds", default=None,
                    help="comma list of kernel builds (default: every runnable one)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits
    import fastattn
    from fastattn import _dispatch
    builds = a.builds.split(",") if a.builds else _dispatch.available_builds()
    with_torch = not a.no_torch
    if with_torch:
        try:
            import torch
        except ImportError:
            with_torch = False
    shapes = []
    for s in a.shapes.split(","):
        shapes += {"minilm": MINILM, "decode": DECODE}[s.strip()]
    cells = []
    print(f"fastattn {fastattn.__version__}, kernel build {fastattn.isa}; "
          f"bf16 paths: " + ", ".join(f"{b}={_dispatch.load_build(b).BF16_PATH}" for b in builds))
    for nt in (int(t) for t in a.threads.split(",")):
        if with_torch:
            torch.set_num_threads(nt)
        cols = None
        for (M, N, K) in shapes:
            impls = _impls(M, N, K, nt, builds, with_torch)
            times = {n: [] for n in impls}
            with threadpool_limits(limits=nt):
                for _ in range(a.rounds):
                    for n, fn in impls.items():
                        times[n].append(_block(fn, a.block))
            med = {n: statistics.median(v) for n, v in times.items()}
            gf = {n: 2.0 * M * N * K / t / 1e9 for n, t in med.items()}
            if cols is None:
                cols = list(impls)
                print(f"\n### {nt} thread(s): GFLOP/s (x fastattn fp32)\n")
                print("| M | N | K | " + " | ".join(cols) + " |")
                print("|---" * (3 + len(cols)) + "|")
            ref = gf["fp32 fastattn"]
            row = [f"{gf[c]:.0f}" + ("" if c == "fp32 fastattn" else f" ({gf[c] / ref:.2f}x)")
                   for c in cols]
            print(f"| {M} | {N} | {K} | " + " | ".join(row) + " |", flush=True)
            cells.append({"threads": nt, "M": M, "N": N, "K": K, "gflops": gf,
                          "median_s": med})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cells": cells, "machine": _timing.machine_info()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
