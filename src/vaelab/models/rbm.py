"""The Bernoulli-Bernoulli restricted Boltzmann machine, trained by contrastive divergence.

Hinton (2010), "A Practical Guide to Training Restricted Boltzmann Machines", section 2:

    E(v, h) = -b.v - c.h - v'Wh                       energy
    p(v, h) = exp(-E(v, h)) / Z
    p(h_j = 1 | v) = sigmoid(c_j + (v W)_j)
    p(v_i = 1 | h) = sigmoid(b_i + (W h)_i)
    F(v) = -b.v - sum_j softplus(c_j + (v W)_j)       free energy, p(v) = exp(-F(v)) / Z (section 16.1)

The log-likelihood gradient for W is <v h'>_data - <v h'>_model. Since log p(v) = -F(v) - log Z and
d log Z / d theta = -E_p(v)[dF/d theta], the gradient of -log p(v) is

    dF(v_data)/d theta - E_p(v)[dF(v)/d theta].

Contrastive divergence (Hinton 2002) replaces the model expectation by particles v_model drawn with
k steps of block Gibbs sampling started at the data (CD-k); persistent CD (Tieleman 2008) starts
them where the previous update left its chains. So the autograd surrogate

    mean F(v_data) - mean F(v_model.detach())

has exactly the CD gradient: for W it is -(<v p(h|v)'>_data - <v p(h|v)'>_model), the textbook
update with hidden probabilities in place of hidden samples (Hinton 2010, section 3). The value of
that surrogate is the free-energy gap; the reported "loss" is only the monitored reconstruction
error of one up-down pass, which the RBM does not minimize (MISSION section 2; Hinton 2010, section 5).

Pixels in [0, 1] that are not binary are used as the probabilities of binary visible units (the
free energy and the conditionals take them as they are); train with binarize=dynamic or fixed to
fit the binary model the energy describes.

With optimizer=sgd momentum=0 weight_decay=0, persistent=true cd_k=1 and num_chains equal to the
batch size, one update is scikit-learn's BernoulliRBM update (`_fit`): W += lr/B (v'p(h|v) -
v~'p(h|v~)) and the same for the biases, all from the parameters before the update (the test
suite checks one update against sklearn's own code). The chains differ only in where they are cut:
sklearn stores the hidden sample drawn from p(h|v~) before the update, vaelab the visible state v~.
TrainConfig.momentum defaults to 0.9, which wrecks PCD from the first update: make_optimizers
warns above 0.5 (docs/models/rbm.md has the measurements).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.data.loader import Batch
from vaelab.errors import ConfigError, VaelabError
from vaelab.models.base import GenerativeModel
from vaelab.models.training_graph import Node, TrainingGraph
from vaelab.noise import draw_bernoulli

MAX_ENUMERATED_UNITS = 24  # log_partition_exact sums over 2^n states of the smaller layer
# Momentum above this draws a warning: Hinton (2010, section 9) starts at 0.5 and raises it to 0.9
# only once the weights have settled, and 0.9 from the first update (TrainConfig's default for sgd)
# wrecked PCD-1 on Fashion-MNIST (100 to 120 nats at lr 0.05, docs/models/rbm.md).
MAX_QUIET_MOMENTUM = 0.5


@dataclass
class RBMConfig:
    num_hidden: int = 500
    cd_k: int = 1  # Gibbs steps of the negative phase (CD-k; PCD-k when persistent)
    persistent: bool = False  # persistent contrastive divergence (Tieleman 2008)
    num_chains: int = 128  # PCD fantasy particles (the default batch_size; sklearn uses batch_size); in the checkpoint
    init_std: float = 0.01  # W ~ N(0, init_std^2), biases 0 (Hinton 2010, section 8)
    burn_in: int = 1000  # Gibbs steps before sample() returns
    thin: int = 1  # gibbs_chain keeps every thin-th state
    sample_start: Literal["bias", "uniform"] = "bias"  # chains start at Bernoulli(sigmoid(b)) or Bernoulli(1/2)


def momentum_warning(optimizer: torch.optim.Optimizer) -> str | None:
    """The warning for an SGD or RMSprop optimizer whose momentum exceeds MAX_QUIET_MOMENTUM, else None."""
    if not isinstance(optimizer, (torch.optim.SGD, torch.optim.RMSprop)):
        return None
    momentum = max(float(group.get("momentum", 0.0)) for group in optimizer.param_groups)
    if momentum <= MAX_QUIET_MOMENTUM:
        return None
    name = type(optimizer).__name__
    return (f"RBM trained by {name} with momentum={momentum:g}: momentum this high from the first update "
            "wrecked PCD-1 on Fashion-MNIST (0.9 at lr 0.05: test log-likelihood -384 and -428 nats for "
            "two seeds, against -268 and -304 with momentum=0; see docs/models/rbm.md). "
            "TrainConfig.momentum defaults to 0.9: pass momentum=0 for plain SGD, or "
            f"at most {MAX_QUIET_MOMENTUM:g} (Hinton 2010, section 9)")


def binary_states(num_units: int, start: int = 0, stop: int | None = None,
                  dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """States start .. stop-1 of all 2^num_units binary vectors, unit i = bit i: (stop - start, num_units)."""
    stop = 2 ** num_units if stop is None else stop
    index = torch.arange(start, stop, device=device)  # (S,)
    bits = torch.arange(num_units, device=device)  # (n,)
    return ((index[:, None] >> bits) & 1).to(dtype)


class RBM(GenerativeModel):
    config_class = RBMConfig
    # The trainer descends the CD surrogate; "loss" (the reconstruction error) is only monitored.
    objective = "free_energy_gap"
    reconstruction_description = ("one up-down Gibbs pass, mean-field: p(v | h = p(h|x)), probabilities "
                                  "in place of samples")
    stochastic_reconstruction = False
    persistent_chains: Tensor  # (M, D) buffer, registered with persistent=True; declared for the type checker

    def __init__(self, config: RBMConfig, image_shape: Sequence[int], num_classes: int | None = None):
        super().__init__(config, image_shape, num_classes)
        config = self.config
        if min(config.num_hidden, config.cd_k, config.num_chains, config.burn_in, config.thin) < 1:
            raise ConfigError("num_hidden, cd_k, num_chains, burn_in and thin must be at least 1")
        if config.init_std < 0:
            raise ConfigError(f"init_std must be non-negative, got {config.init_std}")
        self.num_visible = math.prod(self.image_shape)
        self.weight = nn.Parameter(config.init_std * torch.randn(self.num_visible, config.num_hidden))  # (D, H)
        self.visible_bias = nn.Parameter(torch.zeros(self.num_visible))  # b (D,)
        self.hidden_bias = nn.Parameter(torch.zeros(config.num_hidden))  # c (H,)
        if config.persistent:
            # The fantasy particles are state of the model: a buffer, so checkpoints carry them and
            # --resume continues the same chains.
            start = torch.bernoulli(torch.full((config.num_chains, self.num_visible), 0.5))
            self.register_buffer("persistent_chains", start)  # (M, D)

    @classmethod
    def prefers_binary_pixels(cls, config: RBMConfig) -> bool:
        return True  # the energy is one of binary visible units

    # -- the energy and its conditionals -----------------------------------------------------

    def _flat(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) or vectors (B, D) -> (B, D)."""
        return x.reshape(len(x), self.num_visible)

    def energy(self, v: Tensor, h: Tensor) -> Tensor:
        """E(v, h) = -b.v - c.h - v'Wh: v (B, C, H, W) or (B, D), h (B, H) -> (B,)."""
        v = self._flat(v)
        return -(v @ self.visible_bias) - (h @ self.hidden_bias) - ((v @ self.weight) * h).sum(-1)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -b.v - sum_j softplus(c_j + (v W)_j), so p(v) = exp(-F(v)) / Z: (B, ...) -> (B,)."""
        v = self._flat(v)
        return -(v @ self.visible_bias) - F.softplus(v @ self.weight + self.hidden_bias).sum(-1)

    def hidden_probs(self, v: Tensor) -> Tensor:
        """p(h_j = 1 | v) = sigmoid(c_j + (v W)_j): (B, ...) -> (B, H)."""
        return torch.sigmoid(self._flat(v) @ self.weight + self.hidden_bias)

    def visible_probs(self, h: Tensor) -> Tensor:
        """p(v_i = 1 | h) = sigmoid(b_i + (W h)_i): (B, H) -> (B, D)."""
        return torch.sigmoid(h @ self.weight.t() + self.visible_bias)

    def gibbs_step(self, v: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One block Gibbs sweep h ~ p(h|v), v' ~ p(v|h): v (B, D) -> (v' (B, D), p(v'|h) (B, D))."""
        h = draw_bernoulli(self.hidden_probs(v), generator)  # (B, H)
        v_probs = self.visible_probs(h)  # (B, D)
        return draw_bernoulli(v_probs, generator), v_probs

    # -- the exact partition function of a small RBM -----------------------------------------

    @torch.no_grad()
    def log_partition_exact(self, max_units: int = MAX_ENUMERATED_UNITS, chunk: int = 2 ** 14) -> Tensor:
        """log Z by enumerating the smaller layer, in float64, as Salakhutdinov & Murray (2008) do for
        their small RBMs: Z = sum_h exp(c.h) prod_i (1 + exp(b_i + (W h)_i)), or sum_v exp(-F(v)).
        A 0-d tensor; the reference the AIS estimate is checked against."""
        weight, b, c = self.weight.double(), self.visible_bias.double(), self.hidden_bias.double()
        enumerate_hidden = self.config.num_hidden <= self.num_visible
        num_units = self.config.num_hidden if enumerate_hidden else self.num_visible
        if num_units > max_units:
            raise VaelabError(f"log_partition_exact enumerates 2^{num_units} states; it is limited to "
                              f"{max_units} units in the smaller layer (use AIS for larger RBMs)")

        def unnormalized_log_marginal(states: Tensor) -> Tensor:  # (S, n) -> (S,)
            if enumerate_hidden:  # log sum_v exp(-E(v, h)) = c.h + sum_i softplus(b_i + (W h)_i)
                return states @ c + F.softplus(states @ weight.t() + b).sum(-1)
            return states @ b + F.softplus(states @ weight + c).sum(-1)  # -F(v)

        parts = [torch.logsumexp(unnormalized_log_marginal(
                     binary_states(num_units, start, min(start + chunk, 2 ** num_units), device=weight.device)), 0)
                 for start in range(0, 2 ** num_units, chunk)]
        return torch.logsumexp(torch.stack(parts), 0)

    # -- training: contrastive divergence --------------------------------------------------

    @torch.no_grad()
    def run_chains(self, v: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """`steps` block Gibbs sweeps from v (B, D); returns the last binary state (B, D)."""
        for _ in range(steps):
            v, _ = self.gibbs_step(v, generator)
        return v

    @torch.no_grad()
    def negative_particles(self, v_data: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The model-side particles of the CD gradient (binary states): cd_k Gibbs sweeps from the data
        (CD-k, Hinton 2002) or from the persistent chains, which then keep the new state (PCD,
        Tieleman 2008)."""
        if not self.config.persistent:
            return self.run_chains(v_data, self.config.cd_k, generator)  # (B, D)
        v_model = self.run_chains(self.persistent_chains, self.config.cd_k, generator)  # (M, D)
        self.persistent_chains.copy_(v_model)
        return v_model

    @torch.no_grad()
    def reconstruction_error(self, v: Tensor) -> Tensor:
        """Mean squared error per pixel of one mean-field up-down pass (monitored, not minimized)."""
        return F.mse_loss(self.visible_probs(self.hidden_probs(v)), self._flat(v))

    def _terms(self, v_data: Tensor, v_model: Tensor) -> dict[str, Tensor]:
        free_energy_data = self.free_energy(v_data).mean()
        gap = free_energy_data - self.free_energy(v_model.detach()).mean()  # gradient: the CD gradient
        return {"loss": self.reconstruction_error(v_data), "free_energy_gap": gap,
                "free_energy": free_energy_data.detach()}

    def loss(self, batch: Batch, step: int | None = None) -> dict[str, Tensor]:
        """Terms of one CD/PCD update: "free_energy_gap" carries the CD gradient; "loss" is the
        reconstruction error (what the trainer logs and selects checkpoints by). Under PCD this
        advances the persistent chains."""
        v_data = self._flat(batch.x)  # (B, D)
        return self._terms(v_data, self.negative_particles(v_data))

    def make_optimizers(self, build_optimizer) -> list[torch.optim.Optimizer]:
        """The train config's optimizer; its weight_decay applies to W only, not to the biases
        (Hinton 2010, section 10). Warns (`momentum_warning`) when SGD or RMSprop momentum is above
        MAX_QUIET_MOMENTUM: TrainConfig.momentum defaults to 0.9, and that from the first update
        ruins PCD (docs/models/rbm.md); plain SGD is momentum=0."""
        optimizer = build_optimizer([{"params": [self.weight]},
                                     {"params": [self.visible_bias, self.hidden_bias], "weight_decay": 0.0}])
        message = momentum_warning(optimizer)
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)
        return [optimizer]

    @torch.no_grad()
    def validation_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Reconstruction error, mean free energy and a CD-k free-energy gap from the held-out data;
        the persistent chains are left alone."""
        v_data = self._flat(batch.x)
        return self._terms(v_data, self.run_chains(v_data, self.config.cd_k))

    # -- generation ------------------------------------------------------------------------

    def initial_visible(self, num_chains: int, generator: torch.Generator | None = None) -> Tensor:
        """Random binary starting states (num_chains, D): Bernoulli(sigmoid(b)) (sample_start=bias,
        the RBM without its weights) or Bernoulli(1/2) (sample_start=uniform)."""
        if self.config.sample_start == "bias":
            probs = torch.sigmoid(self.visible_bias.detach()).expand(num_chains, -1)
        else:
            probs = torch.full((num_chains, self.num_visible), 0.5, device=self.weight.device)
        return draw_bernoulli(probs, generator)

    @torch.no_grad()
    def gibbs_chain(self, v0: Tensor, steps: int, generator: torch.Generator | None = None,
                    thin: int | None = None, mean: bool = True) -> Tensor:
        """Run block Gibbs sampling from v0 (n, C, H, W) for `steps` sweeps and keep every thin-th
        state: (steps // thin, n, C, H, W), visible probabilities (mean=True) or binary states."""
        thin = self.config.thin if thin is None else thin
        if steps < 0 or thin < 1:
            raise VaelabError(f"gibbs_chain needs steps >= 0 and thin >= 1, got steps={steps}, thin={thin}")
        v = self._flat(v0).to(self.weight.dtype)  # (n, D)
        kept = []
        for step in range(1, steps + 1):
            v, v_probs = self.gibbs_step(v, generator)
            if step % thin == 0:
                kept.append(v_probs if mean else v)
        states = torch.stack(kept) if kept else v.new_zeros(0, len(v), self.num_visible)
        return states.view(len(states), len(v), *self.image_shape)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, burn_in: int | None = None,
               mean: bool = True, **kwargs) -> Tensor:
        """num_samples independent chains from initial_visible, burn_in Gibbs sweeps (default: the
        config's); returns p(v|h) of the last sweep (mean=True) or its binary state: (n, C, H, W)."""
        burn_in = self.config.burn_in if burn_in is None else burn_in
        if burn_in < 1:
            raise VaelabError(f"burn_in must be at least 1, got {burn_in}")
        v = self.initial_visible(num_samples, generator)  # (n, D)
        return self.gibbs_chain(v, burn_in, generator, thin=burn_in, mean=mean)[0]

    @torch.no_grad()
    def sample_chain(self, num_chains: int, steps: int, generator: torch.Generator | None = None,
                     mean: bool = True) -> Tensor:
        """Consecutive states of num_chains Gibbs chains started as in sample(), keeping every
        thin-th sweep (the config's): (steps, num_chains, C, H, W), for `vaelab sample --chain`."""
        v = self.initial_visible(num_chains, generator)  # (n, D)
        return self.gibbs_chain(v, steps * self.config.thin, generator, mean=mean)

    @classmethod
    def training_graph(cls, config: RBMConfig | None = None) -> TrainingGraph:
        """Contrastive divergence: the data's free energy against that of Gibbs samples; the
        reconstruction error is only monitored."""
        config = config or cls.config_class()
        chain = (f"PCD-{config.cd_k}: persistent\nGibbs chains" if config.persistent
                 else f"CD-{config.cd_k}: Gibbs\nchain from v")
        # Nodes are declared top-down within each layer of the drawing.
        nodes = (Node("v", "v (data)", "input"), Node("rbm", "RBM\nE(v,h) = -b.v - c.h - v'Wh", "network"),
                 Node("h", "h ~ p(h|v)", "sampled"), Node("gibbs", chain, "noise"),
                 Node("v_model", "v~ (model sample)", "sampled"),
                 Node("cd", "F(v) - F(v~)\n(CD gradient)", "cost"),
                 Node("reconstruction", "reconstruction error\n(monitored only)", "output"))
        edges = (("v", "rbm"), ("rbm", "h"), ("h", "gibbs"), ("gibbs", "v_model"), ("v_model", "cd"),
                 ("v", "cd"), ("h", "reconstruction"), ("v", "reconstruction"))
        return TrainingGraph(f"{cls.__name__} ({config.num_hidden} hidden)", nodes, edges)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, label: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """One up-down pass with probabilities both ways, p(v | h = p(h|x)): (B, C, H, W) -> (B, C, H, W)."""
        return self.visible_probs(self.hidden_probs(x)).view(len(x), *self.image_shape)
