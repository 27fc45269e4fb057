"""`toolchain inspect`: an artifact's graph, parameters and quantization record."""
from __future__ import annotations

import json

import click
import numpy as np
from rich.table import Table

from sim.artifact import load
from sim.lava.hardware import HARDWARE_CASES, hardware_case
from toolchain.cli.common import console
from toolchain.mapping import Placement, placement_table
from toolchain.tables import columns, fitted, short


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the graph, every node's "
              "parameters, the record and the placement as JSON, numbers as numbers.")
@click.option("--debug", is_flag=True, hidden=True)
def inspect(artifact, as_json, debug):
    """Print an artifact's graph, parameters and quantization record."""
    art = load(artifact)
    T = int(art.meta.get("timesteps", 1))
    cases = {n.name: hardware_case(n, T, feeding=art.node(n.inputs[0]) if n.inputs else None)
             for n in art.nodes}
    if as_json:
        primitives = {n.name: n.primitive for n in art.nodes if n.primitive}
        click.echo(json.dumps({"hardware": {"cases": HARDWARE_CASES, "per_node": cases,
                                            "primitives": primitives},
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
    t = columns(Table(title="SFN graph", title_justify="left"),
                [("node", "name"), ("kind", "text"), ("inputs", "name"), ("shape", "text"),
                 ("on Loihi 2", "text"), ("parameters", "long")])
    for n in art.nodes:
        t.add_row(short(n.name), n.kind, ", ".join(short(i, 24) for i in n.inputs),
                  "×".join(map(str, n.shape)),
                  f"{cases[n.name]} ({n.primitive})" if n.primitive else cases[n.name],
                  n.describe()[len(n.kind) + 1:-1])
    console.print(fitted(t))
    for case in sorted(set(cases.values())):
        console.print(f"{case}: {HARDWARE_CASES[case]} (docs/hardware.md)", highlight=False)
    r = columns(Table(title="quantization record (per channel)", title_justify="left"),
                [("entry", "name"), ("channels", "number"), ("min", "number"),
                 ("median", "number"), ("max", "number")])
    for key, v in sorted(art.record.items()):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        r.add_row(short(key, 48), str(v.size), f"{v.min():.4g}", f"{np.median(v):.4g}", f"{v.max():.4g}")
    console.print(fitted(r))
    if "placement" in art.meta:
        console.print(placement_table(Placement.from_json(art.meta["placement"])))
