"""Evaluation: pure functions from a model and a task to metric rows that declare their direction."""
from nlsearch.eval.evaluate import EvalResult, continual_rows, evaluate, phase_scores
from nlsearch.eval.forward import autocast, pick_device, predict, token_nll
from nlsearch.eval.scores import SCORES, MetricRow, check_metrics

__all__ = ["EvalResult", "continual_rows", "evaluate", "phase_scores", "autocast", "pick_device", "predict",
           "token_nll", "SCORES", "MetricRow", "check_metrics"]
