"""vaelab: train, sample, evaluate and compare Variational Autoencoders."""

from vaelab.version import __version__


def load(run_dir, checkpoint: str = "final", device="cpu"):
    """Load a trained model from a run directory: `model = vaelab.load("runs/vae")`."""
    from vaelab.checkpoint import load as _load

    return _load(run_dir, checkpoint=checkpoint, device=device)


def evaluate(run_or_model, metrics=("elbo", "iw"), **options):
    """Score a run directory (or a model, with `run_config=` and `dataset=`) as `vaelab eval` does:
    `vaelab.evaluate("runs/vae", metrics=["iw"], k=1000)` -> {result: {value, stderr, settings}}."""
    from vaelab.api import evaluate as _evaluate

    return _evaluate(run_or_model, metrics, **options)


def compare(models=None, data=None, budget="quick", out="runs/compare", seed=0, data_dir=None, jobs=1):
    """Train and score every model and write the report, as `vaelab compare` does (`jobs` runs at
    a time); returns results.json's content, {model: {metric: {value, stderr, settings}}}."""
    from vaelab.comparison import compare as _compare

    return _compare(models, data=data, budget=budget, out=out, seed=seed, data_dir=data_dir, jobs=jobs)


__all__ = ["__version__", "compare", "evaluate", "load"]
