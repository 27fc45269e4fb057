"""E/I-constrained leaky rate RNNs: model, cognitive tasks, training and one-step ONNX export."""
from .export import export_rnn_onnx, run_onnx_trials
from .model import EIRNN
from .tasks import Task, cddm, custom_task, decision, go_nogo, make_task, memory_number
from .train import TrainResult, evaluate, masked_r2, train

__all__ = ["EIRNN", "Task", "TrainResult", "cddm", "custom_task", "decision", "evaluate",
           "export_rnn_onnx", "go_nogo", "make_task", "masked_r2", "memory_number",
           "run_onnx_trials", "train"]
