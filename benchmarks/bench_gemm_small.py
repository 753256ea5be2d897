"""Linear layers at transformer shapes: fastattn's GEMM (``linear`` of the
kernel build) of two checkouts side by side with NumPy's BLAS sgemm and
torch.matmul, interleaved, medians.

    python benchmarks/bench_gemm_small.py --old /path/to/other/checkout
    python benchmarks/bench_gemm_small.py --minilm      # MiniLM shapes, M 1..4096,
                                                        # no --old needed

Implementations (columns): ``old`` (the --old checkout's ``linear``, W as
an array), ``new`` (this checkout's ``linear`` with W as an array: from
LIN_PACK_ROWS rows on it packs W per call), ``packed`` (this checkout with W
packed once by ``pack_weight``, as the models load it), ``blas``
(``np.matmul`` + bias, OpenBLAS sgemm), ``torch`` (``torch.addmm``).

Each implementation runs in its own worker process (the old checkout's
kernels through PYTHONPATH=<old>, this checkout's kernels and BLAS in a
second one), and the driver alternates them block by block: a block is a
warm-up call then calls for ``--block`` seconds, timed one by one; the cell
is the median over rounds of each block's median call (``--stat best``: of
each block's fastest call).  Y = X W^T + bias, float32, weights
hot in cache (repeated calls), GFLOP/s = 2 M N K / time.  ``--clock cpu``
(one thread) times the calling thread's CPU time instead of the wall clock.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WORKER = r'''
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from fastattn._dispatch import kernels as K
cache = {}
for line in sys.stdin:
    req = json.loads(line)
    M, Kd, N, nt, impl, block = (req[k] for k in ("M", "K", "N", "threads", "impl", "block"))
    clock = time.thread_time if req.get("clock") == "cpu" else time.perf_counter
    key = (Kd, N)
    if key not in cache:
        cache.clear()
        rng = np.random.default_rng(0)
        cache[key] = (rng.standard_normal((128, Kd)).astype(np.float32),
                      rng.standard_normal((N, Kd)).astype(np.float32),
                      rng.standard_normal(N).astype(np.float32))
    X, W, b = cache[key]
    if X.shape[0] < M:
        X = np.resize(X, (M, Kd))
        cache[key] = (X, W, b)
    x = X[:M]
    y = np.empty((M, N), np.float32)
    if impl == "blas":
        def call():
            np.matmul(x, W.T, out=y)
            np.add(y, b, out=y)
    elif impl == "torch":
        import torch
        torch.set_num_threads(nt)
        tx, tW, tb, ty = (torch.from_numpy(a) for a in (x, W, b, y))
        def call():
            torch.addmm(tb, tx, tW.t(), out=ty)
    elif impl == "packed":
        if ("wp", key) not in cache:
            cache[("wp", key)] = K.pack_weight(W)
        c = K.LinearCall(x=x, xs=Kd, wp=cache[("wp", key)], bias=b, relu=False, out=y,
                         ys=N, nthreads=nt)
        def call():
            K.linear(c)
    else:
        if hasattr(K, "LinearCall"):
            c = K.LinearCall(x=x, xs=Kd, w=W, ws=Kd, bias=b, relu=False, out=y, ys=N,
                             nthreads=nt)
            def call():
                K.linear(c)
        else:   # checkouts before the call objects
            def call():
                K.linear(x, Kd, W, Kd, b, False, y, N, nt)
    with threadpool_limits(limits=nt):
        call()
        ts = []
        t_end = time.perf_counter() + block
        while True:
            t0 = clock()
            call()
            t1 = clock()
            ts.append(t1 - t0)
            if time.perf_counter() > t_end and len(ts) >= 3:
                break
    ts.sort()
    print(json.dumps({"t": ts[len(ts) // 2], "best": ts[0], "isa": K.ISA}), flush=True)
'''


def worker(path):
    env = dict(os.environ, PYTHONPATH=path)
    return subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd="/")


def ask(p, **req):
    p.stdin.write(json.dumps(req) + "\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())


MINILM_SHAPES = "384x1152,384x384,384x1536,1536x384"
MINILM_M = "1,8,16,64,256,1024,4096"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default=None, help="checkout with the old kernels (built in place)")
    ap.add_argument("--new", default=ROOT)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--M", default=None,
                    help="row counts (default 1,2,4,...,128; with --minilm " + MINILM_M + ")")
    ap.add_argument("--shapes", default=None,
                    help="KxN list (default 384x1152,384x1536,1536x384,768x2304,768x3072,"
                         "3072x768; with --minilm " + MINILM_SHAPES + ")")
    ap.add_argument("--minilm", action="store_true",
                    help="all-MiniLM-L6-v2's shapes (QKV fused, out, FFN up and down)")
    ap.add_argument("--impls", default=None,
                    help="columns, comma-separated among old,new,packed,blas,torch "
                         "(default: all available)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=float, default=0.02, help="seconds per timed block")
    ap.add_argument("--settle", type=float, default=0.03, help="sleep between blocks")
    ap.add_argument("--stat", choices=("median", "best"), default="median",
                    help="per block: the median call (default) or the fastest one (a "
                         "loaded machine: a descheduled OpenMP/BLAS thread makes the "
                         "median a measure of the scheduler)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the calling thread's CPU time (1 thread only: a measure "
                         "of the kernel that a loaded machine's preemption does not "
                         "distort)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.clock == "cpu" and a.threads != "1":
        ap.error("--clock cpu measures one thread: use --threads 1")
    Ms = a.M or (MINILM_M if a.minilm else "1,2,4,8,12,16,24,32,48,63,64,70,100,128")
    shapes = a.shapes or (MINILM_SHAPES if a.minilm else
                          "384x1152,384x1536,1536x384,768x2304,768x3072,3072x768")
    names = (a.impls.split(",") if a.impls else
             ["old", "new", "packed", "blas", "torch"] if a.old else
             ["new", "packed", "blas", "torch"])
    try:
        import torch  # noqa: F401
    except ImportError:
        names = [n for n in names if n != "torch"]
    if "old" in names and not a.old:
        ap.error("the old column needs --old")
    new = worker(a.new)
    old = worker(a.old) if "old" in names else None
    procs = {"old": (old, "tiled"), "new": (new, "tiled"), "packed": (new, "packed"),
             "blas": (new, "blas"), "torch": (new, "torch")}
    impls = [(n,) + procs[n] for n in names]
    rows = []
    cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
    print("cpu:", cpu[0] if cpu else "?", "| old:", a.old, "| new:", a.new)
    ref = "blas" if "blas" in names else names[-1]
    print(f"{'threads':>7} {'K':>5} {'N':>5} {'M':>5} " + " ".join(f"{n:>7}" for n in names)
          + "  " + " ".join(f"{n + '/' + ref:>12}" for n in names if n != ref)
          + "   (GFLOP/s)")
    for nt in (int(t) for t in a.threads.split(",")):
        for shape in shapes.split(","):
            Kd, N = (int(s) for s in shape.split("x"))
            for M in (int(m) for m in Ms.split(",")):
                per = {name: [] for name, _, _ in impls}
                for r in range(a.rounds):
                    order = impls if r % 2 == 0 else impls[::-1]
                    for name, p, impl in order:
                        time.sleep(a.settle)
                        res = ask(p, M=M, K=Kd, N=N, threads=nt, impl=impl, block=a.block,
                                  clock=a.clock)
                        per[name].append(res["t"] if a.stat == "median" else res["best"])
                g = {n: 2e-9 * M * N * Kd / sorted(v)[len(v) // 2] for n, v in per.items()}
                rows.append(dict(threads=nt, K=Kd, N=N, M=M, **g))
                print(f"{nt:>7} {Kd:>5} {N:>5} {M:>5} " + " ".join(f"{g[n]:7.1f}" for n in names)
                      + "  " + " ".join(f"{g[n] / g[ref]:12.2f}" for n in names if n != ref),
                      flush=True)
    for p in {id(p): p for p in (old, new) if p is not None}.values():
        p.stdin.close()
        p.wait()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
