"""Recurrent networks: the E/I cell (exporters.rnn's one-step cell ONNX), the standard ONNX RNN
operator, any one-step cell graph of the leaky form (cell_graph), an unrolled recurrence of such
a cell (sequence), the ONNX LSTM and GRU operators (gated), and their compilation to a recurrent
SFN graph (Delay edges; leaky neurons, or gate tables, products and state neurons)."""
from toolchain.rnn.cell import (ACTIVATIONS, DEFAULT_RNN_LEVELS, Cell, check_dale, float_graph,
                                is_rnn_cell, read_cell, run_onnx_trials)
from toolchain.rnn.onnx_rnn import is_onnx_rnn, onnx_rnn_trials, read_onnx_rnn
from toolchain.rnn.cell_graph import cell_graph_trials, is_cell_graph, read_cell_graph
from toolchain.rnn.sequence import is_sequence_graph, read_sequence, sequence_trials
from toolchain.rnn.gated import GatedCell, is_gated, read_gated

__all__ = ["ACTIVATIONS", "DEFAULT_RNN_LEVELS", "Cell", "check_dale", "float_graph",
           "is_rnn_cell", "read_cell", "run_onnx_trials", "is_onnx_rnn", "onnx_rnn_trials",
           "read_onnx_rnn", "cell_graph_trials", "is_cell_graph", "read_cell_graph",
           "is_sequence_graph", "read_sequence", "sequence_trials", "GatedCell", "is_gated",
           "read_gated"]
