"""The one place Lava is imported from, and its one Python ≥ 3.11 shim.

lava-nc 0.10.0 declares Python < 3.11. On 3.11 exactly one module fails to import:
`lava.magma.compiler.var_model` gives dataclass fields an instance of another (unhashable)
dataclass as default, which 3.11 rejects ("mutable default ... is not allowed"). While that one
module is imported, `dataclasses._get_field` turns such a default into a `default_factory`
returning the same object, which is what 3.10 did with it. Nothing else of Lava is patched; every
other module imports and runs unchanged (docs/lava.md).

Call `load_lava()` before importing anything from `lava` so `import sim.lava` stays cheap (no
Lava, no multiprocessing start-method change) until a Lava run is actually requested.

Importing Lava calls `multiprocessing.set_start_method('fork')` without `force`, which raises
"context has already been set" if anything used a multiprocessing context first (tqdm's write
lock does). If that context is already fork, `load_lava` forgets it so Lava sets the same method
again; any other start method is reported as a SimulationError (Lava only works with fork).
"""
from __future__ import annotations

import dataclasses
import importlib
import multiprocessing
import sys
import threading

from sim.errors import SimulationError

_LOCK = threading.Lock()
_PATCHED_MODULE = "lava.magma.compiler.var_model"


def _unhashable_defaults_as_factories(get_field):
    """Wrap `dataclasses._get_field` so an unhashable default becomes a default_factory."""
    def patched(cls, a_name, a_type, *args, **kwargs):
        default = cls.__dict__.get(a_name, dataclasses.MISSING)
        if (default is not dataclasses.MISSING and not isinstance(default, dataclasses.Field)
                and type(default).__hash__ is None):
            setattr(cls, a_name, dataclasses.field(default_factory=lambda d=default: d))
        return get_field(cls, a_name, a_type, *args, **kwargs)
    return patched


def load_lava():
    """Import Lava (once), applying the 3.11 shim to its var_model module; return `lava`."""
    with _LOCK:
        if "lava.magma.runtime.message_infrastructure.multiprocessing" not in sys.modules:
            _allow_fork_start_method()
        if _PATCHED_MODULE not in sys.modules and sys.version_info >= (3, 11):
            original = dataclasses._get_field
            dataclasses._get_field = _unhashable_defaults_as_factories(original)
            try:
                importlib.import_module(_PATCHED_MODULE)
            finally:
                dataclasses._get_field = original
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
