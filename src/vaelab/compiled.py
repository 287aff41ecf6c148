"""torch.compile for the hot functions of an estimator, with an eager fallback.

Where it pays (benchmarks/eval_speed.py --compile, docs/performance.md): L_k's log p(x|z) of an
MLP VAE at k=5000, where inductor fuses the decoder's bias adds, activations and the Bernoulli
log-density into the matmuls' neighbours instead of writing each intermediate (S*B, 784) tensor
out and reading it back. Compiling costs tens of seconds per input shape, so it is opt-in.

Compiling can fail on a machine without a working C++ compiler, or for a model whose ops inductor
cannot lower; the first such failure warns once and the eager function is used from then on, so an
evaluation never dies because of the optimisation. A genuine error (a shape mismatch) is raised
again by the eager call.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any


class CompiledWithFallback:
    """`function` through torch.compile (inductor); the eager `function` once compiling failed."""

    def __init__(self, function: Callable[..., Any], name: str):
        import torch

        self.function = function
        self.name = name
        self.compiled: Callable[..., Any] | None = torch.compile(function)

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled function."""
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # inductor and dynamo raise many types; eager decides what is real
                self.compiled = None
                reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
                warnings.warn(f"torch.compile of {self.name} failed ({reason}); running it eagerly",
                              RuntimeWarning, stacklevel=2)
        return self.function(*args, **kwargs)


def maybe_compiled(function: Callable[..., Any], name: str, enabled: bool) -> Callable[..., Any]:
    """`function` itself, or when enabled a CompiledWithFallback of it."""
    return CompiledWithFallback(function, name) if enabled else function
