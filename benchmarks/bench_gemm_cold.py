"""Few-row linear layers with the weights out of cache: what a short query or
a decode step through ``dense`` meets after any other work has run.

    python benchmarks/bench_gemm_cold.py [--threads 1,2] [--rows 1,16,64]
                                         [--rounds 7] [--old CHECKOUT]

A "pass" is one call per weight over a set of MiniLM-sized weights (about
28 MB: 12 x (1536 x 384) float32), each read once, after a 320 MB read that
evicts them from every cache level.  Implementations, interleaved round by
round, the same thread count for all:

* ``fastattn``: ``fastattn.models._ops.dense`` on ``pack``-ed weights (the
  encoders' path);
* ``old`` (with ``--old``): the same from another checkout, in a child
  process (PYTHONPATH=CHECKOUT): e.g. the commit before a change;
* ``blas``: ``np.matmul(x, w.T, out=y)`` (OpenBLAS sgemm, threadpoolctl);
* ``read``: ``w.sum()`` over the same arrays (a plain streaming read).

Reported: the median pass time and the weight bytes / time (GB/s).  The
cold-cache numbers depend on the machine's memory and on its neighbours:
compare the columns of one row, not runs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
N, K, NW = 1536, 384, 12


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((N, K)).astype(np.float32) for _ in range(NW)]


def _passes(impl, rows, threads, rounds):
    """Median cold pass time (s) of one implementation, in this process."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(threads)
    import fastattn
    import fastattn.models._ops as ops
    fastattn.set_num_threads(threads)
    ws = _weights()
    x = np.random.default_rng(1).standard_normal((rows, K)).astype(np.float32)
    y = np.empty((rows, N), np.float32)
    if impl == "fastattn":
        ps = [ops.pack(w) for w in ws]
        calls = [lambda p=p: ops.dense(x, p, out=y) for p in ps]
    elif impl == "blas":
        calls = [lambda w=w: np.matmul(x, w.T, out=y) for w in ws]
    else:
        calls = [w.sum for w in ws]
    if impl == "fastattn":
        ws.clear()                  # the packed copies are what is read
    evict = np.ones(320 << 18, np.float32)            # 320 MB
    for c in calls:
        c()
    times = []
    for _ in range(rounds):
        evict.sum()
        time.sleep(0.01)
        t0 = time.perf_counter()
        for c in calls:
            c()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _child(checkout, impl, rows, threads, rounds):
    env = dict(os.environ, PYTHONPATH=checkout)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", impl,
                          "--rows", str(rows), "--threads", str(threads),
                          "--rounds", str(rounds)],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rows", default="1,16,64")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--old", default=None, help="another checkout's root, built in place")
    ap.add_argument("--json", default=None)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        print(_passes(a._child, int(a.rows), int(a.threads), a.rounds))
        return
    here = os.path.dirname(HERE)
    impls = ["fastattn"] + (["old"] if a.old else []) + ["blas", "read"]
    mb = NW * N * K * 4 / 1e6
    from _timing import describe_machine, machine_info
    print(describe_machine(machine_info()))
    print(f"\n{NW} weights {N} x {K} float32 = {mb:.1f} MB per pass, evicted before each "
          f"pass; median of {a.rounds} passes; GB/s = weight bytes / pass time\n")
    print("| threads | rows | " + " | ".join(f"{i} ms | {i} GB/s" for i in impls) + " |")
    print("|---:|---:|" + "---:|---:|" * len(impls))
    rows_out = []
    for t in (int(s) for s in a.threads.split(",")):
        for m in (int(s) for s in a.rows.split(",")):
            res = {}
            for i in impls:
                res[i] = _child(a.old if i == "old" else here, "fastattn" if i == "old" else i,
                                m, t, a.rounds)
            rows_out.append({"threads": t, "rows": m, **res})
            print(f"| {t} | {m} | " + " | ".join(f"{res[i] * 1e3:.2f} | {mb / 1e3 / res[i]:.1f}"
                                                 for i in impls) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"mb_per_pass": mb, "cells": rows_out}, f, indent=1)


if __name__ == "__main__":
    main()
