"""Image classification as the paper trains and evaluates it: a task of the run skeleton (`task`), `cbam eval`
(`evaluate`), and the paper tables' comparisons (`compare`)."""

from cbam.classification.task import ClassificationConfig, ClassificationTask, EvalResult, evaluate

__all__ = ["ClassificationConfig", "ClassificationTask", "EvalResult", "evaluate"]
