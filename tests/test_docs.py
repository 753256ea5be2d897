"""Every fenced ``python`` block of README.md and docs/*.md runs as written.

The rule (stated in the README): the blocks of one file run in order in one
namespace, each seeing the names the earlier blocks defined, in a temporary
folder (so files an example writes do not land in the checkout).  A block
whose first lines carry ``# requires: mod1, mod2`` is skipped, with that
reason, when one of those modules cannot be imported; a block that raises
fails its test.  One test per block, named ``file:line``.
"""
import importlib.util
import os
import re
import traceback

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_REQUIRES = re.compile(r"^#\s*requires:\s*(.+)$", re.M)


def doc_files():
    files = [os.path.join(ROOT, "README.md")]
    docs = os.path.join(ROOT, "docs")
    if os.path.isdir(docs):
        files += sorted(os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md"))
    return [f for f in files if os.path.exists(f)]


def python_blocks(path):
    """[(first line number of the code, code)] of the file's python blocks."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def requirements(code):
    """Module names listed by ``# requires:`` comments at the top of a block."""
    head = []
    for line in code.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        head.append(line)
    mods = []
    for m in _REQUIRES.finditer("\n".join(head)):
        mods += [w.strip() for w in m.group(1).split(",") if w.strip()]
    return mods


def _missing(mods):
    return [m for m in mods if importlib.util.find_spec(m) is None]


class _FileRun:
    """Runs one file's blocks in order, in one namespace and temporary folder."""

    def __init__(self, path, workdir):
        self.path = path
        self.blocks = python_blocks(path)
        self.ns = {"__name__": "__docs__"}
        self.workdir = str(workdir)
        self.outcomes = []           # per block: None (ran), ("skip", why), ("fail", text)

    def run_through(self, i):
        while len(self.outcomes) <= i:
            line, code = self.blocks[len(self.outcomes)]
            self.outcomes.append(self._run(line, code))
        return self.outcomes[i]

    def _run(self, line, code):
        missing = _missing(requirements(code))
        if missing:
            return ("skip", f"{os.path.relpath(self.path, ROOT)}:{line} requires "
                            f"{', '.join(missing)}, not installed")
        name = f"{os.path.relpath(self.path, ROOT)}:{line}"
        compiled = compile(code, name, "exec")
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            exec(compiled, self.ns)
        except BaseException:  # noqa: BLE001 - reported as the test's failure
            return ("fail", traceback.format_exc())
        finally:
            os.chdir(cwd)
        return None


_RUNS = {}
_CASES = [(f, i, line) for f in doc_files() for i, (line, _) in enumerate(python_blocks(f))]


@pytest.mark.parametrize("path, index", [(f, i) for f, i, _ in _CASES],
                         ids=[f"{os.path.relpath(f, ROOT)}:{line}" for f, _, line in _CASES])
def test_doc_block_runs(path, index, monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    run = _RUNS.get(path)
    if run is None:
        run = _RUNS[path] = _FileRun(path, tmp_path_factory.mktemp("docs"))
    outcome = run.run_through(index)
    if outcome is None:
        return
    kind, text = outcome
    if kind == "skip":
        pytest.skip(text)
    pytest.fail(f"documentation example failed:\n{text}", pytrace=False)


def test_readme_examples_are_found():
    """The extraction itself works: the README has its examples, and the
    requirement marker is read."""
    blocks = python_blocks(os.path.join(ROOT, "README.md"))
    assert len(blocks) >= 3
    assert any("scaled_dot_product_attention" in code for _, code in blocks)
    assert requirements("# requires: torch, transformers\nimport torch\n# requires: x\n") == [
        "torch", "transformers"]
    assert requirements("import numpy\n") == []
    assert os.path.join(ROOT, "docs", "architecture.md") in doc_files()


def test_a_failing_block_fails(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("x\n```python\na = 1\n```\n\n```python\nassert a == 2\n```\n"
                   "```python\n# requires: no_such_module_here\nraise SystemExit\n```\n")
    run = _FileRun(str(doc), tmp_path)
    assert run.run_through(0) is None
    kind, text = run.run_through(1)
    assert kind == "fail" and "AssertionError" in text
    kind, why = run.run_through(2)
    assert kind == "skip" and "no_such_module_here" in why


def _repo_text_files():
    skip_dirs = {".git", "build", "__pycache__", "results", ".hypothesis"}
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip_dirs and not d.startswith(".venv")
                   and not d.endswith(".egg-info")]
        for f in files:
            if f.endswith((".md", ".py", ".pyx", ".pxi", ".pxd", ".h", ".c", ".sh", ".toml")):
                if f.endswith(".c") and not top.startswith(os.path.join(ROOT, "fastattn", "src")):
                    continue                      # Cython's generated C
                yield os.path.join(top, f)


def test_docs_and_comments_point_only_inside_the_repository():
    """Users have only the repository: no pointers to design notes outside it."""
    if not os.path.exists(os.path.join(ROOT, "setup.py")):
        pytest.skip("not run from a source checkout")
    bad = []
    pats = ("../shared", "/work/shared", "DESIGN.md", "STYLE.md", "MODELS.md")
    for path in _repo_text_files():
        if os.path.abspath(path) == os.path.abspath(__file__):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if any(p in line for p in pats):
                    bad.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_exist(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not os.path.exists(os.path.join(os.path.dirname(path), target)):
            missing.append(target)
    assert not missing, missing
