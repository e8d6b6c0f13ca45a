"""The run skeleton every task shares (`run`), the options mechanism (`config`), the task interface (`task`),
and what runs need around them: processes (`distributed`), batches (`batches`) and run folders (`run_folder`).
The recipe lives here and in the tasks (`cbam.classification`, `cbam.detection`), not in the layers or models."""

from cbam.engine.run import RunResult, run
from cbam.engine.task import Headline, Task, TaskData

__all__ = ["Headline", "RunResult", "Task", "TaskData", "run"]
