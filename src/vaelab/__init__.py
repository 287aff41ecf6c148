"""vaelab: train, sample, evaluate and compare Variational Autoencoders."""

from vaelab.version import __version__


def load(run_dir, checkpoint: str = "final", device="cpu"):
    """Load a trained model from a run directory: `model = vaelab.load("runs/vae")`."""
    from vaelab.checkpoint import load as _load

    return _load(run_dir, checkpoint=checkpoint, device=device)


__all__ = ["__version__", "load"]
