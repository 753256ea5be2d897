"""Decode-sized projections: fastattn's rows-layout GEMV against NumPy's BLAS
and against the machine's read bandwidth, in one run.

    python benchmarks/bench_gemv.py [--threads 1 2] [--rows 1 2 4 8]
                                    [--shapes 768x768 ...] [--rounds 5]

For every shape N x K (W is (N, K), torch layout), M rows of X and thread
count, three implementations are timed in interleaved rounds (each round
runs each implementation's block of calls in turn; a cell is the median over
rounds of each block's fastest call, so a moment of another job's load on a
shared machine does not become the number):

* ``fastattn``: ``fastattn.nn.layers.gemv`` (bias added in the store);
* ``blas``: ``np.matmul(x, w.T, out=y)`` then ``y += b`` (threadpoolctl sets
  BLAS's threads);
* ``read``: a STREAM-like read of the same bytes -- ``np.matmul(w_big, ones)``
  on a matrix of at least 256 MiB, once per round (BLAS gemv is the fastest
  reader NumPy has), reported as GB/s: the bandwidth a memory-bound GEMV can
  reach at that thread count.

GB/s counts the bytes of W (plus X and Y) once per call.  Timings on a loaded
machine are only meaningful as the ratios of the same row.
"""
import argparse
import statistics
import sys
import time

import numpy as np

SHAPES = ("768x768", "2304x768", "3072x768", "768x3072", "50257x768",
          "2048x2048", "5632x2048", "2048x5632")


def _best(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.05,
                    help="seconds of calls per block (default 0.05)")
    args = ap.parse_args(argv)
    import fastattn
    from fastattn.nn.layers import gemv
    from threadpoolctl import threadpool_limits
    print(f"fastattn {fastattn.__version__} ({fastattn.isa}), numpy {np.__version__}")
    rng = np.random.default_rng(0)
    big = rng.standard_normal((1 << 16, 1024), dtype=np.float32)    # 256 MiB
    ones = np.ones(1024, np.float32)
    print(f"{'shape':>11} {'M':>2} {'thr':>3}  {'fastattn':>12} {'blas':>12} "
          f"{'read':>8}  {'fa/blas':>7} {'fa/read':>7}")
    for nt in args.threads:
        with threadpool_limits(limits=nt, user_api="blas"):
            for shape in args.shapes:
                N, K = (int(s) for s in shape.split("x"))
                w = rng.standard_normal((N, K), dtype=np.float32)
                b = rng.standard_normal(N, dtype=np.float32)
                for M in args.rows:
                    x = rng.standard_normal((M, K), dtype=np.float32)
                    y = np.empty((M, N), np.float32)

                    def fa():
                        gemv(x, w, b, out=y, num_threads=nt)

                    def blas():
                        np.matmul(x, w.T, out=y)
                        np.add(y, b, out=y)

                    def read():
                        big @ ones

                    t1 = _best(fa, 3)
                    reps = max(3, min(200, int(args.budget / max(t1, 1e-6))))
                    tf, tb, tr = [], [], []
                    for _ in range(args.rounds):
                        tf.append(_best(fa, reps))
                        tb.append(_best(blas, reps))
                        tr.append(_best(read, 2))
                    nbytes = (w.nbytes + x.nbytes + y.nbytes + b.nbytes)
                    gf = nbytes / statistics.median(tf) / 1e9
                    gb = nbytes / statistics.median(tb) / 1e9
                    gr = big.nbytes / statistics.median(tr) / 1e9
                    print(f"{shape:>11} {M:>2} {nt:>3}  {gf:7.1f} GB/s {gb:7.1f} GB/s "
                          f"{gr:5.1f}  {gf / gb:7.2f} {gf / gr:7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
