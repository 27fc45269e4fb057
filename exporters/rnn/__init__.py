"""E/I-constrained leaky rate RNNs: model, cognitive tasks, training and one-step ONNX export."""
from toolchain.rnn import run_onnx_trials
from toolchain.tasks import (Task, cddm, custom_task, decision, go_nogo, make_task, masked_r2,
                             memory_number)

from .export import export_rnn_onnx
from .model import EIRNN
from .train import TrainResult, evaluate, train

__all__ = ["EIRNN", "Task", "TrainResult", "cddm", "custom_task", "decision", "evaluate",
           "export_rnn_onnx", "go_nogo", "make_task", "masked_r2", "memory_number",
           "run_onnx_trials", "train"]
