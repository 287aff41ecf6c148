"""`vaelab compare`: train every model on the same data with matched budgets, score them all with
the same estimators under one stated protocol, and write DIR/report.html, DIR/report.md and
DIR/results.json ({model: {metric: {value, stderr, settings}}}, the `vaelab eval --json` form).

    DIR/runs/NAME/      one `vaelab train` run per model (resumable), its scores and figure tensors
    DIR/figures/*.png   the report's figures
    DIR/summary.json    what the report says besides the numbers (protocol, status, columns, figures)

Each model is trained and scored in its own child process: one failing model is an error in the
table, the rest of the report is still written, and each model's peak memory is its own.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vaelab.comparison import runner
from vaelab.comparison.budget import BUDGETS, Budget, load_budget
from vaelab.comparison.report_data import build_summary, data_row
from vaelab.comparison.runner import ERROR_FILE
from vaelab.errors import VaelabError
from vaelab.experiment import load_data
from vaelab.files import atomic_write_json, make_directory, run_lock

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.json"


def compare(models: Sequence[str] | None = None, data: str | None = None, budget: str = "quick",
            out: str | os.PathLike[str] = "runs/compare", seed: int = 0, data_dir: str | None = None,
            command: str | None = None, jobs: int = 1) -> dict[str, dict[str, Any]]:
    """Train, score and report every model of `budget` (or those named in `models`) on `data`
    (default: the budget's data set), `jobs` runs at a time (each a process of one thread unless
    OMP_NUM_THREADS says otherwise: jobs=2 on 2 cores). Returns results.json's content; raises
    nothing for a model that fails (its error is in summary.json and the report): see `failed(out)`."""
    if jobs < 1:
        raise VaelabError(f"--jobs must be at least 1, got {jobs}")
    plan = _plan(load_budget(budget), models)
    out = Path(out)
    data = data or plan.data
    dataset = load_data(_data_config(data, data_dir))
    plan, skipped = _applicable(plan, dataset)
    make_directory(out)
    with run_lock(out):
        statuses = _run_all(plan, out, data, data_dir, seed, dataset, jobs)
        results = _collect(out, plan, statuses, dataset, seed)
        summary = build_summary(plan, statuses, results, dataset, out, seed,
                                command or f"vaelab.compare(budget={budget!r}, data={data!r})")
        summary["notes"] += skipped
        atomic_write_json(out / RESULTS_FILE, results)
        atomic_write_json(out / SUMMARY_FILE, summary)
        write_report(out)
    return results


def failed(out: str | os.PathLike[str]) -> list[str]:
    """The models of the comparison in `out` that failed."""
    from vaelab.comparison.report_data import read_json

    summary = read_json(Path(out) / SUMMARY_FILE)
    return [name for name, entry in summary["models"].items() if entry["status"] != "ok"]


def write_report(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(Re)write DIR/report.html and DIR/report.md from the saved results, summary and runs."""
    from vaelab.comparison.report_data import draw_figures, read_json, report_flags
    from vaelab.report import write_report as render

    out = Path(out)
    summary, results = read_json(out / SUMMARY_FILE), read_json(out / RESULTS_FILE)
    summary["figures"] = draw_figures(out, summary)
    summary["flags"] = report_flags(results)
    atomic_write_json(out / SUMMARY_FILE, summary)
    return render(out, summary, results)


def _plan(budget: Budget, models: Sequence[str] | None) -> Budget:
    if not models:
        return budget
    unknown = [name for name in models if name not in budget.runs]
    if unknown:
        raise VaelabError(f"unknown model {', '.join(map(repr, unknown))} for --models; the {budget.name} budget "
                          f"has {', '.join(budget.runs)}")
    return budget.with_runs({name: budget.runs[name] for name in models})


def _applicable(plan: Budget, dataset) -> tuple[Budget, list[str]]:
    """The plan without the class-conditional runs when the data has no labels, and a note saying so."""
    from vaelab.registry import get_model_class

    if dataset.num_classes is not None:
        return plan, []
    conditional = [name for name, spec in plan.runs.items() if get_model_class(spec.model).conditional]
    runs = {name: spec for name, spec in plan.runs.items() if name not in conditional}
    notes = [f"{', '.join(conditional)} left out: class-conditional models need labels, and {dataset.name} has none."]
    return plan.with_runs(runs), notes if conditional else []


def _data_config(data: str, data_dir: str | None):
    from vaelab.config import DataConfig

    return DataConfig(name=data, data_dir=data_dir, binarize="none")


def _run_all(plan: Budget, out: Path, data: str, data_dir: str | None, seed: int, dataset,
             jobs: int) -> dict[str, dict[str, Any]]:
    """Every run's status, in the plan's order; `jobs` child processes at a time (threads only wait),
    started in plan.start_order()."""
    if jobs == 1:
        return {name: _run(name, index, plan, out, data, data_dir, seed, dataset)
                for index, name in enumerate(plan.runs, 1)}
    if dataset.num_classes:  # trained once here, not by several children at the same time
        from vaelab.eval.classifier import load_or_train_classifier

        load_or_train_classifier(dataset)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        index = {name: number for number, name in enumerate(plan.runs, 1)}
        futures = {name: pool.submit(_run, name, index[name], plan, out, data, data_dir, seed, dataset)
                   for name in plan.start_order()}
        return {name: futures[name].result() for name in plan.runs}


def _say(line: str) -> None:
    """One progress line on stderr in a single write: print() writes the text and its newline
    separately, so the lines of two runs starting together would run into each other."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _run(name: str, index: int, plan: Budget, out: Path, data: str, data_dir: str | None, seed: int,
         dataset) -> dict[str, Any]:
    """Train and score one run in a child process; its status, error and peak memory."""
    job = runner.Job(plan.runs[name], out / "runs" / name, data, data_dir, seed, plan.eval_of(name))
    _say(f"[{index}/{len(plan.runs)}] {name} ({job.spec.model}): training and scoring -> {job.run_dir}")
    started = time.perf_counter()
    status, child_maxrss_kib = _in_child(job)
    error = None if status == 0 else _read_error(job.run_dir, status)
    peak_kib = runner.recorded_peak_memory_kib(job.run_dir) if error is None else None
    how = "peak resident set of the run's child process (training and scoring): its VmHWM"
    if peak_kib is None:  # no /proc: ru_maxrss, which Linux carries over from this process (an upper bound)
        peak_kib = child_maxrss_kib
        how = "ru_maxrss of the run's child process (an upper bound: it can include the parent's)"
    _say(f"[{index}/{len(plan.runs)}] {name}: {'done' if error is None else 'FAILED: ' + error} "
         f"({time.perf_counter() - started:.0f} s)")
    return {"status": "ok" if error is None else "failed", "error": error, "peak_memory_mb": peak_kib / 1024,
            "peak_memory_measured": how,
            "run_dir": str(job.run_dir.relative_to(out)), "model": job.spec.model,
            "settings": " ".join(job.spec.overrides())}


def _in_child(job: runner.Job) -> tuple[int, int]:
    """Run the job in a fresh interpreter (vaelab.comparison.child): (exit status, peak resident
    memory in KiB). Not a fork: a forked copy of a process that has run OpenMP threads can hang."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    job_file = job.run_dir / "compare_job.json"
    atomic_write_json(job_file, {"spec": dataclasses.asdict(job.spec), "run_dir": str(job.run_dir), "data": job.data,
                                 "data_dir": job.data_dir, "seed": job.seed, "budget": dataclasses.asdict(job.budget)})
    sys.stdout.flush()
    sys.stderr.flush()
    process = subprocess.Popen([sys.executable, "-m", "vaelab.comparison.child", str(job_file)])
    try:
        _, wait_status, usage = os.wait4(process.pid, 0)
    except KeyboardInterrupt:
        process.wait()
        raise
    process.returncode = os.waitstatus_to_exitcode(wait_status)
    return process.returncode, usage.ru_maxrss


def _read_error(run_dir: Path, status: int) -> str:
    path = run_dir / ERROR_FILE
    if path.is_file():
        return path.read_text().strip()
    return f"the run's process ended with status {status}"


def _collect(out: Path, plan: Budget, statuses: dict[str, dict[str, Any]], dataset, seed: int) -> dict[str, Any]:
    """results.json: each model's metrics (and its peak memory), then the data row."""
    results: dict[str, Any] = {}
    for name, status in statuses.items():
        if status["status"] != "ok":
            continue
        job = runner.Job(plan.runs[name], out / status["run_dir"], "", None, seed, plan.eval_of(name))
        metrics = runner.score(job, dataset)
        metrics["peak_memory_mb"] = {"value": round(status["peak_memory_mb"], 1), "stderr": None,
                                     "settings": {"measured": status["peak_memory_measured"]}}
        results[name] = metrics
    results["data"] = data_row(dataset, plan.eval, seed)
    return results


def command_line(argv: Sequence[str]) -> str:
    return "vaelab " + " ".join(shlex.quote(arg) for arg in argv)


__all__ = ["BUDGETS", "compare", "failed", "write_report"]
