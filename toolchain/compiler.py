"""`compile_onnx`: import → calibrate → quantize → artifact (+ agreement with the float model)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import sim.cpu
from sim.artifact import Artifact, atomic_write, save
from toolchain import calibrate as cal
from toolchain.errors import ModelError, QuantizationError, ShapeError
from toolchain.onnx_import import ImportedModel, import_onnx
from toolchain.quantize import QuantOptions, Quantizer
from toolchain.reference import emit_reference

DEFAULT_LEVELS = 15
DEFAULT_PERCENTILE = 99.99


@dataclass
class Compiled:
    artifact: Artifact
    imported: ImportedModel
    layers: list[dict]
    notes: list[str] = field(default_factory=list)
    agreement: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        save(self.artifact, path)

    def write_reference(self, path: str | os.PathLike) -> None:
        atomic_write(path, emit_reference(self.artifact).SerializeToString())


def agreement(float_out: np.ndarray, snn_out: np.ndarray) -> dict:
    """Top-1 agreement (for class scores) and error of the SNN readout against the float model."""
    f = float_out.reshape(-1, float_out.shape[-1])
    s = snn_out.reshape(-1, snn_out.shape[-1])
    err = s - f
    out = {"samples": int(len(f)), "max_abs_error": float(np.abs(err).max(initial=0)),
           "rel_rms_error": float(np.sqrt((err ** 2).mean()) / max(np.sqrt((f ** 2).mean()), 1e-12))}
    if f.shape[1] > 1:
        out["top1_agreement"] = float((f.argmax(1) == s.argmax(1)).mean())
    return out


def place(art: Artifact, target: str) -> None:
    """Map the artifact onto the target's cores; the placement becomes part of the artifact.
    A network that cannot fit raises MappingError naming the layer, the limit and the excess."""
    from toolchain.mapping import map_artifact
    from toolchain.target import load_target
    tgt = load_target(target)
    art.meta["target"] = tgt.name
    art.meta["placement"] = map_artifact(art, tgt).to_json()


def compile_rnn(path, calib: np.ndarray | None, levels: int | None, percentile: float,
                target: str = "loihi2", read=None, per_channel: bool | None = None) -> Compiled:
    """Compile an ei_rnn_cell model or a model around one ONNX RNN operator (rnn.read_onnx_rnn);
    calibrate on `calib` trials (N, T, n_in) or on the trials of the task its metadata names.

    Activation scales: `per_channel` True (one per unit) or False (one per layer); None (the
    default) quantizes both ways and keeps the one whose read-out is closer to the float
    network's on the calibration trials (relative RMS error). Neither wins everywhere: a unit's
    scale multiplies its column of W_rec, so per-unit scales spread the columns apart and the
    8-bit weights of quiet units lose precision, while one scale per layer leaves quiet units
    few levels. (CDDM, 100 units: tanh with Dale's law deployed R² 0.895 per layer against 0.814
    per unit, float 0.922; ReLU with Dale's law 0.965 per layer against 0.989 per unit, float
    0.995. The RMS error picks the better of the two in both.)"""
    from toolchain import rnn
    from toolchain.onnx_import.loader import read_model
    model, sha = read or read_model(path)
    cell = (rnn.read_onnx_rnn if rnn.is_onnx_rnn(model) else rnn.read_cell)(model, str(path))
    notes = [cell.describe()]
    if calib is None:
        if not cell.task:
            raise ShapeError(f"{path}: pass --calib trials (N, T, n_inputs); the model names no task")
        from exporters.rnn.tasks import make_task
        calib = make_task(cell.task).inputs
        notes.append(f"calibrated on the {len(calib)} trials of its task {cell.task!r}")
    calib = np.asarray(calib, dtype=np.float32)
    if calib.ndim != 3 or calib.shape[2] != cell.W_inp.shape[1]:
        raise ShapeError(f"calibration trials have shape {calib.shape}, expected (N, T, "
                         f"{cell.W_inp.shape[1]})")
    levels = levels or rnn.DEFAULT_RNN_LEVELS
    fg = rnn.float_graph(cell)
    acts = cell.trials(calib.astype(np.float64))
    stats = cal.stats_from_arrays(acts, percentile)
    # task inputs (coherences k/64, values k/10) lie on a grid: encode them losslessly, as
    # compile_onnx does for feed-forward inputs, with the grid step divided by the largest
    # integer that keeps max|x| within the encoder's range (its bound sets the accumulator units)
    top = 127 if calib.min() < 0 else 255
    step = cal.grid_step(calib, top)
    if step:
        step /= max(1, top // max(1, int(round(float(np.abs(calib).max()) / step))))
        notes.append(f"calibration trials lie on a grid of step {step:.6g}: input encoding is "
                     "lossless for such inputs")
    n_exc = cell.n_exc if cell.dale else 0
    # Cell.trials stacks time-major: rows t·N … (t+1)·N − 1 are step t of every trial
    float_o = acts["o"].reshape(calib.shape[1], len(calib), -1).transpose(1, 0, 2)

    def build(pc: bool):
        qz = Quantizer(fg, stats, QuantOptions(levels=levels, percentile=percentile,
                                               per_channel=pc, input_step=step), str(path))
        nodes, inp, out = qz.run("")
        # Dale's law on the integer W_rec: a violation refuses this way of quantizing
        ei = rnn.check_dale(next(n for n in nodes if n.name == "z_rec").weight, n_exc) \
            if cell.dale else None
        meta = {"source": {"file": Path(path).name, "sha256": sha, "kind": cell.origin},
                "levels": levels, "timesteps": 1,
                "calibration": f"{len(calib)} trials of {calib.shape[1]} steps, percentile "
                               f"{percentile}, per {'channel' if pc else 'layer'}",
                "rnn": {"activation": cell.activation, "alpha": cell.alpha, "dale": cell.dale,
                        "n_exc": n_exc, "n_units": int(cell.W_rec.shape[0]),
                        "task": cell.task, "decay": int(round(cell.alpha * 4096)),
                        "per_channel": pc},
                "layers": _jsonable(qz.layers)}
        art = Artifact(nodes, inp, out, meta, qz.record)
        art.validate()
        return art, qz, agreement(float_o, sim.cpu.run(art, calib, count=False).output), ei

    if per_channel is None:
        built, failed = {}, {}
        for pc in (False, True):
            try:
                built[pc] = build(pc)
            except QuantizationError as exc:   # one way may not fit; the other may
                failed[pc] = exc
        if not built:
            raise failed[False]
        chosen = min(built, key=lambda pc: built[pc][2]["rel_rms_error"])
        way = {False: "layer", True: "unit"}
        errors = ", ".join(f"per {way[pc]} {built[pc][2]['rel_rms_error']:.4f}" for pc in built)
        notes.append(f"activation scales: one per {way[chosen]}, the closer read-out on the "
                     f"calibration trials (relative RMS error: {errors}"
                     f"{'; per unit does not fit' if True in failed else ''}"
                     f"{'; per layer does not fit' if False in failed else ''})")
    else:
        chosen = per_channel
        built = {chosen: build(chosen)}
        notes.append(f"activation scales: one per {'unit' if chosen else 'layer'} (as asked)")
    art, qz, agree, ei = built[chosen]
    if ei is not None:
        notes.append(f"Dale's law holds on the integer weights: {ei[0]} excitatory, {ei[1]} "
                     "inhibitory units")
    art.meta["notes"] = notes
    place(art, target)
    result = Compiled(art, None, qz.layers, notes)
    result.agreement = agree
    art.meta["agreement"] = agree
    return result


def compile_onnx(path: str | os.PathLike, calib: np.ndarray | None = None,
                 levels: int | None = None, percentile: float = DEFAULT_PERCENTILE,
                 per_channel: bool | None = None, timesteps: int = 1, input_bits: int = 8,
                 target: str = "loihi2", fire: str = "uniform", scale: float = 1.0,
                 scale_search: bool = False, scale_grid=None,
                 scale_tolerance: float | None = None,
                 scale_error_factor: float | None = None) -> Compiled:
    """`fire`: ReLU/Clip fire function, "uniform", "adaptive" or "quantile" (quantize.fit_levels);
    `scale`: λ, the factor on every ReLU/Clip range; `scale_search`: choose λ on the calibration
    data from `scale_grid` by the rule in toolchain.scale_search (overrides `scale`);
    `per_channel`: one activation scale per channel (None: True for feed-forward networks; for
    recurrent cells the better of both on the calibration trials, see compile_rnn)."""
    from toolchain import rnn
    from toolchain import scale_search as search
    from toolchain.onnx_import.loader import read_model
    from toolchain.quantize import FIRE_MODES
    if fire not in FIRE_MODES:
        raise QuantizationError(f"fire function {fire!r}: choose one of {', '.join(FIRE_MODES)}")
    if not (np.isfinite(scale) and scale > 0):
        raise QuantizationError(f"scale λ = {scale}: must be a finite number > 0")
    if fire != "uniform" and timesteps != 1:
        raise QuantizationError(f"fire function {fire!r} with {timesteps} timesteps: adaptive "
                                "fire functions are defined for T = 1 only")
    if scale_tolerance is None:
        scale_tolerance = search.DEFAULT_TOLERANCE
    if scale_error_factor is None:
        scale_error_factor = search.DEFAULT_ERROR_FACTOR
    grid = search.check_grid(scale_grid or search.DEFAULT_GRID, scale_tolerance,
                             scale_error_factor)
    read = read_model(path)  # parsed and checked once, for both paths
    if rnn.is_rnn_cell(read[0]) or rnn.is_onnx_rnn(read[0]):
        if fire != "uniform" or scale != 1.0 or scale_search:
            raise QuantizationError(f"{path}: a recurrent model is compiled with its own neurons; "
                                    "--fire, --scale and --scale-search apply to feed-forward "
                                    "models")
        return compile_rnn(path, calib, levels, percentile, target, read, per_channel)
    per_channel = True if per_channel is None else per_channel
    imported = import_onnx(path, read)
    notes = list(imported.notes)
    if levels is None:
        raw = imported.metadata.get("sfn.levels", str(DEFAULT_LEVELS))
        try:
            levels = int(raw)
        except ValueError:
            raise ModelError(f"{path}: metadata sfn.levels={raw!r} is not an integer") from None
        if not 1 <= levels <= 2 ** 15:
            raise ModelError(f"{path}: metadata sfn.levels={levels} is outside 1 to 32768")
        notes.append(f"levels: {levels} ({'from the model metadata sfn.levels' if 'sfn.levels' in imported.metadata else 'default'})")
    fg = imported.graph
    input_shape = fg[fg.input]["shape"]
    if calib is None:
        data = cal.fallback_data(input_shape)
        calibration = f"none given: fallback of {len(data)} samples of N(0, 1); thresholds " \
                      "may be far from the real activation ranges — pass --calib"
        notes.append("calibration " + calibration)
    else:
        data = cal.check_data(np.asarray(calib), input_shape, "calibration data")
        calibration = f"{len(data)} samples, percentile {percentile}, " \
                      f"{'per-channel' if per_channel else 'per-layer'}"
    names = fg.tensors()
    relus = {n for n in names if fg[n]["op"] == "relu"} if fire != "uniform" else set()
    stats = cal.calibrate(imported.source, data, names, percentile, keep_samples=relus)
    trained = "sfn.levels" in imported.metadata
    step = None if calib is None else cal.grid_step(data, 2 ** (input_bits - 1) - 1
                                                    if data.min() < 0 else 2 ** input_bits - 1)
    if step:
        notes.append(f"calibration inputs lie on a grid of step {step:.6g}: input encoding is "
                     "lossless for such inputs")
    opts = QuantOptions(levels=levels, percentile=percentile, per_channel=per_channel,
                        input_bits=input_bits, trust_clip=trained, input_step=step, fire=fire,
                        scale=float(scale))
    found = None
    if scale_search:
        found = search.search(fg, stats, opts, imported.softmax, imported.source,
                              imported.output_name, data, str(path), timesteps, grid,
                              scale_tolerance, scale_error_factor)
        opts.scale = found["lambda"]
        notes.append(f"scale search: λ = {found['lambda']:g} of {len(grid)} grid points on "
                     f"{found['samples']} calibration samples (tolerance "
                     f"{found['tolerance']:g} top-1, error factor {found['error_factor']:g})")
    qz = Quantizer(fg, stats, opts, str(path))
    nodes, inp, out = qz.run(imported.softmax)
    meta = {"source": {"file": Path(path).name, "sha256": imported.sha256,
                       "opset": imported.opset},
            "levels": levels, "timesteps": timesteps,
            "calibration": calibration, "notes": notes, "layers": _jsonable(qz.layers),
            "fire": fire, "scale": {"lambda": opts.scale, "search": found}}
    if qz.adaptive:
        meta["adaptive"] = qz.adaptive
    art = Artifact(nodes, inp, out, meta, qz.record)
    art.validate()
    place(art, target)
    float_out = np.concatenate([o[imported.output_name] for o in
                                cal.run_float(imported.source, data, [imported.output_name])])
    snn = sim.cpu.run(art, data, timesteps=timesteps, count=False)
    result = Compiled(art, imported, qz.layers, notes)
    result.agreement = agreement(float_out, snn.probabilities(imported.softmax))
    art.meta["agreement"] = result.agreement
    return result


def _jsonable(rows: list[dict]) -> list[dict]:
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()} for r in rows]
