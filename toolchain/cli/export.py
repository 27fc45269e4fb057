"""`toolchain export`: an artifact in another format (NIR)."""
from __future__ import annotations

import json

import click

from sim.artifact import load
from sim.files import write_files
from toolchain.cli.common import check_outputs, console


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["nir"]), required=True,
              help="nir: the binary integrate-and-fire form as a NIR graph (docs/nir.md).")
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="The file to write (model.nir).")
@click.option("--timesteps", type=click.IntRange(1, 4096),
              help="T recorded in the graph for its readout (default: the artifact's).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.option("--debug", is_flag=True, hidden=True)
def export(artifact, fmt, out, timesteps, as_json, debug):
    """Write ARTIFACT in another format: its T-step integrate-and-fire form as NIR."""
    from toolchain.nir_io.export import nir_file_bytes, to_nir   # nir and h5py load on use

    check_outputs({"-o": out}, {"artifact": artifact})
    art = load(artifact)
    T = timesteps or int(art.meta.get("timesteps", 1))
    graph = to_nir(art, T)
    write_files([(out, nir_file_bytes(graph))])
    kinds: dict[str, int] = {}
    for node in graph.nodes.values():
        kinds[type(node).__name__] = kinds.get(type(node).__name__, 0) + 1
    if as_json:
        click.echo(json.dumps({"artifact": artifact, "format": fmt, "output": out,
                               "timesteps": T, "nodes": kinds,
                               "edges": len(graph.edges)}, indent=1))
        return
    console.print(f"{artifact} → {out} (NIR, T = {T}): " +
                  ", ".join(f"{n} {k}" for k, n in kinds.items()) +
                  f"; run it with binary spikes: sim.cpu.run(art, x, timesteps={T}, "
                  "binary=True) gives the same outputs (docs/nir.md)", highlight=False)
