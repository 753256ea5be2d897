"""Benchmark text generation: fastattn's decoder models against transformers.

Two random-weight float32 checkpoints are built with ``transformers`` and
saved to a temporary folder (nothing is downloaded):

- ``gpt2``: ``GPT2Config()`` (124M parameters: 12 layers, d_model 768, heads
  of 64, tied 50257-token head); ``n_positions`` is raised to fit the longest
  context asked for (random weights: only the shapes matter);
- ``llama``: a ~150M Llama with grouped-query attention (d_model 768, 14
  layers, 12 query heads and 4 key/value heads of 64, SwiGLU 2304, a 32000
  vocabulary, untied head).

For each model, at the same thread count for both libraries and greedy
decoding, one run measures:

- prefill tokens/s: a ``--prefill``-token prompt (batch 1), timed to the
  first generated token (prompt pass + first token, for both libraries);
- decode tokens/s at ``--contexts`` tokens of context and ``--batches``:
  the steps after the first token of a ``--new-tokens`` continuation
  (per-step timestamps: fastattn's ``generate(stream=True)``, a
  ``transformers`` streamer), tokens/s = batch x steps / time;
- the bandwidth bound: bytes a decode step reads (every weight once + the
  K/V cache of every sequence) x steps/s, against the read bandwidth of a
  large NumPy float32 gemv measured in the same run (its W in ordinary
  NumPy memory; the same gemv on a copy of W in 2 MiB pages, where fastattn
  keeps its weights, is printed beside it as the second reference).

``transformers`` runs ``model.generate`` under ``torch.inference_mode`` with
its dynamic cache, and with ``cache_implementation="static"`` as well when
``--torch-cache`` lists it (the faster one is compared).  Implementations
alternate within each repeat; medians are reported.

``--dtypes float32,bfloat16`` (the default) adds fastattn's
``dtype="bfloat16"`` (bf16 weights and KV cache, float32 residual stream)
beside float32, and ``transformers`` with the model converted to
``torch.bfloat16``: decode tokens/s of each, fastattn bf16 / fp32, and
whether the bf16 greedy tokens equal fastattn fp32's (first 16 tokens).

Usage::

    python benchmarks/bench_generate.py              # full grid
    python benchmarks/bench_generate.py --quick      # small contexts, 1 repeat
    python benchmarks/bench_generate.py --json out.json --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

try:  # run as a script or as a module
    from _timing import busy_warning, default_threads, limit_threads, machine_info, write_json
except ImportError:  # pragma: no cover
    from benchmarks._timing import (busy_warning, default_threads, limit_threads,
                                    machine_info, write_json)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gemv_bandwidth(repeat=7, n=8192, huge_pages=False):
    """Read bandwidth (bytes/s) of ``W @ x`` for a (n, n) float32 ``W``
    (256 MiB at n = 8192, far beyond any last-level cache); ``huge_pages``:
    W copied into a ``fastattn._memory.WeightArena`` (2 MiB pages where the
    system allows them), as fastattn's decoders hold their weights."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((n, n), dtype=np.float32)
    if huge_pages:
        from fastattn._memory import WeightArena
        W = WeightArena(enabled=True).copy(W)
    x = rng.standard_normal(n, dtype=np.float32)
    y = np.empty(n, dtype=np.float32)
    np.matmul(W, x, out=y)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.matmul(W, x, out=y)
        ts.append(time.perf_counter() - t0)
    return W.nbytes / statistics.median(ts)


def build_models(folder, max_len):
    import torch
    import transformers as t
    torch.manual_seed(0)
    cfgs = {
        "gpt2": t.GPT2Config(n_positions=max(1024, max_len)),
        "llama": t.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2304,
                               num_hidden_layers=14, num_attention_heads=12,
                               num_key_value_heads=4, max_position_embeddings=max(4096, max_len),
                               tie_word_embeddings=False),
    }
    out = {}
    for name, cfg in cfgs.items():
        d = os.path.join(folder, name)
        m = t.AutoModelForCausalLM.from_config(cfg).eval()
        m.save_pretrained(d, safe_serialization=True)
        out[name] = (m, d)
    return out


class _Stamps:
    """A ``transformers`` streamer recording when each token arrives."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def time_fastattn(model, ids, new_tokens):
    """(seconds to the first token, seconds of the following steps)."""
    t0 = time.perf_counter()
    stamps = []
    for _ in model.generate(ids, new_tokens, eos_token_id=[], stream=True):
        stamps.append(time.perf_counter())
    return stamps[0] - t0, stamps[-1] - stamps[0]


def time_torch(model, ids, new_tokens, cache):
    import torch
    s = _Stamps()
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    tid = torch.tensor(ids)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(tid, attention_mask=torch.ones_like(tid), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, streamer=s,
                       pad_token_id=0, **kw)
    # put() is called with the prompt first, then once per new token
    tok = s.times[1:]
    return tok[0] - t0, tok[-1] - tok[0]


def check_same_tokens(fa, hf, vocab, n=8):
    import torch
    ids = np.random.default_rng(1).integers(0, vocab, (2, 16))
    a = fa.generate(ids, n, eos_token_id=[])
    with torch.inference_mode():
        b = hf.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                        max_new_tokens=n, min_new_tokens=n, do_sample=False,
                        pad_token_id=0).numpy()
    return bool((a == b).all())


def kv_bytes(fa, batch, context):
    return 2 * fa.num_layers * batch * fa.num_kv_heads * context * fa.head_dim * \
        np.dtype(getattr(fa, "_cache_dtype", fa.dtype)).itemsize


def greedy_agreement(fa32, fa16, vocab, n=16, prompts=4):
    """Per prompt: the first new token where bf16 greedy decoding differs
    from fp32 (None: all ``n`` identical)."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(prompts):
        ids = rng.integers(0, vocab, (1, 12))
        a = fa32.generate(ids, n, eos_token_id=[])[0, 12:]
        b = fa16.generate(ids, n, eos_token_id=[])[0, 12:]
        d = np.flatnonzero(a != b)
        out.append(None if d.size == 0 else int(d[0]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: all cores)")
    p.add_argument("--models", default="gpt2,llama")
    p.add_argument("--contexts", default="128,512,2048")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per decode timing")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--torch-cache", default="dynamic,static",
                   help="transformers cache implementations to time (the faster is compared)")
    p.add_argument("--quick", action="store_true",
                   help="contexts 128,512, prefill 256, 12 new tokens, 1 repeat, dynamic cache")
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="fastattn / transformers dtypes to time (float32, bfloat16)")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.contexts, args.prefill, args.new_tokens, args.repeat = "128,512", 256, 12, 1
        args.torch_cache = "dynamic"
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    caches = [c for c in args.torch_cache.split(",") if c]
    names = [m for m in args.models.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    if "float32" not in dtypes:
        dtypes.insert(0, "float32")

    import torch  # noqa: F401  (loaded before the thread limits)
    import fastattn
    from fastattn.models import AutoModelForCausalLM
    n_threads = args.threads or default_threads()
    limits = limit_threads(n_threads)
    fastattn.set_num_threads(n_threads)
    warn = busy_warning()
    if warn:
        print(warn, file=sys.stderr)

    bw = gemv_bandwidth()
    bw_huge = gemv_bandwidth(huge_pages=True)
    print(f"# bench_generate: {n_threads} threads, {'/'.join(dtypes)}, greedy; NumPy gemv read "
          f"bandwidth {bw / 1e9:.1f} GB/s ({bw_huge / 1e9:.1f} GB/s with W in 2 MiB pages)")
    results = {"threads": n_threads, "limits": limits, "gemv_bytes_per_s": bw,
               "gemv_huge_pages_bytes_per_s": bw_huge,
               "machine": machine_info(with_fastattn_info=False), "models": {}}
    max_len = max(contexts + [args.prefill]) + args.new_tokens + 8
    with tempfile.TemporaryDirectory() as tmp:
        built = build_models(tmp, max_len)
        for name in names:
            hf, folder = built[name]
            fa = AutoModelForCausalLM.from_pretrained(folder)
            V = fa.vocab_size
            same = check_same_tokens(fa, hf, V)
            wbytes = fa.weight_bytes_per_token()
            rec = {"params": fa.num_parameters(), "weight_bytes_per_step": wbytes,
                   "same_greedy_tokens": same, "prefill": {}, "decode": []}
            print(f"\n## {name}: {fa.num_parameters() / 1e6:.0f}M parameters, "
                  f"{wbytes / 1e6:.0f} MB of weights per step; greedy tokens identical "
                  f"to transformers: {same}")
            fas = {"float32": fa}
            hfs = {"float32": hf}
            if "bfloat16" in dtypes:
                import copy
                import torch
                try:
                    fas["bfloat16"] = AutoModelForCausalLM.from_pretrained(folder,
                                                                           dtype="bfloat16")
                except ImportError as exc:
                    print(f"fastattn bf16: n/a ({exc})")
                else:
                    agree = greedy_agreement(fa, fas["bfloat16"], V)
                    rec["bf16_weight_bytes_per_step"] = fas["bfloat16"].weight_bytes_per_token()
                    rec["bf16_greedy_first_divergence"] = agree
                    print(f"fastattn bf16: {rec['bf16_weight_bytes_per_step'] / 1e6:.0f} MB of "
                          f"weights per step; greedy tokens vs fp32 (16 new, 4 prompts): "
                          + ", ".join("identical" if a is None else f"diverge at {a}"
                                      for a in agree))
                hfs["bfloat16"] = copy.deepcopy(hf).to(torch.bfloat16)
            rng = np.random.default_rng(2)
            # prefill
            ids = rng.integers(0, V, (1, args.prefill))
            fa_t, hf_t = {d: [] for d in fas}, {c: [] for c in caches}
            for _ in range(args.repeat):
                for d, m in fas.items():
                    fa_t[d].append(time_fastattn(m, ids, 1)[0])
                for c in caches:
                    hf_t[c].append(time_torch(hf, ids, 1, c)[0])
            fa_pre = {d: args.prefill / statistics.median(v) for d, v in fa_t.items()}
            hf_pre = {c: args.prefill / statistics.median(v) for c, v in hf_t.items()}
            best = max(hf_pre, key=hf_pre.get)
            rec["prefill"] = {"tokens": args.prefill, "fastattn_tok_s": fa_pre["float32"],
                              "fastattn_tok_s_by_dtype": fa_pre,
                              "transformers_tok_s": hf_pre}
            print(f"prefill {args.prefill} tokens: fastattn {fa_pre['float32']:.0f} tok/s"
                  + (f" (bf16 {fa_pre['bfloat16']:.0f})" if "bfloat16" in fa_pre else "")
                  + f", transformers ({best}) {hf_pre[best]:.0f} tok/s, "
                  f"x{fa_pre['float32'] / hf_pre[best]:.2f}")
            bf = "bfloat16" in fas
            print("\n| batch | context | fastattn tok/s | transformers tok/s | speed-up | "
                  "fastattn GB/s | % of gemv bandwidth | % of it in 2 MiB pages |"
                  + (" fastattn bf16 tok/s | bf16 / fp32 | transformers bf16 tok/s | "
                     "fastattn bf16 GB/s |" if bf else ""))
            print("|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|---:|" if bf else ""))
            for B in batches:
                for C in contexts:
                    ids = rng.integers(0, V, (B, C))
                    steps = args.new_tokens - 1
                    fa_t = {d: [] for d in fas}
                    hf_t = {c: [] for c in caches}
                    hfb_t = []
                    for _ in range(args.repeat):
                        for d, m in fas.items():
                            fa_t[d].append(time_fastattn(m, ids, args.new_tokens)[1])
                        for c in caches:
                            hf_t[c].append(time_torch(hf, ids, args.new_tokens, c)[1])
                        if "bfloat16" in hfs:
                            hfb_t.append(time_torch(hfs["bfloat16"], ids, args.new_tokens,
                                                    "dynamic")[1])
                    fa_sd = {d: steps / statistics.median(v) for d, v in fa_t.items()}
                    fa_s = fa_sd["float32"]                             # steps/s
                    hf_s = {c: steps / statistics.median(v) for c, v in hf_t.items()}
                    best = max(hf_s, key=hf_s.get)
                    ctx_mid = C + args.new_tokens // 2
                    step_bytes = wbytes + kv_bytes(fa, B, ctx_mid)
                    gbs = fa_s * step_bytes
                    row = {"batch": B, "context": C, "steps": steps,
                           "fastattn_tok_s": B * fa_s,
                           "transformers_tok_s": {c: B * v for c, v in hf_s.items()},
                           "bytes_per_step": step_bytes, "fastattn_bytes_per_s": gbs,
                           "fraction_of_gemv_bandwidth": gbs / bw,
                           "fraction_of_gemv_huge_pages_bandwidth": gbs / bw_huge,
                           "fastattn_step_s": fa_t["float32"], "transformers_step_s": hf_t}
                    line = (f"| {B} | {C} | {B * fa_s:.1f} | {B * hf_s[best]:.1f} ({best}) | "
                            f"x{fa_s / hf_s[best]:.2f} | {gbs / 1e9:.1f} | {100 * gbs / bw:.0f}% | "
                            f"{100 * gbs / bw_huge:.0f}% |")
                    if bf:
                        fb = fas["bfloat16"]
                        sb = fa_sd["bfloat16"]
                        bbytes = fb.weight_bytes_per_token() + kv_bytes(fb, B, ctx_mid)
                        hb = steps / statistics.median(hfb_t) if hfb_t else float("nan")
                        row.update({"fastattn_bf16_tok_s": B * sb, "bf16_over_fp32": sb / fa_s,
                                    "transformers_bf16_tok_s": B * hb,
                                    "bf16_bytes_per_step": bbytes,
                                    "fastattn_bf16_step_s": fa_t["bfloat16"],
                                    "transformers_bf16_step_s": hfb_t})
                        line += (f" {B * sb:.1f} | x{sb / fa_s:.2f} | {B * hb:.1f} | "
                                 f"{sb * bbytes / 1e9:.1f} |")
                    rec["decode"].append(row)
                    print(line)
            results["models"][name] = rec
            del fa, fas, hfs
    if args.json:
        write_json(args.json, results)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
