"""`--jobs N` worker processes: a killed comparison takes its workers with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cbam.engine.jobs import Job, run_in_processes

ROOT = Path(__file__).resolve().parents[2]


def sleep_with_pid(folder: str) -> None:
    """A job that records its process id, then runs far longer than the test waits."""
    (Path(folder) / "pid").write_text(str(os.getpid()))
    time.sleep(120)


def run_sleepers(root: str) -> None:
    """Two sleeping jobs in two worker processes (the test's parent process runs this)."""
    jobs = [Job(f"job-{i}", Path(root) / f"job-{i}", str(Path(root) / f"job-{i}")) for i in range(2)]
    for job in jobs:
        job.folder.mkdir()
    run_in_processes(sleep_with_pid, jobs, processes=2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_sigterm_to_the_parent_stops_every_worker(tmp_path):
    code = f"from tests.engine.test_jobs import run_sleepers; run_sleepers({str(tmp_path)!r})"
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    pid_files = [tmp_path / f"job-{i}" / "pid" for i in range(2)]
    try:
        assert wait_for(lambda: all(f.is_file() and f.read_text() for f in pid_files), 60), "workers never started"
        workers = [int(f.read_text()) for f in pid_files]
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 128 + signal.SIGTERM
        assert wait_for(lambda: not any(alive(pid) for pid in workers), 10), "workers left training"
    finally:
        parent.kill()


def start_method(_payload: object) -> str:
    import multiprocessing

    return multiprocessing.get_start_method()


def test_a_job_process_starts_its_data_loaders_as_a_shell_run_would(tmp_path):
    # a spawned worker would hand "spawn" to its DataLoaders, which then pickle the dataset (one shared-memory file
    # per tensor: a detection set's boxes ran out of open files)
    import multiprocessing

    jobs = [Job(f"job {k}", tmp_path / str(k), None) for k in range(2)]
    outcomes = run_in_processes(start_method, jobs, 2)
    assert [o.result for o in outcomes] == [multiprocessing.get_all_start_methods()[0]] * 2
