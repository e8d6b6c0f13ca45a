"""Training, evaluation and comparison runs: the recipe lives here, not in the layers or models."""

from cbam.engine.config import TrainConfig, build_config
from cbam.engine.train import EvalResult, RunResult, evaluate, fit, train_one_epoch

__all__ = ["EvalResult", "RunResult", "TrainConfig", "build_config", "evaluate", "fit", "train_one_epoch"]
