"""The one Python ≥ 3.11 shim Lava needs, installed when `sim.lava` is imported, and `load_lava`.

lava-nc 0.10.0 declares Python < 3.11. On 3.11 exactly one module fails to import:
`lava.magma.compiler.var_model` gives dataclass fields an instance of another (unhashable)
dataclass as default, which 3.11 rejects ("mutable default ... is not allowed"). While that one
module executes, `dataclasses._get_field` turns such a default into a `default_factory`
returning the same object, which is what 3.10 did with it. Nothing else of Lava is patched; every
other module imports and runs unchanged (docs/lava.md).

`import sim.lava` installs a meta-path finder (`install()`) that applies the shim when — and only
when — Python imports that module, however it is reached: `from lava.proc.dense.process import
Dense` works in a program that imported `sim.lava` first, with no other call. Installing the
finder imports no Lava and leaves the multiprocessing start method alone.

Importing Lava's multiprocessing module calls `multiprocessing.set_start_method('fork')` without
`force`, which raises "context has already been set" if anything used a multiprocessing context
first (tqdm's write lock does). The finder sees that import coming: if the context is already
fork, it forgets it so Lava sets the same method again; any other start method is reported as a
SimulationError (Lava only works with fork). `load_lava()` imports Lava through the same finder.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.abc
import importlib.machinery
import multiprocessing
import sys
import threading

from sim.errors import SimulationError

_LOCK = threading.RLock()
_PATCHED_MODULE = "lava.magma.compiler.var_model"
_FORK_MODULE = "lava.magma.runtime.message_infrastructure.multiprocessing"


def _unhashable_defaults_as_factories(get_field):
    """Wrap `dataclasses._get_field` so an unhashable default becomes a default_factory."""
    def patched(cls, a_name, a_type, *args, **kwargs):
        default = cls.__dict__.get(a_name, dataclasses.MISSING)
        if (default is not dataclasses.MISSING and not isinstance(default, dataclasses.Field)
                and type(default).__hash__ is None):
            setattr(cls, a_name, dataclasses.field(default_factory=lambda d=default: d))
        return get_field(cls, a_name, a_type, *args, **kwargs)
    return patched


class _ShimLoader(importlib.abc.Loader):
    """Executes var_model with the dataclasses shim in place, and nothing else."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with _LOCK:
            original = dataclasses._get_field
            dataclasses._get_field = _unhashable_defaults_as_factories(original)
            try:
                self.loader.exec_module(module)
            finally:
                dataclasses._get_field = original

    def __getattr__(self, name):     # get_code, get_source, … of the wrapped loader
        return getattr(self.loader, name)


class _ShimFinder(importlib.abc.MetaPathFinder):
    """Sees Lava's two sensitive modules being imported; finds nothing itself otherwise."""

    def find_spec(self, fullname, path, target=None):
        if fullname == _FORK_MODULE and fullname not in sys.modules:
            _allow_fork_start_method()
            return None
        if fullname != _PATCHED_MODULE or sys.version_info < (3, 11):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ShimLoader(spec.loader)
        return spec


_FINDER = _ShimFinder()


def install() -> None:
    """Put the shim's finder first on sys.meta_path (once); imports nothing of Lava."""
    with _LOCK:
        if not any(isinstance(f, _ShimFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _FINDER)


def load_lava():
    """Import Lava (once) through the shim; return `lava`."""
    install()
    with _LOCK:
        importlib.import_module(_PATCHED_MODULE)
        return importlib.import_module("lava")


def _allow_fork_start_method() -> None:
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None:
        return
    if method != "fork":
        raise SimulationError(f"Lava needs the 'fork' multiprocessing start method, but this "
                              f"process already uses {method!r}; run Lava in a fresh process")
    # the default context remembers that it was chosen; forgetting it lets Lava choose fork again
    multiprocessing.context._default_context._actual_context = None


install()
