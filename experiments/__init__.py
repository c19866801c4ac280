"""Experiment configs: one module per experiment, each with `get_config()` returning an ml_collections
ConfigDict. The module `mnist1d_cnn` is the experiment `mnist1d-cnn`; modules starting with `_` are shared
bases, not experiments.

An experiment may also be a file of the user's own, named by its path (`jaxarch run path/to/my_experiment.py`),
as flax's and big_vision's `--config` files are: any module with `get_config()`. Models and datasets it registers,
in itself or in the modules it imports, are registered by loading it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

import ml_collections


def _module_name(experiment: str) -> str:
    return experiment.replace("-", "_")


def names() -> list[str]:
    """Every experiment, in alphabetical order."""
    return sorted(info.name.replace("_", "-") for info in pkgutil.iter_modules(__path__)
                  if not info.name.startswith("_"))


def is_path(name: str) -> bool:
    """Whether `name` names an experiment file rather than one of the experiments here: it ends in `.py` or has a
    directory part. No experiment's name does either."""
    return name.endswith(".py") or "/" in name or (sys.platform == "win32" and "\\" in name)


def _load_file(path: Path) -> ModuleType:
    """Imports the experiment file at `path` as the module named after its stem, as `python path` would run it
    with its directory first on `sys.path`, so that the modules beside it (its own models, datasets) import.

    A file already loaded is not executed again: its `@MODELS.register` decorators would register twice.
    """
    if not path.is_file():
        raise ValueError(f"experiments: experiment file {str(path)!r} does not exist, expected the path of a Python "
                         "file with get_config()")
    path = path.resolve()
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
        return loaded
    if loaded is not None:
        # Another module holds the stem's name (a standard-library module, another file of the same name): a
        # private name keeps both.
        name = f"_jaxarch_experiment_{abs(hash(str(path)))}_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # In sys.modules before it runs, as an imported module is: dataclasses (Flax modules) and pickling look it up.
    sys.modules[name] = module
    directory = str(path.parent)
    sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(directory)
    return module


def _module(name: str) -> ModuleType:
    if is_path(name):
        module = _load_file(Path(name))
        if not callable(getattr(module, "get_config", None)):
            raise ValueError(f"experiments: experiment file {name!r} has no get_config(), expected a function "
                             "returning the experiment's ml_collections.ConfigDict")
        return module
    if name not in names():
        import difflib

        close = difflib.get_close_matches(name, names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"experiments: unknown experiment {name!r}{hint}; expected one of {names()}, or the path "
                         "of an experiment file (ending in .py)")
    return importlib.import_module(f"{__name__}.{_module_name(name)}")


def get_config(name: str) -> ml_collections.ConfigDict:
    """The config of experiment `name` (one of `names()`) or of the experiment file at the path `name`.

    `config.name` is set to the experiment's name, or to the file's stem (`runs/<stem>` is its default run
    directory): the saved config.json records which experiment it ran.
    """
    config = _module(name).get_config()
    config.name = Path(name).stem if is_path(name) else name
    return config


def summary(name: str) -> str:
    """The first line of the experiment module's docstring."""
    doc = _module(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
