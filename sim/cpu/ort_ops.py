"""sim.cpu's onnxruntime pieces: a session as sim.cpu runs one (`session_run`, for the graph
engine's model and the product below), and the integer matrix product of the program's dense
layers of 8-bit payloads (0…255, pixels) and 8-bit weights, exact, where torch has no fast
exact kernel (`WideDense`).

oneDNN's u8·s8 kernels (torch_ops' int8 path) sum pairs of products in saturating int16 on CPUs
without VNNI, exact only while max x · max |w| ≤ 2¹⁴ − 1: an 8-bit input times full 8-bit weights
is outside that class and would run in float32. onnxruntime's MatMulInteger with *unsigned*
weights takes MLAS's u8·u8 kernel, which widens both operands to 16 bits and sums pairs into
int32 (no saturating step): the weights are stored as w + 128 with zero point 128, and MLAS
subtracts 128·Σx per row in int32. Exact while every partial sum fits int32:
K · 255 · 255 < 2³¹ (K the fan-in), which `WideDense` requires. A probe with the extreme operands
(`usable`) checks that once per process; any failure or exception turns the path off and the
float32 kernel runs instead.
"""
from __future__ import annotations

import threading

import numpy as np

# the fan-in up to which K · 255 · 255 (the largest partial sum of u8·u8 products, zero point
# included) stays below 2³¹
MAX_FAN_IN = (2 ** 31 - 1) // (255 * 255)

_STATE: dict[str, bool] = {}


def _model(weight_u8: np.ndarray) -> bytes:
    """MatMulInteger(x uint8 (N, K), W + 128 uint8 (K, F), 0, 128) → int32 (N, F)."""
    from onnx import TensorProto, helper, numpy_helper
    k, f = weight_u8.shape
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w", "x_zero", "w_zero"], ["y"])],
        "sfn_cpu_wide_dense",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, f])],
        [numpy_helper.from_array(weight_u8, "w"),
         numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
         numpy_helper.from_array(np.array(128, np.uint8), "w_zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                             producer_name="sfn-toolchain sim.cpu").SerializeToString()


class Sessions:
    """One model's onnxruntime sessions, one per thread count, each made on first use
    (`session_run`); `for_threads(n)` returns its run(names, feeds, options)."""

    def __init__(self, model: bytes, disabled_optimizers=()):
        self.model, self.disabled = model, tuple(disabled_optimizers)
        self._runs: dict[int, object] = {}
        self._lock = threading.Lock()

    def for_threads(self, threads: int):
        run = self._runs.get(threads)
        if run is None:
            with self._lock:
                if threads not in self._runs:
                    self._runs[threads] = session_run(self.model, threads, self.disabled)
                run = self._runs[threads]
        return run


class WideDense:
    """x @ Wᵀ for uint8 x (N, K) and int8 mantissas W (F, K), as int32 (N, F), by onnxruntime
    (module docstring)."""

    def __init__(self, mantissas: np.ndarray):
        m = np.asarray(mantissas, np.int16)
        if m.ndim != 2 or m.shape[1] > MAX_FAN_IN or m.min(initial=0) < -128 or \
                m.max(initial=0) > 127:
            raise ValueError("WideDense takes int8 weights (F, K) with K ≤ MAX_FAN_IN")
        self.sessions = Sessions(_model(np.ascontiguousarray((m.T + 128).astype(np.uint8))))

    def __call__(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        run = self.sessions.for_threads(threads)
        return run(["y"], {"x": np.ascontiguousarray(x, np.uint8)}, None)[0]


def session_run(model: bytes, threads: int, disabled_optimizers=()):
    """run(names, feeds, options) of a new onnxruntime CPU session of `model` on `threads`
    intra-op threads (waiting passively between operations when more than one, as sim's
    OpenMP policy does, sim/__init__.py); onnxruntime's own exception when it refuses the
    model. The binding's run is returned where the session has one: InferenceSession.run
    checks the feed's names against the model's at every call (a few µs at one sample), which
    sim.cpu's fixed feeds do not need."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if threads > 1:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))
    binding = getattr(sess, "_sess", None)
    return binding.run if hasattr(binding, "run") else sess.run


def usable() -> bool:
    """onnxruntime's u8·u8 product is exact on this machine: extreme operands (x = 255 with
    w = 127, w = −128 and alternating signs, at the largest fan-in) and random ones against
    int64, once per process; False when onnxruntime is missing or refuses."""
    if "usable" not in _STATE:
        _STATE["usable"] = _probe()
    return _STATE["usable"]


def _probe() -> bool:
    try:
        rng = np.random.default_rng(0)
        k = MAX_FAN_IN
        w = np.stack([np.full(k, 127), np.full(k, -128), np.resize([127, -128], k),
                      rng.integers(-128, 128, k)]).astype(np.int8)
        x = np.stack([np.full(k, 255), rng.integers(0, 256, k),
                      np.resize([255, 0], k)]).astype(np.uint8)
        got = WideDense(w)(x, 1)
        return got.dtype == np.int32 and np.array_equal(
            got.astype(np.int64), x.astype(np.int64) @ w.astype(np.int64).T)
    except Exception:  # noqa: BLE001 - any failure: the float32 path runs
        return False


def _matmul_model(rank: int, shift: int) -> bytes:
    """round_half_up(A·B / 2^shift) of float32 stacks of rank `rank`: MatMul, then (shift > 0)
    + 2^(shift−1), · 2^−shift and Floor."""
    from onnx import TensorProto, helper, numpy_helper
    lead = [f"n{i}" for i in range(rank - 2)]
    nodes = [helper.make_node("MatMul", ["a", "b"], ["p" if shift else "y"])]
    inits = []
    if shift:
        nodes += [helper.make_node("Add", ["p", "half"], ["q"]),
                  helper.make_node("Mul", ["q", "scale"], ["r"]),
                  helper.make_node("Floor", ["r"], ["y"])]
        inits = [numpy_helper.from_array(np.array(2.0 ** (shift - 1), np.float32), "half"),
                 numpy_helper.from_array(np.array(2.0 ** -shift, np.float32), "scale")]
    graph = helper.make_graph(
        nodes, "sfn_cpu_matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, lead + ["m", "k"]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, lead + ["k", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, lead + ["m", "n"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                             producer_name="sfn-toolchain sim.cpu").SerializeToString()


_MATMULS: dict[tuple, Sessions] = {}


def matmul(a: np.ndarray, b: np.ndarray, shift: int, threads: int = 1) -> np.ndarray:
    """round_half_up(A·B / 2^shift) for stacks a (…, M, K), b (…, K, N) of exact integers
    (the same leading shape), in float32 by onnxruntime's MatMul (MLAS), for products whose
    partial sums plus 2^(shift−1) the caller bounded below 2²⁴: every sum of them is exact in
    any order, fused or not. MLAS takes small stacked matrices faster than torch's bmm (and
    strided ones without torch's copy); `matmul_usable` probes it once."""
    key = (a.ndim, int(shift))
    if key not in _MATMULS:
        _MATMULS[key] = Sessions(_matmul_model(*key))
    run = _MATMULS[key].for_threads(threads)
    return run(["y"], {"a": np.ascontiguousarray(a, np.float32),
                       "b": np.ascontiguousarray(b, np.float32)}, None)[0]


def matmul_usable() -> bool:
    """onnxruntime's float32 MatMul gives the exact integers on this machine: operands at
    the 2²⁴ edge and random ones against int64, once per process."""
    if "matmul" not in _STATE:
        try:
            rng = np.random.default_rng(1)
            k = 64
            a = np.stack([np.full((5, k), 255), rng.integers(-255, 256, (5, k))])
            b = np.stack([np.full((k, 7), 1023), rng.integers(-1023, 1024, (k, 7))])
            want = a @ b
            got = matmul(a, b, 0)
            shifted = matmul(a, b, 5)
            _STATE["matmul"] = bool(np.array_equal(got, want) and
                                    np.array_equal(shifted, (want + 16) >> 5))
        except Exception:  # noqa: BLE001 - any failure: torch's matmul runs
            _STATE["matmul"] = False
    return _STATE["matmul"]
