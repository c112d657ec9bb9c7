"""The Kubernetes operator, `shoal.operator` (pyproject.toml maps this folder onto it).

As `shoal.operator` this file does nothing. But the folder shares its name with the standard
library's `operator`, and a Python started in the repo root without PYTHONSAFEPATH has the root on
sys.path before the standard library: `import operator` (asyncio, collections, dataclasses, ...)
then finds this folder and runs this file as `operator`. It loads the standard library's module in
its place, so the repo root is safe to work in. (The folder cannot drop this file to become a mere
namespace portion, which the standard library's module would beat: setuptools' editable install
maps `shoal.operator` only to a folder that has an `__init__.py`.) tests/core/test_repo_root.py holds it.
"""

if __name__ == "operator":
    import os
    import sys
    from importlib.machinery import PathFinder

    _root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    _elsewhere = [p for p in sys.path if os.path.realpath(p or os.curdir) != _root]
    _spec = PathFinder.find_spec("operator", _elsewhere)
    if _spec is None or _spec.loader is None:
        raise ImportError("the standard library's `operator` module is not on sys.path", name="operator")
    _stdlib = type(sys)("operator")
    _stdlib.__spec__, _stdlib.__loader__, _stdlib.__file__, _stdlib.__package__ = (
        _spec, _spec.loader, _spec.origin, ""
    )
    sys.modules["operator"] = _stdlib  # what `import operator` returns once this file has run
    _spec.loader.exec_module(_stdlib)
