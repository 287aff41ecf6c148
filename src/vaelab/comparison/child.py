"""`python -m vaelab.comparison.child JOB.json`: one run of the comparison in a fresh interpreter
(a forked copy of a process that has used OpenMP threads can deadlock in its first parallel op).
Exit status 0 on success; otherwise the error, one line, is in the run directory's ERROR_FILE."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from vaelab.comparison.runner import ERROR_FILE


def main(job_file: str) -> int:
    import torch

    from vaelab.comparison.budget import EvalBudget, RunSpec
    from vaelab.comparison.runner import Job, figure_tensors, record_peak_memory, score, train
    from vaelab.config import DataConfig
    from vaelab.experiment import load_data

    if "OMP_NUM_THREADS" not in os.environ:
        # One thread per run unless asked otherwise: the comparison's small networks ran several
        # times faster on one thread than on two competing for a loaded 2-core machine.
        torch.set_num_threads(1)
    values = json.loads(Path(job_file).read_text())
    job = Job(RunSpec(**values["spec"]), Path(values["run_dir"]), values["data"], values["data_dir"],
              values["seed"], EvalBudget(**values["budget"]))
    try:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        (job.run_dir / ERROR_FILE).unlink(missing_ok=True)
        dataset = load_data(DataConfig(name=job.data, data_dir=job.data_dir, binarize="none"))
        train(job)
        score(job, dataset)
        figure_tensors(job, dataset)
        record_peak_memory(job.run_dir)
    except BaseException as error:  # everything becomes the run's error line
        write_error(job.run_dir, error)
        return 130 if isinstance(error, KeyboardInterrupt) else 1
    return 0


def write_error(run_dir: Path, error: BaseException) -> None:
    from vaelab.errors import VaelabError

    message = str(error) if isinstance(error, VaelabError) else f"{type(error).__name__}: {error}"
    if os.environ.get("VAELAB_DEBUG") == "1":
        traceback.print_exc()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).write_text((message.splitlines() or [type(error).__name__])[0])
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
