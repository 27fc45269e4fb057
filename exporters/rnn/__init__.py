"""E/I-constrained leaky rate RNNs: model, training and one-step ONNX export (the cognitive
tasks and their scoring are toolchain.tasks). The names below load on first use (PEP 562)."""
from importlib import import_module

_EXPORTS = {"EIRNN": ".model", "TrainResult": ".train", "evaluate": ".train", "train": ".train",
            "export_rnn_onnx": ".export", "run_onnx_trials": "toolchain.rnn",
            **{name: "toolchain.tasks" for name in ("Task", "cddm", "custom_task", "decision",
                                                     "go_nogo", "make_task", "masked_r2",
                                                     "memory_number")}}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    where = _EXPORTS[name]
    module = import_module(where, __name__ if where.startswith(".") else None)
    # bind every name from that module: importing .train set `train` to the submodule, and the
    # function of that name is what the package exports
    globals().update({n: getattr(module, n) for n, w in _EXPORTS.items() if w == where})
    return globals()[name]
