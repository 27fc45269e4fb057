"""`compile_onnx`: import → calibrate → quantize → artifact (+ agreement with the float model).
A recurrent cell model goes to `toolchain.rnn.compile.compile_rnn`."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

import sim.cpu
from sim.artifact import Artifact
from toolchain import calibrate as cal
from toolchain import scale_search as search
from toolchain.compiled import Compiled, agreement, layer_rows_json, place, weight_warnings
from toolchain.errors import ModelError, QuantizationError
from toolchain.onnx_import import import_onnx
from toolchain.onnx_import.loader import read_model
from toolchain.quantize import FIRE_MODES, QuantOptions, Quantizer
from toolchain.rnn import is_cell_graph, is_onnx_rnn, is_rnn_cell, is_sequence_graph
from toolchain.rnn.compile import compile_rnn

DEFAULT_LEVELS = 15
DEFAULT_INTERNAL_LEVELS = QuantOptions.internal_levels
DEFAULT_PERCENTILE = 99.99


def compile_onnx(path: str | os.PathLike, calib: np.ndarray | None = None,
                 levels: int | None = None, percentile: float = DEFAULT_PERCENTILE,
                 per_channel: bool | None = None, timesteps: int = 1, input_bits: int = 8,
                 target: str = "loihi2", fire: str = "uniform", scale: float = 1.0,
                 scale_search: bool = False, scale_grid=None,
                 scale_tolerance: float | None = None,
                 scale_error_factor: float | None = None,
                 internal_levels: int = DEFAULT_INTERNAL_LEVELS,
                 dale: bool | None = None, state: str | None = None,
                 progress=None) -> Compiled:
    """`fire`: fire function of ReLU/Clip neurons and of the neurons requantizing currents,
    "uniform", "adaptive" or "quantile" (quantize.fit_levels);
    `scale`: λ, the factor on every ReLU/Clip range; `scale_search`: choose λ on the calibration
    data from `scale_grid` by the rule in toolchain.scale_search (overrides `scale`);
    `per_channel`: one activation scale per channel (None: True for feed-forward networks; for
    recurrent cells the better of both on the calibration trials, see compile_rnn);
    `internal_levels`: the levels of neurons that are no activation of the model (requantized
    currents, the operands of products, exp/reciprocal/square-root tables). Recurrent models only:
    `dale` verifies Dale's law on the integer recurrent weights (None: as the metadata says);
    `state` names the state input of a one-step cell graph (default: the input that an output
    of the same shape feeds back). `progress(stage)` is called as each stage starts: "import",
    "calibrate", "quantize" ("scale search λ = … (i of n)" per grid point), "map", "agreement"."""
    say = progress or (lambda stage: None)
    if fire not in FIRE_MODES:
        raise QuantizationError(f"fire function {fire!r}: choose one of {', '.join(FIRE_MODES)}")
    if not (isinstance(internal_levels, int) and 1 <= internal_levels <= 2 ** 15):
        raise QuantizationError(f"internal levels {internal_levels!r}: must be an integer from "
                                "1 to 32768")
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
    say("import")
    read = read_model(path)  # parsed and checked once, for both paths
    if is_rnn_cell(read[0]) or is_onnx_rnn(read[0]) or is_cell_graph(read[0]) or \
            is_sequence_graph(read[0]) or state:
        if fire != "uniform" or scale != 1.0 or scale_search:
            raise QuantizationError(f"{path}: a recurrent model is compiled with its own neurons; "
                                    "--fire, --scale and --scale-search apply to feed-forward "
                                    "models")
        return compile_rnn(path, calib, levels, percentile, target, read, per_channel, dale,
                           state, internal_levels)
    if dale is not None:
        raise QuantizationError(f"{path}: Dale's law (--dale) applies to recurrent models; this "
                                "one is feed-forward")
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
    say("calibrate")
    outputs = {imported.output_name: []}
    try:
        stats = cal.calibrate(imported.source, data, names, percentile, keep_samples=relus,
                              outputs=outputs,
                              sample_elements=sum(int(np.prod(fg[n]["shape"])) for n in names))
    except ModelError as exc:   # onnxruntime's refusals and non-finite activations
        raise ModelError(f"{path}: {exc}") from None
    for n in names:   # tokens × features tensors: their first axis is not a channel axis
        if fg[n]["params"].get("per_tensor"):
            stats[n] = cal.per_tensor(stats[n])
    trained = "sfn.levels" in imported.metadata
    step = None if calib is None else cal.grid_step(data, 2 ** (input_bits - 1) - 1
                                                    if data.min() < 0 else 2 ** input_bits - 1)
    if step:
        notes.append(f"calibration inputs lie on a grid of step {step:.6g}: input encoding is "
                     "lossless for such inputs")
    opts = QuantOptions(levels=levels, percentile=percentile, per_channel=per_channel,
                        input_bits=input_bits, trust_clip=trained, input_step=step, fire=fire,
                        scale=float(scale), timesteps=timesteps,
                        internal_levels=internal_levels)
    found = None
    if scale_search:
        found = search.search(fg, stats, opts, imported.softmax, imported.source,
                              imported.output_name, data, str(path), timesteps, grid,
                              scale_tolerance, scale_error_factor, progress=say)
        opts.scale = found["lambda"]
        notes.append(f"scale search: λ = {found['lambda']:g} of {len(grid)} grid points on "
                     f"{found['samples']} calibration samples (tolerance "
                     f"{found['tolerance']:g} top-1, error factor {found['error_factor']:g})")
    say("quantize")
    qz = Quantizer(fg, stats, opts, str(path))
    nodes, inp, out = qz.run(imported.softmax)
    if qz.wanted:
        # adaptive requantizers fit their levels to samples of the currents they carry: the
        # calibration data again for those tensors, then the quantization again
        wanted = sorted(qz.wanted)
        try:
            extra = cal.calibrate(imported.source, data, wanted, percentile,
                                  keep_samples=set(wanted),
                                  sample_elements=sum(int(np.prod(fg[n]["shape"]))
                                                      for n in wanted))
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from None
        for n in wanted:
            stats[n] = dataclasses.replace(stats[n], sample=extra[n].sample)
        qz = Quantizer(fg, stats, opts, str(path), fits=qz.fits)
        nodes, inp, out = qz.run(imported.softmax)
    notes += weight_warnings(qz.layers)
    meta = {"source": {"file": Path(path).name, "sha256": imported.sha256,
                       "opset": imported.opset},
            "levels": levels, "internal_levels": internal_levels, "timesteps": timesteps,
            "calibration": calibration, "notes": notes, "layers": layer_rows_json(qz.layers),
            "fire": fire, "scale": {"lambda": opts.scale, "search": found}}
    if qz.adaptive:
        meta["adaptive"] = qz.adaptive
    art = Artifact(nodes, inp, out, meta, qz.record)
    art.validate()
    say("map")
    place(art, target)
    say("agreement")
    float_out = np.concatenate(outputs[imported.output_name])
    snn = sim.cpu.run(art, data, timesteps=timesteps, count=False)
    result = Compiled(art, imported, qz.layers, notes)
    result.agreement = agreement(float_out, snn.output)
    art.meta["agreement"] = result.agreement
    return result
