"""Small-M linear layers: the tiled GEMM (``linear`` of the kernel build) of
two checkouts side by side with NumPy's BLAS, interleaved, medians.

    python benchmarks/bench_gemm_small.py --old /path/to/other/checkout

Each implementation runs in its own worker process (the old checkout's
kernels through PYTHONPATH=<old>, this checkout's kernels and BLAS in a
second one), and the driver alternates them block by block: a block is a
warm-up call then calls for ``--block`` seconds, timed one by one; the cell
is the median over rounds of each block's median call (``--stat best``: of
each block's fastest call).  Y = X W^T + bias, float32, weights
hot in cache (repeated calls), GFLOP/s = 2 M N K / time.
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
    key = (Kd, N)
    if key not in cache:
        cache.clear()
        rng = np.random.default_rng(0)
        cache[key] = (rng.standard_normal((128, Kd)).astype(np.float32),
                      rng.standard_normal((N, Kd)).astype(np.float32),
                      rng.standard_normal(N).astype(np.float32))
    X, W, b = cache[key]
    x = X[:M]
    y = np.empty((M, N), np.float32)
    if impl == "blas":
        def call():
            np.matmul(x, W.T, out=y)
            np.add(y, b, out=y)
    else:
        def call():
            K.linear(x, Kd, W, Kd, b, False, y, N, nt)
    with threadpool_limits(limits=nt):
        call()
        ts = []
        t_end = time.perf_counter() + block
        while True:
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            ts.append(t1 - t0)
            if t1 > t_end and len(ts) >= 3:
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="checkout with the old kernels (built in place)")
    ap.add_argument("--new", default=ROOT)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--M", default="1,2,4,8,12,16,24,32,48,63,64,70,100,128")
    ap.add_argument("--shapes", default="384x1152,384x1536,1536x384,768x2304,768x3072,3072x768",
                    help="KxN list")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=float, default=0.02, help="seconds per timed block")
    ap.add_argument("--settle", type=float, default=0.03, help="sleep between blocks")
    ap.add_argument("--stat", choices=("median", "best"), default="median",
                    help="per block: the median call (default) or the fastest one (a "
                         "loaded machine: a descheduled OpenMP/BLAS thread makes the "
                         "median a measure of the scheduler)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    old, new = worker(a.old), worker(a.new)
    impls = (("old", old, "tiled"), ("new", new, "tiled"), ("blas", new, "blas"))
    rows = []
    cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
    print("cpu:", cpu[0] if cpu else "?", "| old:", a.old, "| new:", a.new)
    print(f"{'threads':>7} {'K':>5} {'N':>5} {'M':>4}  {'old':>7} {'new':>7} {'blas':>7}"
          f"  {'new/old':>7} {'new/blas':>8}   (GFLOP/s)")
    for nt in (int(t) for t in a.threads.split(",")):
        for shape in a.shapes.split(","):
            Kd, N = (int(s) for s in shape.split("x"))
            for M in (int(m) for m in a.M.split(",")):
                per = {name: [] for name, _, _ in impls}
                for r in range(a.rounds):
                    order = impls if r % 2 == 0 else impls[::-1]
                    for name, p, impl in order:
                        time.sleep(a.settle)
                        r = ask(p, M=M, K=Kd, N=N, threads=nt, impl=impl, block=a.block)
                        per[name].append(r["t"] if a.stat == "median" else r["best"])
                g = {n: 2e-9 * M * N * Kd / sorted(v)[len(v) // 2] for n, v in per.items()}
                rows.append(dict(threads=nt, K=Kd, N=N, M=M, **g))
                print(f"{nt:>7} {Kd:>5} {N:>5} {M:>4}  {g['old']:7.1f} {g['new']:7.1f} "
                      f"{g['blas']:7.1f}  {g['new'] / g['old']:7.2f} {g['new'] / g['blas']:8.2f}",
                      flush=True)
    for p in (old, new):
        p.stdin.close()
        p.wait()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
