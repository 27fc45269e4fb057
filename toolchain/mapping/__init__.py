"""Core mapping: place every compartment population and its incoming synapses on neuro-cores.

What occupies a core (docs/report.md states the rules in full). Each node kind's traits
(sim.ops: `compartment`, `connectivity`, `new_current`, `sums_inputs`, its role) decide its part:
- compartments ("neurons" in every count): each SFN neuron; each max-pool output (a maximum
  needs a compartment, i.e. microcode); each readout element (its integer accumulator); and a
  *relay* compartment for each output of a synapse node that makes a new current (dense, conv,
  sum-pool) or sums currents (add) whose integer result feeds another weighted map or a max-pool,
  e.g. sum-pool → conv: only spikes cross cores, so the sum is forwarded as a graded spike
  (exact while it fits the payload bits).
- synapses are stored on the core of the compartments they drive. Adds, index maps (joining,
  reshaping, transposing) and recurrent delays cost nothing by themselves: an add is several
  connections summing into the same compartments (dendritic accumulation), an index map only
  changes which compartment a synapse targets (`Node.index_tables`).
- the input encoder runs on the host; its spikes arrive as input axons.

Synaptic memory per core, per population and incoming connection, counted on the union of that
population's elements on the core (one synapse list per input axon, stored in groups of at most
`synapses_per_group`, each group `group_header_bits` plus its synapses, rounded up to whole
`word_bits` words, grouped optimally):
- dense connection: dense format (weights only, one list of |rows| per input axon with any
  nonzero weight) or sparse format (weight + index per nonzero synapse), whichever is cheaper
  over the whole layer; the layer keeps that format on every core.
- conv, sum-pool, max-pool windows: with `conv_weight_sharing`, one stored kernel slice
  (C_in/groups·kh·kw weights) per output channel present on the core, whatever the number of
  positions; without it, a sparse list per input axon of the synapses it reaches on the core.
- one-to-one connections (an add's identity branch, a delay): one weight per channel when
  weights are shared, else one sparse synapse per element.

Placement: every population is cut into tiles of about 1/8 of a core (channels × row bands), and
cores are filled one at a time from two streams in graph order, the memory-heavy and the
neuron-heavy populations, so that each core takes its balanced share of both resources. Each
addition is checked against every limit with the exact cost of the union on that core, and the
placement records those exact per-core counts. Limits no split can get around (payload and weight
widths, one neuron's own fan-in) raise MappingError saying which layer, which limit, by how much.
"""
from toolchain.errors import MappingError
from toolchain.mapping.cost import Connection, Cost, list_words
from toolchain.mapping.graph import Graph, Population
from toolchain.mapping.limits import check_fixed_limits
from toolchain.mapping.placement import PLACEMENT_VERSION, Placement, map_artifact, placement_table

__all__ = ["MappingError", "Placement", "map_artifact", "placement_table", "list_words", "Cost",
           "Connection", "Graph", "Population", "check_fixed_limits", "PLACEMENT_VERSION"]
