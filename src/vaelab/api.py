"""The Python side of `vaelab eval`: score a run directory, or a model with its run config and
data set, and get back what `vaelab eval --json` writes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaelab.config import RunConfig
from vaelab.data.datasets import ImageDataset
from vaelab.errors import VaelabError


def evaluate(run_or_model: Any, metrics: Sequence[str], *, split: str = "test", checkpoint: str = "final",
             run_config: RunConfig | None = None, dataset: ImageDataset | None = None,
             **options: Any) -> dict[str, dict[str, Any]]:
    """{result: {"value", "stderr", "settings"}} for each of `metrics` (see docs/evaluation.md).

    run_or_model: a run directory (its config, data and `checkpoint` weights are loaded), or a model
    together with `run_config` (its data config says which pixel model the data gets) and, optionally,
    `dataset` (else loaded from run_config.data). options: the fields of EvalOptions (k, seed,
    limit, num_samples, ais_runs, ais_steps, sigma, continuous, observation, convergence_check,
    ais_gradients, iw_precision, iw_compile)."""
    from vaelab.checkpoint import load, load_run_config
    from vaelab.eval.metrics import EvalContext, EvalOptions
    from vaelab.eval.metrics import evaluate as run_metrics
    from vaelab.experiment import load_data

    if isinstance(run_or_model, (str, os.PathLike)):
        run_config = load_run_config(Path(run_or_model))
        model = load(Path(run_or_model), checkpoint=checkpoint)
    elif run_config is None:
        raise VaelabError("evaluate(model, ...) needs run_config= (the data config says how to view the data)")
    else:
        model = run_or_model.eval()
    try:
        eval_options = EvalOptions(**options)
    except TypeError as error:
        raise VaelabError(f"evaluate: {error}") from None
    context = EvalContext(model, run_config, dataset or load_data(run_config.data), split, eval_options)
    results = {name: estimate.to_dict() for name, estimate in run_metrics(context, list(metrics)).items()}
    for result in results.values():
        result["settings"].update(split=split, checkpoint=checkpoint)
    return results
