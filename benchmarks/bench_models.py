"""Sentence embeddings end to end: fastattn against sentence-transformers and ONNX Runtime.

One run, one thread count for everybody (``fastattn.threads``,
``torch.set_num_threads``, ORT ``intra_op_num_threads``), strings in,
normalised float32 embeddings out (tokenisation included), on the same
sentence-transformers folder (default: the packaged all-MiniLM-L6-v2):

- ``fastattn``   :class:`fastattn.models.SentenceEncoder`: packed,
  padding-free batches (its own length sort and token budget)
- ``st``         ``sentence_transformers.SentenceTransformer(folder, device="cpu")``
- ``ort``        ONNX Runtime fp32 on the encoder exported with
  ``torch.onnx.export`` (dynamic batch and sequence axes; inputs input_ids,
  attention_mask, token_type_ids) and fused by
  ``onnxruntime.transformers.optimizer`` (``model_type="bert"``, heads and
  hidden size from config.json: Attention, EmbedLayerNormalization,
  SkipLayerNormalization, BiasGelu)
- ``ort_int8``   the fused graph through ``onnxruntime.quantization.quantize_dynamic``
  (int8 weights), reported with its minimum cosine similarity to ``ort``
- ``fastattn_bf16``  ``SentenceEncoder(folder, dtype="bfloat16")``: bf16 weights
  and GEMM inputs, float32 residual stream (needs ml_dtypes)
- ``st_bf16``    sentence-transformers under ``torch.autocast("cpu", torch.bfloat16)``

A second table compares the bfloat16 rows: fastattn bf16 against fastattn
fp32, sentence-transformers fp32 and bf16 autocast, ORT fp32 and ORT int8,
with each one's minimum cosine similarity to the fp32 embeddings
(sentence-transformers fp32; ORT int8 also against ORT fp32).

ORT batches like sentence-transformers (sorted by length, ``--batch-size``
sentences padded to the longest), then mean pooling and normalisation in NumPy.

Cases: one short query (~12 tokens); 1 x 128 tokens; 32 x 128 tokens; a
server request of 32 mixed-length sentences; a corpus (default 4000
sentences, 5-250 tokens, long-tailed lengths; words drawn from the model's
vocabulary with a seeded RNG).  Implementations are timed interleaved in
rounds (order rotating, a short sleep before each so the previous library's
spinning threads go quiet), medians reported.  Also: the max abs difference
of every implementation to sentence-transformers, where fastattn's time goes
(GEMMs / attention / norms / the rest: tokeniser, pooling, Python), and the
fp32 ceiling = (real tokens x FLOPs per token) / the sgemm rate measured in
the same run.

Usage::

    python benchmarks/bench_models.py --quick            # ~2 min: small corpus, 2 rounds
    python benchmarks/bench_models.py                    # all cases, 4000-sentence corpus
    python benchmarks/bench_models.py --threads 1 --json results/models.json --plot results/models.png
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

try:  # run as a script or as a module
    from _timing import (busy_warning, default_threads, describe_machine, limit_threads,
                         machine_info, measure, optional_import, set_env_threads, write_json)
except ImportError:  # pragma: no cover
    from benchmarks._timing import (busy_warning, default_threads, describe_machine,
                                    limit_threads, machine_info, measure, optional_import,
                                    set_env_threads, write_json)

HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = ("fastattn", "st", "ort", "ort_int8", "fastattn_bf16", "st_bf16")
PEERS = ("st", "ort", "ort_int8")
#: what fastattn bf16 is compared with, in the bfloat16 table
BF16_PEERS = ("fastattn", "st", "st_bf16", "ort", "ort_int8")
LABEL = {"fastattn": "fastattn", "st": "sentence-transformers", "ort": "ORT fp32 (fused)",
         "ort_int8": "ORT int8 (dynamic)", "fastattn_bf16": "fastattn bf16",
         "st_bf16": "sentence-transformers bf16 autocast"}


# ----------------------------------------------------------------------------
# inputs


def _single_token_words(tokenizer):
    """Vocabulary entries that are whole lowercase words tokenising to one id."""
    vocab = tokenizer.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.isascii() and w.islower()
                   and not w.startswith("##") and 2 <= len(w) <= 10)
    enc = tokenizer.encode_batch_fast(words, add_special_tokens=False)
    return [w for w, e in zip(words, enc) if len(e.ids) == 1]


def make_sentence(words, rng, n_tokens):
    """A sentence of exactly ``n_tokens`` tokens ([CLS] and [SEP] included)."""
    k = max(0, n_tokens - 2)
    return " ".join(rng.choice(words, size=k))


def corpus_lengths(rng, n):
    """Token lengths 5..250 with a long tail (log-normal, median ~28)."""
    x = rng.lognormal(mean=np.log(28), sigma=0.75, size=n)
    return np.clip(np.round(x), 5, 250).astype(int)


def make_cases(tokenizer, corpus_size, seed=0):
    rng = np.random.default_rng(seed)
    words = _single_token_words(tokenizer)
    cases = {
        "query 1 x ~12": [make_sentence(words, rng, 12)],
        "1 x 128": [make_sentence(words, rng, 128)],
        "32 x 128": [make_sentence(words, rng, 128) for _ in range(32)],
        "32 mixed (server request)": [make_sentence(words, rng, int(n))
                                      for n in corpus_lengths(rng, 32)],
        f"corpus {corpus_size}": [make_sentence(words, rng, int(n))
                                  for n in corpus_lengths(rng, corpus_size)],
    }
    return cases


# ----------------------------------------------------------------------------
# the implementations


def export_onnx(folder, workdir, cfg):
    """Export the encoder to ONNX, fuse it, quantise it; return the paths."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel

    # eager attention: the pattern onnxruntime's BERT fusion recognises
    # (the SDPA export of transformers 5 is left unfused)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    raw = os.path.join(workdir, "model.onnx")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(Wrap(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), raw,
                      input_names=names, output_names=["last_hidden_state"],
                      dynamic_axes={n: {0: "batch", 1: "seq"}
                                    for n in names + ["last_hidden_state"]},
                      opset_version=17, dynamo=False)
    opt = optimizer.optimize_model(raw, model_type="bert", num_heads=cfg.num_heads,
                                   hidden_size=cfg.hidden_size)
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    fp32 = os.path.join(workdir, "model_opt.onnx")
    opt.save_model_to_file(fp32)
    int8 = os.path.join(workdir, "model_int8.onnx")
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return fp32, int8, fused


class OrtEncoder:
    """ORT session + sentence-transformers-style batching + NumPy mean pooling."""

    def __init__(self, path, tokenizer_file, max_seq_length, threads, batch_size):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(tokenizer_file)
        self.tok.enable_truncation(max_seq_length)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")     # to the longest in a batch
        self.batch_size = batch_size

    def encode(self, sentences):
        order = np.argsort([-len(s) for s in sentences], kind="stable")
        rows = []
        for i in range(0, len(sentences), self.batch_size):
            idx = order[i:i + self.batch_size]
            encs = self.tok.encode_batch_fast([sentences[j] for j in idx])
            ids = np.array([e.ids for e in encs], np.int64)
            mask = np.array([e.attention_mask for e in encs], np.int64)
            h = self.sess.run(None, {"input_ids": ids, "attention_mask": mask,
                                     "token_type_ids": np.zeros_like(ids)})[0]
            m = mask[:, :, None].astype(np.float32)
            e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            rows.append((idx, e))
        out = np.empty((len(sentences), rows[0][1].shape[1]), np.float32)
        for idx, e in rows:
            out[idx] = e
        return out


def build_impls(folder, impls, threads, batch_size, workdir):
    """{name: callable(list of str) -> (N, dim)} and notes {name: reason}."""
    from fastattn.models import SentenceEncoder

    fns, notes, extra = {}, {}, {}
    fa = SentenceEncoder(folder, num_threads=threads)
    fns["fastattn"] = lambda s: fa.encode(s, batch_size=batch_size, show_progress_bar=False)
    extra["fastattn_encoder"] = fa
    if "fastattn_bf16" in impls:
        try:
            fab = SentenceEncoder(folder, dtype="bfloat16", num_threads=threads)
        except ImportError as exc:
            notes["fastattn_bf16"] = str(exc)
        else:
            fns["fastattn_bf16"] = lambda s: fab.encode(s, batch_size=batch_size,
                                                        show_progress_bar=False)
            extra["fastattn_bf16_encoder"] = fab
    if "st" in impls or "st_bf16" in impls:
        st, why = optional_import("sentence_transformers")
        torch, twhy = optional_import("torch")
        if st is None or torch is None:
            notes["st"] = notes["st_bf16"] = why or twhy
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = st.SentenceTransformer(folder, device="cpu")

            def run_st(s, model=model, torch=torch):
                with torch.inference_mode():
                    return model.encode(s, batch_size=batch_size, convert_to_numpy=True,
                                        show_progress_bar=False)

            def run_st_bf16(s, model=model, torch=torch):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    e = model.encode(s, batch_size=batch_size, convert_to_numpy=False,
                                     convert_to_tensor=True, show_progress_bar=False)
                return e.float().numpy()
            if "st" in impls:
                fns["st"] = run_st
            if "st_bf16" in impls:
                fns["st_bf16"] = run_st_bf16
    if "ort" in impls or "ort_int8" in impls:
        ort, why = optional_import("onnxruntime")
        if ort is None:
            notes["ort"] = notes["ort_int8"] = why
        else:
            try:
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fp32, int8, fused = export_onnx(folder, workdir, fa.model.config)
                extra["onnx_fused_ops"] = fused
                extra["onnx_export_s"] = time.perf_counter() - t0
                tokf = os.path.join(folder, "tokenizer.json")
                for name, path in (("ort", fp32), ("ort_int8", int8)):
                    if name in impls:
                        enc = OrtEncoder(path, tokf, fa.max_seq_length, threads, batch_size)
                        fns[name] = enc.encode
            except Exception as exc:  # an exporter / optimiser failure is a result, not a crash
                notes["ort"] = notes["ort_int8"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return fns, notes, extra


# ----------------------------------------------------------------------------
# measurements


def sgemm_rate(threads, repeat=5):
    """GFLOP/s of a float32 GEMM shaped like the encoder's feed-forward
    (4096 x 384 @ 384 x 1536) through NumPy's BLAS, best of ``repeat``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, 384), dtype=np.float32)
    b = rng.standard_normal((384, 1536), dtype=np.float32)
    out = np.empty((4096, 1536), np.float32)
    t = measure(lambda: np.matmul(a, b, out=out), warmup=2, repeat=repeat)
    return 2 * 4096 * 384 * 1536 / t.min / 1e9


def flops(cfg, lengths):
    """Forward FLOPs of the encoder on sequences of ``lengths`` (no padding):
    the dense layers per token plus attention's 4 * L * hidden per layer-token."""
    E, I, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    per_token = 2 * n * (4 * E * E + 2 * E * I)
    lengths = np.asarray(lengths, np.float64)
    return float(per_token * lengths.sum() + n * 4 * E * (lengths ** 2).sum())


@contextlib.contextmanager
def instrumented():
    """Wall time per category of fastattn.models' operations."""
    import fastattn.models._ops as ops

    acc = {"gemm": 0.0, "attention": 0.0, "norms": 0.0}
    saved = []

    def timer(fn, key):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[key] += time.perf_counter() - t0
        return timed

    # the encoders' GEMMs run through dense_plan's plans (dense() is one
    # too: wrapping both would count its time twice); time each run
    for name, key in (("dense_plan", None), ("attention", "attention"),
                      ("add_norm", "norms"), ("dense_bf16", "gemm")):
        fn = getattr(ops, name)
        if key is None:
            def wrapped(*a, _fn=fn, **k):
                return timer(_fn(*a, **k), "gemm")
        else:
            wrapped = timer(fn, key)
        saved.append((name, fn))
        setattr(ops, name, wrapped)
    try:
        yield acc
    finally:
        for name, fn in saved:
            setattr(ops, name, fn)


def time_split(fn, sentences, repeat=3, settle=0.1):
    rows = []
    for _ in range(repeat):
        time.sleep(settle)
        with instrumented() as acc:
            t0 = time.perf_counter()
            fn(sentences)
            total = time.perf_counter() - t0
        row = dict(acc)
        row["rest"] = max(0.0, total - sum(acc.values()))
        row["total"] = total
        rows.append(row)
    rows.sort(key=lambda r: r["total"])
    return rows[len(rows) // 2]        # the median call, so its shares add up


def interleaved(fns, sentences, rounds, block, settle):
    """Each round: every implementation (order rotating) gets ``settle`` s of
    sleep and ``measure(warmup=1, repeat=block)``.  Returns {name: [s]}."""
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(settle)
            t = measure(lambda: fns[n](sentences), warmup=1 if r == 0 else 0, repeat=block,
                        min_repeat=block)
            times[n].extend(t.times)
    return times


def _cos_min(a, b):
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((an * bn).sum(1).min())


# ----------------------------------------------------------------------------
# reporting


def markdown(results, threads, ceiling_rate, notes, extra):
    lines = [f"Sentence embeddings, float32 unless noted, {threads} threads; medians of "
             "interleaved rounds; strings in, normalised embeddings out (tokenisation "
             "included); ratio = peer time / fastattn time (above 1: fastattn faster).", ""]
    for name, why in notes.items():
        lines.append(f"- {LABEL[name]}: n/a ({why})")
    if extra.get("onnx_fused_ops"):
        lines.append("- ORT fused graph: " + ", ".join(f"{k} {v}" for k, v in
                                                       extra["onnx_fused_ops"].items()))
    lines += [f"- sgemm rate measured in this run (NumPy BLAS, 4096x384 @ 384x1536): "
              f"{ceiling_rate:.0f} GFLOP/s", ""]
    hdr = ["case", "sentences", "real tokens"]
    for n in IMPLS:
        hdr.append(f"{LABEL[n]} ms")
    hdr += ["fastattn sent/s", "fastattn tokens/s"] + [f"vs {LABEL[p]}" for p in PEERS] + \
        ["fp32 ceiling ms", "% of ceiling", "max abs diff vs ST (fastattn / ORT fp32)",
         "ORT int8 min cosine"]
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "---|" * 3 + "---:|" * (len(hdr) - 3))
    for r in results:
        med = {k: statistics.median(v) for k, v in r["times"].items() if v}
        fa = med["fastattn"]
        row = [r["case"], str(r["n"]), f"{r['tokens']:,}"]
        row += [f"{med[n] * 1e3:.1f}" if n in med else "n/a" for n in IMPLS]
        row += [f"{r['n'] / fa:,.1f}", f"{r['tokens'] / fa:,.0f}"]
        row += [f"{med[p] / fa:.2f}×" if p in med else "n/a" for p in PEERS]
        row += [f"{r['ceiling_s'] * 1e3:.1f}", f"{100 * r['ceiling_s'] / fa:.0f}%"]
        d = r["diff"]
        row.append(f"{d.get('fastattn', float('nan')):.1e} / {d.get('ort', float('nan')):.1e}")
        row.append(f"{r['int8_min_cos']:.4f}" if r.get("int8_min_cos") is not None else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    if any(r["times"].get("fastattn_bf16") for r in results):
        lines += ["", "bfloat16 (fastattn bf16: bf16 weights and GEMM inputs, float32 residual "
                  "stream, norms and softmax statistics); speed-up = peer time / fastattn bf16 "
                  "time; min cosine = the smallest cosine similarity of a sentence's embedding "
                  "to its fp32 embedding (sentence-transformers fp32; ORT int8 also against "
                  "ORT fp32):", ""]
        hdr = ["case", "fastattn bf16 ms", "fastattn bf16 tokens/s"] + \
            [f"vs {LABEL[p]}" for p in BF16_PEERS] + \
            ["min cos fastattn bf16", "min cos ST bf16 autocast", "min cos ORT int8",
             "min cos ORT int8 vs ORT fp32", "bf16 GEMM share"]
        lines.append("| " + " | ".join(hdr) + " |")
        lines.append("|---|" + "---:|" * (len(hdr) - 1))
        for r in results:
            med = {k: statistics.median(v) for k, v in r["times"].items() if v}
            fb = med.get("fastattn_bf16")
            if fb is None:
                continue
            c = r.get("min_cos", {})
            row = [r["case"], f"{fb * 1e3:.1f}", f"{r['tokens'] / fb:,.0f}"]
            row += [f"{med[p] / fb:.2f}×" if p in med else "n/a" for p in BF16_PEERS]
            row += [f"{c[k]:.5f}" if c.get(k) is not None else "n/a"
                    for k in ("fastattn_bf16", "st_bf16", "ort_int8")]
            row.append(f"{r['int8_min_cos']:.5f}" if r.get("int8_min_cos") is not None
                       else "n/a")
            sb = r.get("split_bf16")
            row.append(f"{100 * sb['gemm'] / sb['total']:.0f}%" if sb else "n/a")
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "*fp32 ceiling*: the case's real tokens × FLOPs per token (dense layers, plus "
              "attention's 4·L·hidden per layer-token) ÷ the sgemm rate above: the time of the "
              "model's arithmetic at BLAS speed, with no padding, tokenisation or pooling.", "",
              "Where fastattn's time goes (the median of 3 instrumented calls, 1 for the large "
              "cases; ms and share):", "",
              "| case | total | GEMMs | attention | norms | rest (tokeniser, pooling, Python) |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["split"]
        tot = s["total"]

        def cell(k):
            return f"{s[k] * 1e3:.1f} ({100 * s[k] / tot:.0f}%)"
        lines.append(f"| {r['case']} | {tot * 1e3:.1f} | {cell('gemm')} | {cell('attention')} | "
                     f"{cell('norms')} | {cell('rest')} |")
    return "\n".join(lines)


def plot(results, path):
    mpl, why = optional_import("matplotlib")
    if mpl is None:
        print(f"no plot: {why}", file=sys.stderr)
        return
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["case"] for r in results]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
    w = 0.8 / len(PEERS)
    for k, p in enumerate(PEERS):
        vals = []
        for r in results:
            t = r["times"]
            vals.append(statistics.median(t[p]) / statistics.median(t["fastattn"])
                        if t.get(p) else 0)
        ax.bar(x + (k - (len(PEERS) - 1) / 2) * w, vals, w, label=f"vs {LABEL[p]}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("fastattn speed-up (peer time / fastattn time)")
    ax.set_title("Sentence embeddings (all-MiniLM-L6-v2), fastattn fp32")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for everybody (default: all usable cores)")
    p.add_argument("--model", default=None,
                   help="sentence-transformers folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--corpus", type=int, default=None,
                   help="corpus sentences (default 4000; 300 with --quick)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case")
    p.add_argument("--block", type=int, default=3, help="timed calls per block (small cases)")
    p.add_argument("--settle", type=float, default=0.2, help="sleep before each block (s)")
    p.add_argument("--quick", action="store_true",
                   help="a 300-sentence corpus, 2 rounds: finishes in a couple of minutes")
    p.add_argument("--json", default=os.path.join(HERE, "results", "models.json"))
    p.add_argument("--plot", default=os.path.join(HERE, "results", "models.png"))
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads or default_threads()
    set_env_threads(threads)            # before torch / onnxruntime load
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.quick:
        args.rounds, args.block = 2, 2
        args.corpus = args.corpus or 300
    args.corpus = args.corpus or 4000
    impls = [i for i in args.impls.split(",") if i in IMPLS]
    if "fastattn" not in impls:
        impls.insert(0, "fastattn")
    optional_import("torch")
    import fastattn
    from fastattn.models.sentence import default_model_folder

    folder = args.model or default_model_folder()
    with tempfile.TemporaryDirectory(prefix="bench_models_") as work:
        fns, notes, extra = build_impls(folder, impls, threads, args.batch_size, work)
        limit_threads(threads)          # BLAS, OpenMP (threadpoolctl), torch
        fastattn.set_num_threads(threads)
        warn = busy_warning()
        if warn:
            print(f"WARNING: {warn}", file=sys.stderr)
        fa = extra["fastattn_encoder"]
        cfg = fa.model.config
        rate0 = sgemm_rate(threads)
        cases = make_cases(fa.tokenizer, args.corpus)
        results = []
        for case, sentences in cases.items():
            _, lengths = fa._tokenize([s.strip() for s in sentences])
            embs = {n: f(sentences) for n, f in fns.items()}
            ref = embs.get("st")
            diff = {n: float(np.abs(e - ref).max()) for n, e in embs.items()
                    if ref is not None and n != "st"}
            diff.pop("fastattn_bf16", None)     # bf16: judged by its cosine instead
            diff.pop("st_bf16", None)
            if diff.get("fastattn", 0) > 1e-5:
                print(f"WARNING: {case}: fastattn differs from sentence-transformers by "
                      f"{diff['fastattn']:.1e} (> 1e-5)", file=sys.stderr)
            int8_cos = _cos_min(embs["ort_int8"], embs["ort"]) \
                if "ort_int8" in embs and "ort" in embs else None
            fp32_ref = embs.get("st", embs["fastattn"])
            min_cos = {n: _cos_min(e, fp32_ref) for n, e in embs.items()
                       if n in ("fastattn_bf16", "st_bf16", "ort_int8")}
            big = len(sentences) > 64
            times = interleaved(fns, sentences, args.rounds, 1 if big else args.block,
                                args.settle)
            split = time_split(fns["fastattn"], sentences, repeat=1 if big else 3,
                               settle=args.settle)
            split_bf16 = time_split(fns["fastattn_bf16"], sentences, repeat=1 if big else 3,
                                    settle=args.settle) if "fastattn_bf16" in fns else None
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"[{case}] " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items())
                  + f"  (max |fastattn - st| {diff.get('fastattn', float('nan')):.1e})",
                  file=sys.stderr, flush=True)
            results.append({"case": case, "n": len(sentences), "tokens": int(lengths.sum()),
                            "max_len": int(lengths.max()), "flops": flops(cfg, lengths),
                            "times": times, "split": split, "diff": diff,
                            "int8_min_cos": int8_cos, "min_cos": min_cos,
                            "split_bf16": split_bf16})
        rate1 = sgemm_rate(threads)
        rate = max(rate0, rate1)
        for r in results:
            r["ceiling_s"] = r["flops"] / (rate * 1e9)
    text = markdown(results, threads, rate, notes, extra)
    info = machine_info()
    print(text)
    print(f"\nsgemm rate before / after the cases: {rate0:.0f} / {rate1:.0f} GFLOP/s")
    print("\nMachine:\n" + describe_machine(info))
    if args.json:
        write_json(args.json, {"benchmark": "bench_models", "threads": threads,
                               "model": folder, "results": results, "notes": notes,
                               "sgemm_gflops": [rate0, rate1],
                               "onnx_fused_ops": extra.get("onnx_fused_ops"),
                               "machine": info, "argv": sys.argv[1:]})
    if args.plot and not args.no_plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
