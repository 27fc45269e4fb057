"""`toolchain compile`: an ONNX model → an SFN artifact."""
from __future__ import annotations

import json

import click

from sim.files import write_files
from toolchain.cli.common import (Progress, check_outputs, console, layer_table, load_input_npy,
                                  progress_option, scale_table)


@click.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="The .sfn artifact.")
@click.option("--calib", type=click.Path(), help="Calibration inputs X.npy, (N, *input_shape).")
@click.option("--levels", type=click.IntRange(1, 2 ** 15), help="Spike levels L (default: the "
              "model's sfn.levels metadata, else 15).")
@click.option("--internal-levels", type=click.IntRange(1, 2 ** 15), default=None,
              help="Levels of the neurons that are no activation of the model: requantized "
                   "currents, the operands of products, arithmetic tables (exp, 1/x, √x, x²) "
                   "(default: 63).")
@click.option("--percentile", type=click.FloatRange(50, 100), default=99.99, show_default=True,
              help="Activation range per channel; 100 means max.")
@click.option("--per-layer/--per-channel", "per_layer", default=None, help="One activation "
              "scale per layer, or one per channel (default: per channel for feed-forward "
              "networks; for recurrent cells whichever reproduces the float read-out better on "
              "the calibration trials).")
@click.option("--timesteps", type=click.IntRange(1, 4096), default=None,
              help="Default timesteps stored in the artifact (ONNX: 1; NIR: the graph's "
                   "sfn_timesteps, else 16).")
@click.option("--dt", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="NIR only: the time step that discretizes LIF time constants (a = dt/τ; "
                   "snnTorch writes 1e-4).")
@click.option("--emit-reference", type=click.Path(), help="Also write the integer reference ONNX.")
@click.option("--target", "target_name", default="loihi2", show_default=True,
              help="Target name or .json file (see `toolchain targets`).")
@click.option("--fire", type=click.Choice(["uniform", "adaptive", "quantile"]), default="uniform",
              show_default=True, help="Fire function of ReLU/Clip neurons and of the neurons "
              "that requantize currents (softmax weights, LayerNorm outputs): uniform levels, "
              "adaptive (non-uniform levels fitted to each tensor's calibration distribution), "
              "or quantile (the quantile placement alone). T = 1 only.")
@click.option("--scale", "scale", type=click.FloatRange(0, min_open=True), default=1.0,
              show_default=True, help="λ: every ReLU/Clip range is λ × the calibrated one.")
@click.option("--scale-search", is_flag=True, help="Choose λ on the calibration data: SynOps "
              "against agreement with the float model (overrides --scale).")
@click.option("--scale-tolerance", type=click.FloatRange(0, 1), default=0.005, show_default=True,
              help="Scale search: top-1 agreement kept within this of the best λ.")
@click.option("--scale-error-factor", type=click.FloatRange(1), default=2.0, show_default=True,
              help="Scale search: relative RMS error kept within this factor of the smallest.")
@click.option("--dale", is_flag=True, default=None, help="Recurrent models: verify Dale's law "
              "on the integer recurrent weights (each unit's outgoing weights keep one sign); "
              "default: as the model's sfn.dale metadata says.")
@click.option("--state", help="One-step cell graphs: the name of the state input (default: the "
              "input that an output of the same shape feeds back).")
@click.option("--json", "as_json", is_flag=True, help="Print the per-layer table, placement, "
              "agreement and notes as JSON (numbers as numbers) instead of tables.")
@progress_option
@click.option("--debug", is_flag=True, hidden=True)
def compile(model, out, calib, levels, internal_levels, percentile, per_layer, timesteps, dt,
            emit_reference, target_name, fire, scale, scale_search, scale_tolerance,
            scale_error_factor, dale, state, as_json, show_progress, debug):
    """Compile MODEL.onnx (a trained network) or MODEL.nir (a spiking network written by
    snnTorch, Norse, sinabs; docs/nir.md) into an SFN artifact."""
    say = Progress("compile", show_progress)
    say(f"load {model}")
    from toolchain.compiler import DEFAULT_INTERNAL_LEVELS, compile_onnx   # heavy imports
    from toolchain.nir_io.importer import compile_nir, is_nir
    check_outputs({"-o": out, "--emit-reference": emit_reference},
                  {"model": model, "calibration data": calib})
    x, cast_note = load_input_npy(calib, "calibration", min_rows=1) if calib else (None, None)
    if is_nir(model):
        onnx_only = [flag for flag, given in (
            ("--emit-reference", emit_reference), ("--levels", levels is not None),
            ("--internal-levels", internal_levels is not None),
            ("--per-layer/--per-channel", per_layer is not None), ("--fire", fire != "uniform"),
            ("--scale", scale != 1.0), ("--scale-search", scale_search), ("--dale", dale),
            ("--state", state is not None)) if given]
        if onnx_only:
            raise click.UsageError(f"{', '.join(onnx_only)}: ONNX options; a NIR network keeps "
                                   "its own spiking neurons (docs/nir.md)")
        result = compile_nir(model, calib=x, timesteps=timesteps, dt=dt, target=target_name,
                             progress=say)
    else:
        result = compile_onnx(model, calib=x, levels=levels, percentile=percentile,
                              per_channel=None if per_layer is None else not per_layer,
                              timesteps=timesteps or 1, target=target_name,
                              fire=fire, scale=scale, scale_search=scale_search,
                              scale_tolerance=scale_tolerance,
                              scale_error_factor=scale_error_factor,
                              internal_levels=internal_levels or DEFAULT_INTERNAL_LEVELS,
                              dale=True if dale else None, state=state, progress=say)
    if cast_note:
        result.notes.append(cast_note)
    say("write")
    write_files([(out, result.artifact_bytes())] +
                ([(emit_reference, result.reference_bytes())] if emit_reference else []))
    if as_json:
        placement = result.artifact.meta["placement"]
        click.echo(json.dumps({"artifact": out, "reference": emit_reference,
                               "layers": result.artifact.meta["layers"],
                               "placement": {k: placement[k] for k in
                                             ("cores_used", "chips", "lower_bound")},
                               "agreement": result.agreement, "notes": result.notes,
                               "fire": result.artifact.meta.get("fire", "uniform"),
                               "scale": result.artifact.meta.get("scale")}, indent=1))
        return
    from toolchain.mapping import Placement, placement_table
    console.print(layer_table(result.layers, f"{model} → {out}"))
    console.print(placement_table(Placement.from_json(result.artifact.meta["placement"])))
    found = (result.artifact.meta.get("scale") or {}).get("search")
    if found:
        console.print(scale_table(found))
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    a = result.agreement
    what = "trial steps" if result.artifact.recurrent else "calibration samples"
    line = f"float vs SNN on {a['samples']} {what}: relative RMS error " \
           f"{a['rel_rms_error']:.4f}, max |error| {a['max_abs_error']:.4g}"
    if "top1_agreement" in a:
        line += f", top-1 agreement {100 * a['top1_agreement']:.2f}%"
    console.print(line, highlight=False)
