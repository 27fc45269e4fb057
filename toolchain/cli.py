"""The `toolchain` command: compile, run, inspect.

Every user-caused failure is a ToolchainError printed as one line `error: …` with exit code 2;
`--debug` prints the traceback instead. Output files are written atomically, so a failed command
leaves no partial file.
"""
from __future__ import annotations

import io
import json
import sys
import traceback
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from toolchain.errors import InputFileError, ToolchainError

console = Console(width=None if sys.stdout.isatty() else 150)
err_console = Console(stderr=True)


def load_npy(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{path}: no such {what} file")
    try:
        array = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputFileError(f"{path}: not a readable .npy array ({str(exc)[:200]})") from None
    if not isinstance(array, np.ndarray):  # np.load opens an .npz archive as an NpzFile
        array.close()
        raise InputFileError(f"{path}: an .npz archive; give one .npy array")
    if array.ndim == 0:
        raise InputFileError(f"{path}: a 0-d array; give (N, *input_shape)")
    return array


def save_npy(path: str, array: np.ndarray) -> None:
    from sim.artifact import atomic_write
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write(path, buf.getvalue())


class _Group(click.Group):
    def invoke(self, ctx):
        debug = "--debug" in sys.argv
        try:
            return super().invoke(ctx)
        except ToolchainError as exc:
            if debug:
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug, not a user error: say so, keep it short
            if debug:
                traceback.print_exc()
            err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc} "
                              "(re-run with --debug for the traceback)", highlight=False,
                              soft_wrap=True)
            sys.exit(3)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(debug):
    """SFN toolchain: ONNX → Scale-and-Fire spiking graphs → Loihi-style integers → simulators."""


def _fmt_range(r):
    return "" if r is None else (f"{r[0]}" if r[0] == r[1] else f"{r[0]}–{r[1]}")


def layer_table(rows: list[dict], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("layer", "op", "shape", "neurons", "synapses", "levels / weights", "threshold",
                "margin (bits)"):
        t.add_column(col, justify="right" if col in ("neurons", "synapses", "margin (bits)")
                     else "left")
    for r in rows:
        t.add_row(r["name"][-40:], r["op"], "×".join(map(str, r["shape"])),
                  f"{r['neurons']:,}" if r["neurons"] else "", f"{r['synapses']:,}" if
                  r["synapses"] else "", r["levels"], _fmt_range(r["threshold"]),
                  "" if r["margin_bits"] is None else f"{r['margin_bits']}")
    return t


def scale_table(found: dict) -> Table:
    """The λ scale search curve (toolchain.scale_search), the chosen row marked."""
    t = Table(title=f"scale search on {found['samples']} calibration samples: {found['rule']} "
                    f"(tolerance {found['tolerance']:g}, error factor {found['error_factor']:g})",
              title_justify="left")
    for col in ("λ", "SynOps / inference", "top-1 agreement", "rel. RMS error", "chosen"):
        t.add_column(col, justify="left" if col == "chosen" else "right")
    for p in found["curve"]:
        if "error" in p:
            t.add_row(f"{p['lambda']:g}", "", "", "", f"not quantizable: {p['error'][:60]}")
            continue
        top1 = f"{100 * p['top1_agreement']:.2f}%" if "top1_agreement" in p else "—"
        t.add_row(f"{p['lambda']:g}", f"{p['synops']:,.0f}", top1, f"{p['rel_rms_error']:.4f}",
                  "◀" if p["chosen"] else "")
    return t


@main.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="The .sfn artifact.")
@click.option("--calib", type=click.Path(), help="Calibration inputs X.npy, (N, *input_shape).")
@click.option("--levels", type=click.IntRange(1, 2 ** 15), help="Spike levels L (default: the "
              "model's sfn.levels metadata, else 15).")
@click.option("--percentile", type=click.FloatRange(50, 100), default=99.99, show_default=True,
              help="Activation range per channel; 100 means max.")
@click.option("--per-layer/--per-channel", "per_layer", default=None, help="One activation "
              "scale per layer, or one per channel (default: per channel for feed-forward "
              "networks; for recurrent cells whichever reproduces the float read-out better on "
              "the calibration trials).")
@click.option("--timesteps", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="Default timesteps stored in the artifact.")
@click.option("--emit-reference", type=click.Path(), help="Also write the integer reference ONNX.")
@click.option("--target", "target_name", default="loihi2", show_default=True,
              help="Target name or .json file (see `toolchain targets`).")
@click.option("--fire", type=click.Choice(["uniform", "adaptive", "quantile"]), default="uniform",
              show_default=True, help="ReLU/Clip fire function: uniform levels, adaptive "
              "(non-uniform levels fitted to the calibration distribution), or quantile (the "
              "quantile placement alone). T = 1 only.")
@click.option("--scale", "scale", type=click.FloatRange(0, min_open=True), default=1.0,
              show_default=True, help="λ: every ReLU/Clip range is λ × the calibrated one.")
@click.option("--scale-search", is_flag=True, help="Choose λ on the calibration data: SynOps "
              "against agreement with the float model (overrides --scale).")
@click.option("--scale-tolerance", type=click.FloatRange(0, 1), default=0.005, show_default=True,
              help="Scale search: top-1 agreement kept within this of the best λ.")
@click.option("--scale-error-factor", type=click.FloatRange(1), default=2.0, show_default=True,
              help="Scale search: relative RMS error kept within this factor of the smallest.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--debug", is_flag=True, hidden=True)
def compile(model, out, calib, levels, percentile, per_layer, timesteps, emit_reference,
            target_name, fire, scale, scale_search, scale_tolerance, scale_error_factor, as_json,
            debug):
    """Compile MODEL.onnx into an SFN artifact."""
    from toolchain.compiler import compile_onnx
    x = load_npy(calib, "calibration") if calib else None
    result = compile_onnx(model, calib=x, levels=levels, percentile=percentile,
                          per_channel=None if per_layer is None else not per_layer,
                          timesteps=timesteps, target=target_name,
                          fire=fire, scale=scale, scale_search=scale_search,
                          scale_tolerance=scale_tolerance, scale_error_factor=scale_error_factor)
    if emit_reference:
        result.write_reference(emit_reference)
    result.save(out)
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


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--input", "inp", required=True, type=click.Path(), help="X.npy, (N, *input_shape) float32.")
@click.option("--output", "out", required=True, type=click.Path(), help="Y.npy to write.")
@click.option("--backend", type=click.Choice(["cpu", "lava"]), default="cpu", show_default=True)
@click.option("--timesteps", type=click.IntRange(1, 4096), help="Default: the artifact's.")
@click.option("--binary", is_flag=True, help="Binary spikes per step (rate coding) when T > 1.")
@click.option("--lava-tag", type=click.Choice(["fixed_pt", "floating_pt"]), default="fixed_pt",
              show_default=True)
@click.option("--lanes", type=click.IntRange(1), default=None,
              help="Lava backend: samples each Lava timestep carries side by side (trials for a "
                   "recurrent artifact). Default: 64 (1024 trials), capped so one message "
                   "stays under 1 MiB; outputs do not depend on it.")
@click.option("--timeout", type=click.FloatRange(1), default=600, show_default=True,
              help="Wall-clock guard for a Lava run, seconds.")
@click.option("--fail-on-saturation", is_flag=True,
              help="Treat any 24-bit state saturation as an error (no output is written).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU backend: torch threads for the run (default: every core).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--debug", is_flag=True, hidden=True)
def run(artifact, inp, out, backend, timesteps, binary, lava_tag, lanes, timeout,
        fail_on_saturation, threads, as_json, debug):
    """Run ARTIFACT on --input and write the readout to --output."""
    from tqdm import tqdm

    from sim.artifact import load
    art = load(artifact)
    x = load_npy(inp, "input")
    if x.dtype != np.float32:
        raise InputFileError(f"{inp}: dtype {x.dtype}; inputs must be float32")
    T = timesteps or int(art.meta.get("timesteps", 1))
    with tqdm(total=len(x), unit="sample", disable=None, leave=False) as bar:
        if backend == "cpu":
            import sim.cpu
            res = sim.cpu.run(art, x, timesteps=T, binary=binary, progress=bar.update,
                              threads=threads)
        else:
            import sim.lava
            res = sim.lava.run(art, x, timesteps=T, binary=binary, tag=lava_tag,
                               timeout=timeout, progress=bar.update, lanes=lanes)
    saturated = {name: st.saturations for name, st in res.stats.items() if st.saturations}
    if fail_on_saturation and saturated:
        from toolchain.errors import SimulationError
        raise SimulationError("24-bit state saturated: " + ", ".join(
            f"layer {name!r} {count} times" for name, count in saturated.items()) +
            f" over {res.samples} samples; recompile with fewer --levels or a smaller range")
    softmax = art.node(art.output).softmax
    save_npy(out, res.probabilities(softmax))
    summary = {"samples": res.samples, "timesteps": T, "backend": backend,
               "output": out, "output_shape": [res.samples, *art.output_shape],
               "softmax": softmax or None,
               "synops_per_sample": sum(s.synops for s in res.stats.values()) / max(res.samples, 1),
               "saturations": sum(s.saturations for s in res.stats.values())}
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        console.print(f"{res.samples} samples × T={T} on {backend} → {out} "
                      f"{tuple(summary['output_shape'])}; "
                      f"{summary['synops_per_sample']:,.0f} synaptic ops/sample, "
                      f"{summary['saturations']} saturations", highlight=False)


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.option("--debug", is_flag=True, hidden=True)
def inspect(artifact, as_json, debug):
    """Print an artifact's graph, parameters and quantization record."""
    from sim.artifact import load
    from sim.lava.hardware import HARDWARE_CASES, hardware_case
    art = load(artifact)
    T = int(art.meta.get("timesteps", 1))
    cases = {n.name: hardware_case(n, T, feeding=art.node(n.inputs[0]) if n.inputs else None)
             for n in art.nodes}
    if as_json:
        click.echo(json.dumps({"hardware": {"cases": HARDWARE_CASES, "per_node": cases},
            "input": art.input, "output": art.output, "meta": art.meta,
            "nodes": [{"name": n.name, "kind": n.kind, "inputs": list(n.inputs),
                       "shape": list(n.shape), "params": n.params(),
                       "arrays": {k: list(v.shape) for k, v in n.arrays().items()}}
                      for n in art.nodes],
            "record": {k: np.asarray(v).tolist() for k, v in art.record.items()}}, indent=1))
        return
    src = art.meta.get("source", {})
    console.print(f"{artifact}: from {src.get('file')} (sha256 {str(src.get('sha256'))[:12]}…, "
                  f"opset {src.get('opset')}), target {art.meta.get('target')}, "
                  f"levels {art.meta.get('levels')}, T={art.meta.get('timesteps')}", highlight=False)
    console.print(f"calibration: {art.meta.get('calibration')}", highlight=False)
    t = Table(title="SFN graph", title_justify="left")
    for col in ("node", "kind", "inputs", "shape", "on Loihi 2", "parameters"):
        t.add_column(col)
    for n in art.nodes:
        t.add_row(n.name[-40:], n.kind, ", ".join(i[-24:] for i in n.inputs),
                  "×".join(map(str, n.shape)), cases[n.name], n.describe()[len(n.kind) + 1:-1])
    console.print(t)
    for case in sorted(set(cases.values())):
        console.print(f"{case}: {HARDWARE_CASES[case]} (docs/hardware.md)", highlight=False)
    r = Table(title="quantization record (per channel)", title_justify="left")
    for col in ("entry", "channels", "min", "median", "max"):
        r.add_column(col)
    for key, v in sorted(art.record.items()):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        r.add_row(key[-48:], str(v.size), f"{v.min():.4g}", f"{np.median(v):.4g}", f"{v.max():.4g}")
    console.print(r)
    if "placement" in art.meta:
        from toolchain.mapping import Placement, placement_table
        console.print(placement_table(Placement.from_json(art.meta["placement"])))


def _register():
    from toolchain.cli_mapping import report, targets
    from toolchain.cli_rnn import rnn
    for command in (rnn, targets, report):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
