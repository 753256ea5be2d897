"""Fail early, and helpfully, when fastattn's compiled kernels are missing.

The usual cause is running Python at the root of a source checkout: ``import
fastattn`` then finds the checkout's ``fastattn/`` folder (the current folder
comes first on ``sys.path``) instead of the installed package, and that
folder has no compiled kernels unless they were built in place.  Without this
check the user would see a bare "no module named fastattn._kernels_baseline".
"""
import importlib
import importlib.machinery
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _built():
    """Whether a kernel build for this interpreter sits in the package."""
    for name in os.listdir(_HERE):
        if name.startswith("_kernels_") and name.endswith(
                tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            return True
    return False


def check():
    """Raise ImportError saying what to do when no kernel build is present."""
    if _built():
        return
    try:  # the baseline build is always made; its error is the real cause
        importlib.import_module("fastattn._kernels_baseline")
        return
    except ImportError as e:
        err = e
    root = os.path.dirname(_HERE)
    if os.path.exists(os.path.join(root, "setup.py")):
        msg = (f"fastattn's compiled kernels are not built in {_HERE}. "
               f"That folder is fastattn's source tree, imported instead of an "
               f"installed fastattn because {root} is the current folder or is "
               f"on sys.path. To use the installed package (`pip install .`), "
               f"run Python from another folder (or use the `fastattn` "
               f"command). To develop in this tree, build the kernels in place: "
               f"`pip install -e .` or `python setup.py build_ext --inplace`.")
    else:
        msg = (f"fastattn's compiled kernels are missing from {_HERE} (no "
               f"_kernels_* extension module for this Python). The "
               f"installation is incomplete or was built for another Python: "
               f"reinstall fastattn with `pip install --force-reinstall "
               f"fastattn` (or `pip install .` from a source tree).")
    raise ImportError(msg, name="fastattn") from err
