"""Stage packages that load their names on first use, and can be called.

`clipsearch.search` is the search stage's package and, for the Python API, the
function `search(...)`; likewise `clipsearch.ingest`. Python binds a subpackage to
its parent's attribute of the same name when it is imported, so a function of that
name in `clipsearch/__init__.py` would be replaced by the package as soon as anything
imported the stage. Making the package itself callable keeps both meanings. A type
checker sees only the package, which it will not call: typed code imports the function
from it (`from clipsearch.search import search`), as the README's example does.

Names load lazily because every CLI start imports each stage's commands.py, and so
the stage's package: `clipsearch --help` must not pay for numpy, PIL or qdrant.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def lazy_package(module_name: str, exports: dict[str, str | None], call: str | None = None) -> None:
    """Give package `module_name` the attributes `exports` (name -> submodule that
    defines it; None: the submodule of that name itself), loaded on first access;
    calling the package calls `call`."""
    module = sys.modules[module_name]

    def load(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        where = exports[name]
        if where is None:
            value = importlib.import_module(f"{module_name}.{name}")
        else:
            value = getattr(importlib.import_module(f"{module_name}.{where}"), name)
        setattr(module, name, value)
        return value

    class Stage(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            return load(name)

        def __dir__(self) -> list[str]:
            return sorted(set(super().__dir__()) | set(exports))

        if call is not None:
            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                return load(call)(*args, **kwargs)

    module.__class__ = Stage
