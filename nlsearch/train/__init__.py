"""Training: ``train(model_config, task, budget, seed, reporter, run_dir, resume) -> RunResult``, a
pure function (no globals) callable in a Ray worker or a test, with checkpoints and result records."""
from nlsearch.train.checkpoint import latest_checkpoint, load_weights, read_trainer
from nlsearch.train.loop import NonFiniteLossError, Reporter, RunResult, train
from nlsearch.train.plan import RunPlan, default_run_dir, plan_run
from nlsearch.train.reevaluate import evaluate_checkpoint
from nlsearch.train.record import RunRecord, read_record, write_run

__all__ = ["latest_checkpoint", "load_weights", "read_trainer", "NonFiniteLossError", "Reporter", "RunResult",
           "train", "RunPlan", "default_run_dir", "plan_run", "evaluate_checkpoint", "RunRecord", "read_record",
           "write_run"]
