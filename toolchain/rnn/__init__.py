"""Recurrent networks: the E/I cell (exporters.rnn's one-step cell ONNX), the standard ONNX RNN
operator, any one-step cell graph of the leaky form (cell_graph), an unrolled recurrence of such
a cell (sequence), and their compilation to a
recurrent SFN graph (a Delay edge, leaky neurons)."""
from toolchain.rnn.cell import (ACTIVATIONS, DEFAULT_RNN_LEVELS, Cell, check_dale, float_graph,
                                is_rnn_cell, read_cell, run_onnx_trials)
from toolchain.rnn.onnx_rnn import is_onnx_rnn, onnx_rnn_trials, read_onnx_rnn
from toolchain.rnn.cell_graph import cell_graph_trials, is_cell_graph, read_cell_graph
from toolchain.rnn.sequence import is_sequence_graph, read_sequence, sequence_trials

__all__ = ["ACTIVATIONS", "DEFAULT_RNN_LEVELS", "Cell", "check_dale", "float_graph",
           "is_rnn_cell", "read_cell", "run_onnx_trials", "is_onnx_rnn", "onnx_rnn_trials",
           "read_onnx_rnn", "cell_graph_trials", "is_cell_graph", "read_cell_graph",
           "is_sequence_graph", "read_sequence", "sequence_trials"]
