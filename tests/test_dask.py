"""fastattn.dask: corpus embedding on a Dask cluster equals the single-process
encoder bit for bit, whatever the partitioning, including empty partitions
and a worker that dies mid-job."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

dask = pytest.importorskip("dask", reason="dask is an optional extra (fastattn[dask])")
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("distributed", reason="distributed is part of fastattn[dask]")

from fastattn.models.sentence import SentenceEncoder, default_model_folder  # noqa: E402
import fastattn.dask as fdask  # noqa: E402

try:
    MODEL = default_model_folder()
except (ImportError, FileNotFoundError, ValueError) as e:  # pragma: no cover
    pytest.skip(f"the packaged model is not installed ({e})", allow_module_level=True)


WORDS = ("the cat sat on a mat while dogs ran across green fields under "
         "bright skies, and nobody knew why the old clock kept ticking").split()


def _corpus(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(1, 40))
        out.append(" ".join(rng.choice(WORDS, size=k)) + f" #{i}")
    out[3] = ""            # empty and whitespace-only strings take part too
    out[7] = "   "
    return out


@pytest.fixture(scope="module")
def corpus():
    return _corpus(150)


@pytest.fixture(scope="module")
def serial(corpus):
    return SentenceEncoder(MODEL).encode(corpus, batch_size=32)


def test_import_fastattn_does_not_import_dask():
    code = ("import sys, fastattn, fastattn.models; "
            "bad = [m for m in ('dask', 'distributed') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("nparts", [1, 4, 13])
def test_synchronous_equals_serial_any_partitioning(corpus, serial, nparts):
    bag = db.from_sequence(corpus, npartitions=nparts)
    arr = fdask.encode(bag, MODEL, batch_size=16)
    assert arr.dtype == np.float32 and arr.shape[1] == serial.shape[1]
    got = arr.compute(scheduler="synchronous")
    assert got.shape == serial.shape
    assert np.array_equal(got, serial)


def test_empty_partition_and_known_lengths(corpus, serial):
    # partitions of sizes 40, 0, 110 (an empty one in the middle)
    parts = [corpus[:40], [], corpus[40:]]
    bag = db.from_delayed([dask.delayed(lambda x: x)(p) for p in parts])
    arr = fdask.encode(bag, MODEL, lengths=True)
    assert arr.chunks[0] == (40, 0, 110)
    assert arr.shape == serial.shape
    assert np.array_equal(arr.compute(scheduler="synchronous"), serial)
    arr2 = fdask.encode(bag, MODEL, lengths=[40, 0, 110])
    assert arr2.chunks[0] == (40, 0, 110)
    with pytest.raises(ValueError, match="lengths has 2 entries for 3 partitions"):
        fdask.encode(bag, MODEL, lengths=[40, 110])


def test_dataframe_column(corpus, serial):
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    df = dd.from_pandas(pd.DataFrame({"text": corpus, "id": range(len(corpus))}),
                        npartitions=5)
    got = fdask.encode(df["text"], MODEL).compute(scheduler="synchronous")
    assert np.array_equal(got, serial)
    with pytest.raises(TypeError, match="pass one string column"):
        fdask.encode(df, MODEL)


def test_bad_arguments(corpus):
    bag = db.from_sequence(corpus[:5], npartitions=1)
    with pytest.raises(TypeError, match="dask.bag.Bag of strings"):
        fdask.encode(corpus, MODEL)
    with pytest.raises(TypeError, match="model must be a folder path"):
        fdask.encode(bag, 3)
    with pytest.raises(ValueError, match="does not exist"):
        fdask.encode(bag, "/nonexistent/folder")
    with pytest.raises(ValueError, match="batch_size"):
        fdask.encode(bag, MODEL, batch_size=0)
    with pytest.raises(TypeError, match="show_progress_bar"):
        fdask.encode(bag, MODEL, show_progress_bar=True)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fdask.encode(bag, MODEL, normalise=True)


def test_graph_carries_no_weights(corpus):
    bag = db.from_sequence(corpus, npartitions=3)
    arr = fdask.encode(bag, MODEL)
    size = len(pickle.dumps(dict(arr.__dask_graph__())))
    # the corpus itself plus small specs; the model's 90 MB never enter it
    assert size < 200_000, size


def test_encoder_pickles_small_and_reloads(corpus, serial):
    enc = SentenceEncoder(MODEL)
    blob = pickle.dumps(enc)
    assert len(blob) < 4096, len(blob)
    enc2 = pickle.loads(blob)
    assert np.array_equal(enc2.encode(corpus[:20]), serial[:20])


def test_worker_threads_split_cpus_between_processes():
    class FakeClient:
        def __init__(self, facts):
            self.facts = facts

        def run(self, fn):
            return self.facts

    c = FakeClient({"a": ("h1", 8, 1), "b": ("h1", 8, 1), "c": ("h2", 4, 1),
                    "d": ("h3", 2, 2), "e": ("h3", 2, 1), "f": ("h4", 1, 1)})
    assert fdask.worker_threads(c) == {"h1": 4, "h2": 4, "h3": 1, "h4": 1}


_KILL_ONCE = """
import os
def maybe_die(part, marker):
    part = list(part)
    if part and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(13)
    return part
"""


def test_local_cluster_two_workers_restart_mid_job(corpus, serial, tmp_path):
    from distributed import Client, LocalCluster
    sys.path.insert(0, str(tmp_path))
    (tmp_path / "fa_kill_once.py").write_text(_KILL_ONCE)
    import fa_kill_once
    marker = str(tmp_path / "died")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path)] + sys.path)}
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None, env=env,
                          silence_logs=40) as cluster, Client(cluster) as client:
            by_host = fdask.worker_threads(client)
            assert all(n >= 1 for n in by_host.values())
            bag = db.from_sequence(corpus, npartitions=6)
            arr = fdask.encode(bag, MODEL, batch_size=16)
            got = arr.compute()
            assert np.array_equal(got, serial)
            # a worker process dies inside one task; the scheduler retries it
            bag2 = bag.map_partitions(fa_kill_once.maybe_die, marker)
            got2 = fdask.encode(bag2, MODEL, batch_size=16).compute()
            assert os.path.exists(marker)
            assert np.array_equal(got2, serial)
    finally:
        sys.path.remove(str(tmp_path))
