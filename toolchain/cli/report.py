"""`toolchain report`: map an artifact to cores, run it, report activity, SynOps and energy."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

import sim.lava
from sim.artifact import load
from sim.files import check_folder, make_folder, remove_folders, write_files
from toolchain.cli.common import Progress, check_outputs, console, load_input_npy, progress_option
from toolchain.energy import build_report, render_figures, report_table, tap_payloads
from toolchain.mapping import map_artifact, placement_table
from toolchain.target import load_target

FILES = ("report.json", "activity.png", "energy.png", "cores.png")


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--input", "inp", required=True, type=click.Path(),
              help="X.npy, (N, *input_shape) float32 ((N, T, …) for a recurrent network).")
@click.option("--backend", type=click.Choice(["cpu", "lava"]), default="cpu", show_default=True)
@click.option("--target", "target_name", help="Target name or .json file (default: the "
              "artifact's target, else loihi2). `toolchain targets` lists them.")
@click.option("--out", "out_dir", type=click.Path(), default="report", show_default=True,
              help="Folder for report.json and the figures.")
@click.option("--timesteps", type=click.IntRange(1, 4096), help="Default: the artifact's.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (per-layer activity, "
              "energy, placement, figure paths) as JSON, numbers as numbers.")
@progress_option
@click.option("--debug", is_flag=True, hidden=True)
def report(artifact, inp, backend, target_name, out_dir, timesteps, as_json, show_progress,
           debug):
    """Map ARTIFACT to cores, run it on --input and report activity, SynOps and energy."""
    say = Progress("report", show_progress)
    out = Path(out_dir)
    check_folder(out)
    if out.is_dir():
        present = [name for name in FILES if os.path.lexists(out / name)]
        check_outputs({f"--out {name}": out / name for name in present},
                      {"artifact": artifact, "input": inp})
    say(f"load {artifact}")
    art = load(artifact)
    x, cast_note = load_input_npy(inp, "input")
    target = load_target(target_name or art.meta.get("target") or "loihi2")
    say("map onto cores")
    placement = map_artifact(art, target)
    T = timesteps or int(art.meta.get("timesteps", 1))
    sources = [art.input] + [n for n, layer in placement.layers.items()
                             if layer["role"] != "readout"]
    result, payloads = None, None
    if backend == "cpu" or T == 1 or art.recurrent:
        say(f"sim.cpu run of {len(x)} samples (payload histograms)")
        result, payloads = tap_payloads(art, x, sources, timesteps=T)
    if backend == "lava":
        say(f"Lava run of {len(x)} samples (start-up takes seconds)")
        done = [0]

        def lava_progress(n: int) -> None:
            done[0] += n
            say(f"Lava: {done[0]} of {len(x)} samples")
        result = sim.lava.run(art, x, timesteps=T, progress=lava_progress)
    say("figures")
    rep = build_report(art, result, placement, target, payloads, backend)
    if backend == "lava" and payloads is not None:
        rep.notes.append("payload histograms and the spike counts of the input encoder, relays "
                         "and max-pools come from sim.cpu (bit-exact to Lava fixed_pt)")
    if payloads is None:
        rep.notes.append(f"payload histograms need T = 1 (a T = {T} run sums the readout over "
                         "its steps)")
    if cast_note:
        rep.notes.append(cast_note)
    pngs = render_figures(rep, placement)
    figures = [out / name for name in pngs]
    document = {"artifact": str(artifact), "input": str(inp), "report": rep.to_json(),
                "placement": placement.to_json(), "figures": [str(f) for f in figures]}
    files = [(out / "report.json", json.dumps(document, indent=1).encode())] + \
        [(out / name, data) for name, data in pngs.items()]
    created = make_folder(out)
    try:
        write_files(files)
    except BaseException:
        remove_folders(created)
        raise
    if as_json:
        click.echo(json.dumps(document, indent=1))
        return
    console.print(placement_table(placement))
    for note in placement.notes + rep.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(report_table(rep))
    e = target.constants("energy")
    console.print(f"constants ({target.path}; sources: `toolchain targets`): " +
                  "; ".join(f"{k} = {'unknown' if q.value is None else q.value} "
                            f"({q.certainty})" for k, q in e.items()),
                  highlight=False)
    console.print(f"wrote {out / 'report.json'}, " + ", ".join(str(f) for f in figures),
                  highlight=False)
