"""Many runs at once: here one after another, in `--jobs N` processes on this machine, or as jobs of a cluster
scheduler through submitit (Slurm; its local executor runs the same path on one machine).

A job is a picklable function of one payload, run in a fresh process that writes its log beside the run
(`<run>/log.txt`). Each run is resumable on its own (`cbam.runs.fit_or_reuse`), so a job killed or preempted
continues from its last checkpoint when it runs again: submitit requeues a preempted Slurm job by itself
(`Resubmitting`), and `cbam compare` run again continues whatever did not finish. A job that fails is reported
with its log, and the others still finish.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from cbam.data.loading import available_cpus
from cbam.errors import ConfigError, UserError
from cbam.extras import import_optional

log = logging.getLogger(__name__)

LOG_FILE = "log.txt"
SCHEDULERS: tuple[str, ...] = ("slurm", "local")
"""submitit's clusters: Slurm, or its local executor (each job a process on this machine)."""


@dataclass(frozen=True)
class Job:
    """One run to make: what to call it, where it writes, and the payload its function takes."""

    name: str
    folder: Path
    payload: Any


@dataclass(frozen=True)
class Outcome:
    """What became of a job: its result, or the error that stopped it and the log that tells more."""

    job: Job
    result: Any = None
    error: str | None = None
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def threads_per_job(jobs: int) -> int:
    """The CPU threads each of `jobs` concurrent jobs gets, so they do not fight over cores."""
    return max(1, available_cpus() // max(1, jobs))


def _claim_slot(slots: Any, threads: int) -> None:
    """A worker process's start: take a slot number, which picks its GPU where there are GPUs (before CUDA
    starts in it), and keep to `threads` CPU threads. Its own data-loading workers start as the platform's default
    does (fork on Linux), as in a run started from the shell: a spawned worker inherits "spawn", which pickles the
    whole dataset into every loader process, one shared-memory file per tensor (a detection set's boxes exhaust
    the open-file limit)."""
    multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)
    slot = slots.get()
    gpus = os.environ.get("CBAM_JOB_GPUS", "")
    if gpus:
        visible = gpus.split(",")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[slot % len(visible)]
    import torch

    torch.set_num_threads(threads)


def _in_job_process(function: Callable[[Any], Any], payload: Any, folder: str) -> Any:
    """Run `function(payload)` in a worker process, its log written to `<folder>/log.txt`."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(folder) / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        return function(payload)
    except Exception:
        logging.getLogger(__name__).exception("the job failed")
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


def _visible_gpus() -> str:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES names them ("" without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return ""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    return given if given else ",".join(str(i) for i in range(torch.cuda.device_count()))


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_here(function: Callable[[Any], Any], jobs: Sequence[Job]) -> list[Outcome]:
    """One job after another in this process, logging to the console as a single run does; a job that fails is
    reported (a user's mistake in one line, a crash with its traceback) and the others still run."""
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(Outcome(job, function(job.payload)))
        except Exception as err:
            log.log(logging.INFO if isinstance(err, UserError) else logging.ERROR, "%s failed", job.name,
                    exc_info=not isinstance(err, UserError))  # fmt: skip
            outcomes.append(Outcome(job, error=_one_line(err)))
    return outcomes


def run_in_processes(function: Callable[[Any], Any], jobs: Sequence[Job], processes: int) -> list[Outcome]:
    """`processes` jobs at a time, each worker a fresh process with its share of the CPU threads and, where
    there are GPUs, one GPU of its own; results in the order of `jobs`."""
    context = get_context("spawn")  # a fresh interpreter per worker: no inherited threads or CUDA state
    slots = context.Queue()
    for slot in range(processes):
        slots.put(slot)
    os.environ["CBAM_JOB_GPUS"] = _visible_gpus()
    outcomes: list[Outcome] = []
    with _terminate_as_exit(), ProcessPoolExecutor(processes, context, initializer=_claim_slot,
                                                    initargs=(slots, threads_per_job(processes))) as pool:  # fmt: skip
        try:
            futures = [pool.submit(_in_job_process, function, job.payload, str(job.folder)) for job in jobs]
            for job, future in zip(jobs, futures, strict=True):
                try:
                    outcomes.append(Outcome(job, future.result(), log=job.folder / LOG_FILE))
                except Exception as err:
                    outcomes.append(Outcome(job, error=_one_line(err), log=job.folder / LOG_FILE))
        except BaseException:  # Ctrl-C or a kill: the workers stop too; each run keeps its last epoch
            _stop_workers(pool)
            raise
    return outcomes


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """While open, SIGTERM (`kill`, a scheduler's cancel) exits this process as SystemExit(143), so the
    workers are stopped with it rather than left training."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate `pool`'s worker processes (this process's only children while it runs jobs) now, queued jobs
    cancelled."""
    for process in multiprocessing.active_children():
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def run_on_scheduler(
    function: Callable[[Any], Any],
    jobs: Sequence[Job],
    scheduler: str,
    folder: Path,
    options: Mapping[str, Any],
) -> list[Outcome]:
    """Each job as one job of `scheduler` through submitit (its logs under `folder`), waited for; `options` go
    to submitit's `update_parameters` (`slurm_partition`, `timeout_min`, `gpus_per_node`, `cpus_per_task`...)."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}; choose from {', '.join(SCHEDULERS)}")
    submitit = import_optional("submitit", "cluster", f"running jobs on {scheduler}")
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=scheduler)
    except RuntimeError as err:  # no srun/sbatch here: not on a Slurm cluster
        raise ConfigError(f"{scheduler} is not reachable from this machine ({_one_line(err)})") from None
    try:
        executor.update_parameters(**{"name": "cbam", "timeout_min": 24 * 60, **options})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--scheduler-arg: {err}") from None
    try:
        submitted = [executor.submit(Requeued(function), job.payload) for job in jobs]
    except Exception as err:  # sbatch missing or refusing: the scheduler is not reachable from here
        raise ConfigError(f"could not submit to {scheduler}: {_one_line(err)}") from None
    outcomes = []
    for job, handle in zip(jobs, submitted, strict=True):
        try:
            outcomes.append(Outcome(job, handle.result(), log=Path(handle.paths.stderr)))
        except Exception as err:
            outcomes.append(Outcome(job, error=_one_line(err), log=Path(handle.paths.stderr)))
    return outcomes


class Requeued:
    """A job function that submitit requeues when Slurm preempts it or its time runs out; the run then resumes
    from its last checkpoint (submitit's `checkpoint` protocol)."""

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function

    def __call__(self, payload: Any) -> Any:
        return self.function(payload)

    def checkpoint(self, payload: Any) -> Any:
        submitit = import_optional("submitit", "cluster", "requeueing a job")
        return submitit.helpers.DelayedSubmission(Requeued(self.function), payload)


def run_jobs(
    function: Callable[[Any], Any],
    jobs: Sequence[Job],
    *,
    processes: int = 1,
    scheduler: str | None = None,
    scheduler_folder: Path | None = None,
    scheduler_options: Mapping[str, Any] | None = None,
) -> list[Outcome]:
    """Every job, here (`processes=1`), in `processes` local processes, or on `scheduler`."""
    if processes < 1:
        raise ConfigError(f"--jobs must be at least 1, got {processes}")
    if scheduler is not None:
        return run_on_scheduler(function, jobs, scheduler, Path(scheduler_folder or "."), scheduler_options or {})
    if processes == 1:
        return run_here(function, jobs)
    return run_in_processes(function, jobs, processes)


@dataclass(frozen=True)
class SeedRuns:
    """One row's runs over its seeds: each result (None where the run failed) and a line for each failure."""

    results: list[Any]
    failures: list[str]


def run_by_seed(
    function: Callable[[Any], Any],
    configs: Sequence[Sequence[Any]],
    names: Sequence[str],
    payload: Callable[[Any], Any],
    folder: Path,
    *,
    processes: int = 1,
    scheduler: str | None = None,
    scheduler_options: Mapping[str, Any] | None = None,
) -> list[SeedRuns]:
    """A comparison's runs: `configs[row][k]` (each with `seed` and `output`) as jobs of `function(payload(config))`,
    seed by seed so that a comparison stopped early holds whole seeds of every row; each failure named with its log."""
    seeds = max((len(row) for row in configs), default=0)
    order = [(name, row[k]) for k in range(seeds) for name, row in zip(names, configs, strict=True) if k < len(row)]
    work = [Job(f"{name} seed {c.seed}", Path(c.output), payload(c)) for name, c in order]
    outcomes = run_jobs(function, work, processes=processes, scheduler=scheduler, scheduler_folder=folder / "jobs",
                        scheduler_options=scheduler_options)  # fmt: skip
    by_folder = {outcome.job.folder: outcome for outcome in outcomes}
    runs = []
    for row in configs:
        found = [by_folder[Path(c.output)] for c in row]
        failures = [f"{o.job.name} failed: {o.error}" + (f"; log: {o.log}" if o.log else "") for o in found if not o.ok]
        runs.append(SeedRuns([o.result if o.ok else None for o in found], failures))
    return runs
