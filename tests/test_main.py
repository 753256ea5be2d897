"""``python -m fastattn info | demo``."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastattn
from fastattn.__main__ import main


def run_cli(*args, **env):
    e = dict(os.environ)      # FASTATTN_ISA, if set, applies to both processes
    e["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastattn.__file__))]
        + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e.update(env)
    return subprocess.run([sys.executable, "-m", "fastattn", *args], env=e,
                          capture_output=True, text=True, timeout=300, check=False)


def test_info_subprocess():
    r = run_cli("info", OMP_NUM_THREADS="3")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"fastattn {fastattn.__version__}" in out
    assert re.search(rf"kernel build: {fastattn.isa}\b", out)
    assert re.search(r"openmp: (on|OFF)", out)
    assert ("openmp: on" in out) == bool(fastattn.kernels.OPENMP)
    assert re.search(r"^threads: 3 \(from OMP_NUM_THREADS\)$", out, re.MULTILINE)
    assert re.search(r"BLAS: \S+", out)
    assert "BLAS: unknown" not in out and "BLAS: ?" not in out
    assert r.stderr == ""


def test_info_in_process(capsys):
    with fastattn.threads(2):
        assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "threads: 2 (from fastattn.threads(n) block)" in out
    assert f"tiles: {fastattn.kernels.TILE_ROWS} query rows" in out
    for build in fastattn._dispatch.available_builds():
        assert build in out


def test_demo_small_subprocess():
    r = run_cli("demo", "--seq", "64", "--heads", "2", "--repeat", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "self-check passed" in r.stdout
    assert "FAIL" not in r.stdout
    assert len(re.findall(r"causal=(True|False)", r.stdout)) == 2


@pytest.mark.parametrize("seq", [1, 65])
def test_demo_in_process(capsys, seq):
    assert main(["demo", "--seq", str(seq), "--heads", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "self-check passed" in out
    errs = [float(x) for x in re.findall(r"max\|err\| vs float64 reference (\S+)", out)]
    assert len(errs) == 2 and all(np.isfinite(e) and e <= 2e-5 for e in errs)


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "info" in capsys.readouterr().out


def test_bad_command_exits_nonzero():
    r = run_cli("bogus")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr
    r = run_cli("demo", "--seq", "abc")
    assert r.returncode == 2


def test_console_script_entry_point():
    """`fastattn` (the console script of an installed fastattn) is main()."""
    from importlib import metadata
    try:
        dist = metadata.distribution("fastattn")
    except metadata.PackageNotFoundError:
        pytest.skip("fastattn is not installed (in-place build): no console script")
    eps = [ep for ep in dist.entry_points if ep.group == "console_scripts"]
    assert [(ep.name, ep.value) for ep in eps] == [("fastattn", "fastattn.__main__:main")]
    assert eps[0].load() is main


def test_subcommand_table_is_extensible(monkeypatch, capsys):
    from fastattn import __main__ as cli
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    seen = []

    @cli.subcommand("echo", "test command", [(("word",), {})])
    def _echo(args):
        seen.append(args.word)
        return 3

    assert main(["echo", "hi"]) == 3 and seen == ["hi"]
    assert main(["info"]) == 0
    capsys.readouterr()
