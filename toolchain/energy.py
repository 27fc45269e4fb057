"""Activity, synaptic operations and energy per inference, from recorded activity.

Kept apart from the simulators (like sinabs' synops counter): it reads a `SimResult` from either
backend (per-node totals over all samples and steps), the `Placement` (which compartments sit
on which cores) and the target's constants, and optionally per-layer payload histograms.
Counting rules (docs/report.md):

- a synaptic operation is one synapse reached by one nonzero payload (the simulators' `synops`:
  nonzero input × fan-out); a graded spike costs what a binary one costs, whatever its payload,
  and a zero payload costs nothing.   E_syn = synops · synaptic_op_pj
- a product operation is one product neuron multiplying two nonzero payloads (Product and
  MatMul nodes; the simulators count them as their synops; here they are counted apart).
  Product neurons: one per element of a Product, one per term (M·N·K) of a MatMul.
                                      E_prod = products · product_op_pj (left out, with a
                                      note, where the target leaves the constant unknown)
- every compartment (neuron, relay, max-pool, readout accumulator) updates once per timestep,
  active or not.                      E_neuron = compartments · steps · neuron_update_pj
- every nonzero payload a source emits (input encoder, neuron, max-pool, relay) is one message
  to each core holding a compartment it reaches.
                                      E_spike = spikes · cores reached · spike_message_pj
- the ANN it came from: one multiply-accumulate per weight use of every dense and conv node.
  E_ANN = MACs · ann_mac_fp32_pj (and int8); the conversion literature's SNN figure is
  synops · ann_ac_fp32_pj.

Spike counts of neurons come from the backend's statistics. The input encoder, relays and
max-pools are not counted by the simulators; their counts (and every payload histogram) come
from `tap_payloads`, which records the integer values with sim.cpu.run(record=...).
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import numpy as np
from rich.table import Table

import sim.cpu
from sim.artifact import Artifact
from sim.results import LayerStats, SimResult
from toolchain.mapping import Placement
from toolchain.tables import columns, fitted, short
from toolchain.target import Target

PRODUCT_KINDS = ("product", "matmul")   # their operations are products, not synaptic events


@dataclass
class LayerActivity:
    """One node's activity and cost per inference (one sample: all its timesteps)."""
    name: str
    kind: str
    role: str                       # input | relay | synapse | the compartment role (Placement)
    compartments: int               # on-core compartments (0 for host and pure synapse nodes)
    cores: int
    elements: int                   # outputs per step
    spikes: float | None            # nonzero payloads emitted per inference (None: not measured)
    spike_rate: float | None        # spikes / (elements · steps)
    mean_payload: float | None      # mean |payload| of the nonzero payloads
    payload_hist: dict[str, int] | None   # payload value → count, over all samples and steps
    destinations: int               # cores a spike of this layer reaches
    synops: float                   # per inference
    macs: int                       # the ANN's multiply-accumulates per inference (per step
                                    # of a recurrent network, times its steps)
    saturations: int                # total over the run
    energy_pj: dict[str, float] = field(default_factory=dict)   # synops, neurons, spikes,
                                                                  # products
    clipped: int = 0                # the input: values the encoder clipped to its levels
    products: float = 0.0           # product operations per inference (Product, MatMul)
    product_neurons: int = 0        # product neurons (elements; MatMul: its terms)

    @property
    def total_pj(self) -> float:
        return sum(self.energy_pj.values())


@dataclass
class EnergyReport:
    target: str
    backend: str
    samples: int
    steps: int
    constants: dict[str, dict]
    layers: list[LayerActivity]
    totals: dict
    placement: dict
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = asdict(self)
        for row, layer in zip(out["layers"], self.layers):
            row["energy_pj"]["total"] = layer.total_pj
        return out


def _steps(art: Artifact, result: SimResult) -> int:
    """Timesteps per inference: T, or the trial length of a recurrent network."""
    return int(result.accumulator.shape[1]) if art.recurrent else int(result.timesteps)


def build_report(art: Artifact, result: SimResult, placement: Placement, target: Target,
                 payloads: dict[str, dict[int, int]] | None = None,
                 backend: str = "cpu") -> EnergyReport:
    """Per-layer activity, synaptic operations and energy per inference (see module docstring).

    `payloads[name]` is a histogram {payload value: count} over all samples and steps of a
    source layer; layers without one use the backend's spike count (neurons) or are reported
    as not measured (input encoder, relays, max-pools).
    """
    e = {k: q.value for k, q in target.constants("energy").items()}
    product_pj = e.get("product_op_pj")
    samples = max(result.samples, 1)
    steps = _steps(art, result)
    ann_passes = steps if art.recurrent else 1     # a feed-forward ANN runs once, not T times
    payloads = payloads or {}
    rows, notes = [], []
    unmeasured = []
    for node in art.nodes:
        if node.role in ("index", "edge"):     # index maps: no compartments, no arithmetic
            continue
        st = result.stats.get(node.name, LayerStats())
        layer = placement.layers.get(node.name)
        is_input = node.name == art.input
        role = "input" if is_input else layer["role"] if layer else "synapse"
        elements = int(np.prod(node.shape))
        compartments = layer["neurons"] if layer else 0
        # a fan-in split into partial sums: the relays' compartments update every step too
        compartments += sum(placement.layers[r]["neurons"]
                            for r in (layer or {}).get("partial_sums", []))
        hist = payloads.get(node.name)
        if hist is not None:
            nonzero = {int(v): int(c) for v, c in hist.items() if int(v) != 0}
            spikes = sum(nonzero.values()) / samples
            mean = sum(abs(v) * c for v, c in nonzero.items()) / max(sum(nonzero.values()), 1)
        elif node.role == "neuron":
            spikes, mean = st.spikes / samples, st.payload / max(st.spikes, 1)
        else:
            spikes = mean = None
        emits = role not in ("readout", "synapse")    # sources of spikes: all but sinks
        if emits and spikes is None:
            unmeasured.append(node.name)
        destinations = len(placement.destination_cores(node.name)) if emits else 0
        synops = st.synops / samples
        products, product_neurons = 0.0, 0
        if node.kind in PRODUCT_KINDS:
            products, product_neurons, synops = synops, node.macs(), 0.0
        energy = {"synops": synops * e["synaptic_op_pj"],
                  "neurons": compartments * steps * e["neuron_update_pj"],
                  "spikes": (spikes or 0.0) * destinations * e["spike_message_pj"],
                  "products": products * (product_pj or 0.0)}
        rows.append(LayerActivity(
            node.name, node.kind, role, compartments, len(layer["cores"]) if layer else 0,
            elements, spikes, None if spikes is None else spikes / (elements * steps),
            mean if emits else None,
            None if hist is None else {str(int(v)): int(c) for v, c in sorted(hist.items())},
            destinations, synops, node.macs() * ann_passes, st.saturations, energy, st.clipped,
            products, product_neurons))
    if unmeasured:
        notes.append(f"spikes of {', '.join(unmeasured)} not measured (no payload histogram): "
                     "their spike-message energy is left out")
    energy_total = {k: sum(r.energy_pj[k] for r in rows)
                    for k in ("synops", "neurons", "spikes", "products")}
    total_products = sum(r.products for r in rows)
    if total_products and product_pj is None:
        notes.append(f"{total_products:,.1f} product operations per inference: their energy is "
                     f"left out ({target.name} gives no figure for a product neuron, "
                     "energy.product_op_pj)")
    total_macs = sum(r.macs for r in rows)
    total_synops = sum(r.synops for r in rows)
    totals = {"synops": total_synops, "macs": total_macs,
              "spikes": sum(r.spikes or 0.0 for r in rows),
              "saturations": sum(r.saturations for r in rows),
              "input_clipped": sum(r.clipped for r in rows),
              "products": total_products,
              "product_neurons": sum(r.product_neurons for r in rows),
              "energy_pj": {**energy_total, "total": sum(energy_total.values())},
              "ann_fp32_pj": total_macs * e["ann_mac_fp32_pj"],
              "ann_int8_pj": total_macs * e["ann_mac_int8_pj"],
              "snn_ac_fp32_pj": total_synops * e["ann_ac_fp32_pj"]}
    if totals["input_clipped"]:
        inp = art.node(art.input)
        notes.append(f"the input encoder clipped {totals['input_clipped']} values to its levels "
                     f"[{inp.lo}, {inp.hi}]: inputs outside the calibrated range")
    lb = placement.lower_bound
    summary = {"cores_used": placement.cores_used, "chips": placement.chips,
               "lower_bound": lb["cores"], "ratio": placement.ratio}
    constants = {k: asdict(q) for k, q in target.constants("energy").items()}
    return EnergyReport(target.name, backend, result.samples, steps, constants, rows, totals,
                        summary, notes)


def tap_payloads(art: Artifact, x: np.ndarray, names: list[str], timesteps: int = 1,
                 batch_size: int = 256, progress=None) -> tuple[SimResult, dict | None]:
    """Run sim.cpu on `x`, returning its SimResult and histograms of the integer values of nodes
    `names` ({value: count} over all samples and steps). A feed-forward run at T > 1 records
    only sums over its steps: there the histograms are None."""
    if timesteps > 1 and not art.recurrent:
        return sim.cpu.run(art, x, timesteps=timesteps, progress=progress), None
    result = sim.cpu.run(art, x, timesteps=timesteps, batch_size=batch_size, progress=progress,
                         record=tuple(names))
    hists = {}
    for name in names:
        values, counts = np.unique(result.recorded[name], return_counts=True)
        hists[name] = dict(zip(values.tolist(), counts.tolist()))
    return result, hists


# ---------------------------------------------------------------- terminal output

def _num(value, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def report_table(report: EnergyReport) -> Table:
    """Per-layer activity and energy per inference, totals and the ANN comparison."""
    t = Table(title=f"activity and energy per inference on {report.target} ({report.backend}, "
                    f"{report.samples} samples × {report.steps} step(s))", title_justify="left")
    cols = ("layer", "kind", "neurons", "cores", "spikes", "rate", "mean payload", "synops",
            "MACs (ANN)", "sat./clip.", "energy (nJ)")
    columns(t, [(col, "name" if col == "layer" else "text" if col == "kind" else "number")
                for col in cols])
    for r in report.layers:
        t.add_row(short(r.name), r.kind, _num(r.compartments or None), _num(r.cores or None),
                  _num(r.spikes, 1), "–" if r.spike_rate is None else f"{r.spike_rate:.3f}",
                  _num(r.mean_payload, 2), _num(r.synops, 1), _num(r.macs or None),
                  str(r.saturations + r.clipped), f"{r.total_pj / 1000:,.3f}")
    tot = report.totals
    t.add_section()
    t.add_row("total", "", _num(sum(r.compartments for r in report.layers)),
              _num(report.placement["cores_used"]), _num(tot["spikes"], 1), "", "",
              _num(tot["synops"], 1), _num(tot["macs"]),
              str(tot["saturations"] + tot["input_clipped"]),
              f"{tot['energy_pj']['total'] / 1000:,.3f}")
    en = tot["energy_pj"]
    t.caption = (
        f"{report.target} estimate {en['total'] / 1000:,.3f} nJ/inference = synops "
        f"{en['synops'] / 1000:,.3f} + neuron updates {en['neurons'] / 1000:,.3f} + spike "
        f"messages {en['spikes'] / 1000:,.3f} nJ"
        + (f" + products {en['products'] / 1000:,.3f} nJ" if en["products"] else "")
        + (f" ({tot['products']:,.1f} product operations on {tot['product_neurons']:,} "
           "product neurons)" if tot["product_neurons"] else "")
        + f";  ANN {tot['macs']:,} MACs: fp32 "
        f"{tot['ann_fp32_pj'] / 1000:,.3f} nJ, int8 {tot['ann_int8_pj'] / 1000:,.3f} nJ (45 nm);"
        f"  SNN as accumulates (fp32 AC): {tot['snn_ac_fp32_pj'] / 1000:,.3f} nJ.  Cores "
        f"{report.placement['cores_used']} (lower bound {report.placement['lower_bound']}), "
        f"chips {report.placement['chips']}.")
    t.caption_justify = "left"
    return fitted(t)


def constants_table(target: Target, sections=("limits", "synapse_encoding", "energy",
                                              "reference")) -> Table:
    """Every constant of a target with its unit, certainty and source."""
    t = Table(title=f"{target.name}: {target.description}", title_justify="left")
    t.add_column("constant", no_wrap=True)
    for col, ratio in (("value", 1), ("unit", 2), ("certainty", 1), ("source", 5)):
        t.add_column(col, overflow="fold", ratio=ratio)
    for section in sections:
        for key, q in target.constants(section).items():
            value = "unknown (not enforced)" if q.value is None else \
                f"{q.value:,}" if isinstance(q.value, (int, float)) and not \
                isinstance(q.value, bool) else str(q.value).lower()
            t.add_row(f"{section}.{key}", value, q.unit, q.certainty, q.source)
    return t


# ---------------------------------------------------------------- figures

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def render_figures(report: EnergyReport, placement: Placement) -> dict[str, bytes]:
    """{file name: PNG bytes}: activity.png (spike rate and payload histograms per layer),
    energy.png (breakdown per layer and the ANN comparison), cores.png (neurons and synaptic
    memory per core, by layer). The caller writes them (sim.files.write_files)."""
    from matplotlib.figure import Figure   # no pyplot: no global backend state
    return {"activity.png": _activity_figure(report, Figure),
            "energy.png": _energy_figure(report, Figure),
            "cores.png": _cores_figure(placement, Figure)}


def _short(name: str, n: int = 28) -> str:
    """A layer name as a figure label: shortened, and with `$` escaped (matplotlib reads text
    between two `$` as mathtext, and fails drawing a malformed one)."""
    name = name if len(name) <= n else "…" + name[-(n - 1):]
    return name.replace("$", r"\$")


HIST_FLOOR = -6     # log10 fraction shown as the darkest colour; never-seen values are grey
NEVER = "#d9d9d9"   # the colour of a payload value that never occurred


def _activity_figure(report, Figure) -> bytes:
    """Spike rate per layer, and each layer's payload histogram on its own value axis (the
    integers from its smallest to its largest payload), coloured by log10 of the fraction of
    elements × steps; a value that never occurred is grey, distinct from a rare one."""
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    rows = [r for r in report.layers if r.spike_rate is not None]
    hist_rows = [r for r in rows if r.payload_hist]
    n = max(len(hist_rows), 1)
    fig = Figure(figsize=(10, 4.2 + 0.8 * n), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.2, 0.8 * n + 0.9])
    ax1 = top.subplots()
    names = [_short(r.name) for r in rows]
    bars = ax1.bar(range(len(rows)), [r.spike_rate for r in rows], color="tab:blue")
    ax1.bar_label(bars, fmt="%.2f", fontsize=8)
    ax1.set_xticks(range(len(rows)), names, rotation=25, ha="right", fontsize=8)
    ax1.set_ylabel("nonzero payloads\nper element and step")
    ax1.set_title("spike rate per layer")
    ax1.margins(y=0.15)
    if not hist_rows:
        ax = bottom.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "payload histograms not recorded (they need T = 1)", ha="center",
                va="center")
        return _png(fig)
    bottom.suptitle("payload histogram per layer, each on its own payload axis", fontsize=10)
    grid = bottom.add_gridspec(n, 2, width_ratios=[40, 1])
    norm = Normalize(vmin=HIST_FLOOR, vmax=0)
    cmap = fig_cmap("viridis")
    image = None
    for i, r in enumerate(hist_rows):
        ax = bottom.add_subplot(grid[i, 0])
        counts = {int(v): c for v, c in r.payload_hist.items()}
        lo, hi = min(counts), max(counts)
        values = np.arange(lo, hi + 1)
        total = sum(counts.values())
        frac = np.array([counts.get(int(v), 0) / total for v in values])
        shown = np.ma.array(np.log10(np.maximum(frac, 10.0 ** HIST_FLOOR)), mask=frac == 0)
        image = ax.imshow(shown[None, :], aspect="auto", cmap=cmap, norm=norm,
                          interpolation="nearest", extent=(lo - 0.5, hi + 0.5, 0, 1))
        ax.set_facecolor(NEVER)
        ax.set_yticks([])
        ax.set_ylabel(_short(r.name, 24), rotation=0, ha="right", va="center", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("payload value")
    cax = bottom.add_subplot(grid[:, 1])
    bar = bottom.colorbar(image, cax=cax)
    bar.set_label("log10 fraction of\nelements × steps", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    bottom.legend(handles=[Patch(color=NEVER, label="never occurred"),
                           Patch(color=cmap(0.0), label=f"≤ 1e{HIST_FLOOR} (rare)")],
                  loc="outside lower right", fontsize=8, ncol=2, frameon=False)
    return _png(fig)


def fig_cmap(name: str):
    from matplotlib import colormaps
    return colormaps[name]


def _energy_figure(report, Figure) -> bytes:
    """Energy per inference by layer and against the ANN, in µJ with the values on the bars;
    the figure says which constants it uses."""
    rows = [r for r in report.layers if r.total_pj > 0]
    fig = Figure(figsize=(12, max(4.5, 0.32 * len(rows) + 2.5)))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    left = np.zeros(len(rows))
    for key, color, label in (("synops", "tab:orange", "synaptic ops"),
                              ("neurons", "tab:green", "neuron updates"),
                              ("spikes", "tab:purple", "spike messages")):
        widths = np.array([r.energy_pj[key] / 1e6 for r in rows])
        ax1.barh(range(len(rows)), widths, left=left, color=color, label=label)
        left += widths
    for i, total in enumerate(left):
        ax1.text(total, i, f" {total:.3g}", va="center", fontsize=7)
    ax1.set_yticks(range(len(rows)), [_short(r.name) for r in rows], fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("µJ per inference")
    ax1.set_xlim(0, max(left.max(initial=0) * 1.18, 1e-9))
    ax1.set_title(f"energy on {report.target} by layer")
    ax1.legend(fontsize=8, loc="lower right")
    tot = report.totals
    bars = {f"{report.target}\nestimate": tot["energy_pj"]["total"],
            "SNN as fp32\naccumulates": tot["snn_ac_fp32_pj"],
            "ANN fp32\nMACs": tot["ann_fp32_pj"], "ANN int8\nMACs": tot["ann_int8_pj"]}
    drawn = ax2.bar(range(len(bars)), [v / 1e6 for v in bars.values()],
                    color=["tab:blue", "tab:gray", "tab:red", "tab:pink"])
    ax2.bar_label(drawn, fmt="%.3g", fontsize=8)
    ax2.set_xticks(range(len(bars)), list(bars), fontsize=8)
    ax2.set_yscale("log")
    ax2.margins(y=0.2)
    ax2.set_ylabel("µJ per inference (log scale)")
    ax2.set_title("per inference, against the ANN (45 nm)")
    fig.tight_layout()
    fig.text(0.01, 0.0, energy_note(report), fontsize=8, ha="left", va="top")
    return _png(fig)


def energy_note(report) -> str:
    """What the figure's energies rest on, from the constants' own certainty."""
    stand_ins = sorted(k for k, c in report.constants.items()
                       if "loihi 1" in str(c.get("certainty", "")).lower())
    first = (f"{', '.join(stand_ins)}: Loihi 1 per-operation constants stand in for "
             f"{report.target}'s, which are not published." if stand_ins else
             f"Per-operation constants of {report.target}.")
    return (first + " ANN bars: 45 nm figures. An estimate, not a measurement; sources: "
            "`toolchain targets`.")


def _cores_figure(placement, Figure) -> bytes:
    from matplotlib import colormaps
    cores = placement.cores
    names = list(placement.layers)
    palette = colormaps["tab20"]
    colors = {n: palette(i % 20) for i, n in enumerate(names)}
    fig = Figure(figsize=(max(8, 0.12 * len(cores) + 6), 7))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    lim = placement.limits
    for ax, key, limit, unit in ((ax1, "neurons", lim["neurons_per_core"], 1),
                                 (ax2, "memory_bits", lim["synaptic_memory_bits_per_core"], 8192)):
        bottom = np.zeros(len(cores))
        for name in names:
            heights = np.array([c["layers"].get(name, {}).get(key, 0) / unit for c in cores])
            if heights.any():
                ax.bar(range(len(cores)), heights, bottom=bottom, color=colors[name], width=0.9,
                       label=_short(name) if key == "neurons" else None)
                bottom += heights
        ax.axhline(limit / unit, color="black", linestyle="--", linewidth=1,
                   label=f"capacity per core ({limit / unit:,.0f})")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ticks = list(range(len(cores))) if len(cores) <= 32 else None
    if ticks is not None:
        ax2.set_xticks(ticks, [str(t) for t in ticks])
    else:
        ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_xlim(-0.75, len(cores) - 0.25)
    ax1.set_ylabel("compartments")
    ax2.set_ylabel("synaptic memory (KiB)")
    ax2.set_xlabel("core")
    lb = placement.lower_bound
    cores_text = "1 core" if placement.cores_used == 1 else f"{placement.cores_used} cores"
    ax1.set_title(f"core map on {placement.target}: {cores_text}, "
                  f"{placement.chips} chip(s), lower bound {lb['cores']}")
    handles, labels = ax1.get_legend_handles_labels()
    if len(names) > 40:      # the layers would not fit: the capacity line alone
        keep = [i for i, label in enumerate(labels) if label.startswith("capacity")]
        handles, labels = [handles[i] for i in keep], [labels[i] for i in keep]
    ax1.legend(handles, labels, fontsize=7, ncol=1 + len(labels) // 20, loc="upper left",
               bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _png(fig)
