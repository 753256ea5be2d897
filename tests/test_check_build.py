"""Importing fastattn from a tree whose kernels are not built fails with an
ImportError that says so, names the folder and says what to do."""
import os
import shutil
import subprocess
import sys

import fastattn


def _pure_python_copy(dest):
    """fastattn's .py files (no compiled modules) under ``dest/fastattn``."""
    src = os.path.dirname(fastattn.__file__)
    pkg = os.path.join(dest, "fastattn")
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns(
        "*.so", "*.pyd", "*.dylib", "__pycache__", "*.c"))
    left = [f for _, _, fs in os.walk(pkg) for f in fs if f.startswith("_kernels_")
            and not f.endswith((".pyx", ".pxi"))]
    assert left == [], left
    return pkg


def _import_in(cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", "import fastattn"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_unbuilt_source_tree_says_what_to_do(tmp_path):
    pkg = _pure_python_copy(tmp_path)
    (tmp_path / "setup.py").write_text("# a source checkout\n")
    r = _import_in(tmp_path)
    assert r.returncode != 0
    err = r.stderr
    last = err.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastattn's compiled kernels are not built in "), last
    assert pkg in last                                   # names the folder
    assert "source tree" in last and "from another folder" in last
    assert "pip install -e ." in last and "build_ext --inplace" in last
    # chained to the original failure, like scikit-learn's __check_build
    assert "The above exception was the direct cause" in err
    assert "fastattn._kernels_baseline" in err


def test_incomplete_install_says_reinstall(tmp_path):
    pkg = _pure_python_copy(tmp_path)                    # no setup.py beside it
    r = _import_in(tmp_path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastattn's compiled kernels are missing from "), last
    assert pkg in last and "reinstall" in last
    assert "The above exception was the direct cause" in r.stderr


def test_built_package_passes_the_check():
    from fastattn import _check_build
    assert _check_build._built()
    _check_build.check()                                 # no exception


def test_runtime_does_not_import_scipy():
    """SciPy is a test dependency only (the `test` extra): importing fastattn
    and running attention and a GELU layer must not need it."""
    code = (
        "import sys, numpy as np, fastattn\n"
        "from fastattn import nn\n"
        "x = np.ones((1, 70, 16), np.float32)\n"
        "fastattn.scaled_dot_product_attention(x, x, x, is_causal=True)\n"
        "nn.TransformerEncoderLayer(16, 2, 32, activation='gelu', batch_first=True, rng=0)(x)\n"
        "fastattn.softmax(x)\n"
        "assert not any(m == 'scipy' or m.startswith('scipy.') for m in sys.modules), 'scipy imported'\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastattn.__file__))]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=False, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert r.returncode == 0, r.stderr
