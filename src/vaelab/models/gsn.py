"""The Generative Stochastic Network (GSN) trained with walkback.

Bengio, Thibodeau-Laufer, Alain & Yosinski 2014, "Deep Generative Stochastic Networks Trainable by
Backprop" (ICML; Fig. 3, right, and the MNIST experiment), with the walkback training of Bengio,
Yao, Alain & Vincent 2013, "Generalized Denoising Auto-Encoders as Generative Models" (NIPS).

The network is a denoising auto-encoder whose computational graph is the unrolled Gibbs-like update
of a deep Boltzmann machine: layers h^0 = X, h^1, ..., h^K with tied weights W_i between h^i and
h^{i+1}. One *walkback step* (one "full update" of the 2014 paper's Fig. 3) updates the odd layers,
then the even ones, each from its neighbours:

    h^i <- f(h^{i-1} W_{i-1} + h^{i+1} W_i^T + b_i + n_pre) + n_post     hidden layers, n ~ N(0, s^2)
    P(X | h^1) = sigmoid(h^1 W_0^T + b_0)                                  the visible layer

after which X is *sampled* from P(X | h^1) (Bernoulli) and corrupted again (salt-and-pepper) before
the next step. Training corrupts the clean x, starts the hidden layers at zero, runs `walkbacks`
steps (2K by default, as in the paper, so the top layer's information reaches X) and minimizes the
sum over steps of the reconstruction cost of the *clean* x (the walkback cost; 2014 paper, Fig. 3:
"the sum over all steps of log-likelihoods of target X = x0 under the reconstruction distribution"):

    L(x) = sum_{t=1}^{T} BCE(x, P_t(X | ...)),   BCE summed over pixels, averaged over the batch.

The samples drawn inside the graph carry no gradient (as in the reference Theano code, yaoli/GSN,
whose Bernoulli draws are not differentiable); gradients flow through the hidden layers across
steps. Generation runs the same stochastic transition as a Markov chain: corrupt, reconstruct,
sample, repeat, with the hidden layers as part of the chain's state.

Defaults follow the paper's MNIST GSN (2 x 1500 tanh, salt-and-pepper 0.4, Gaussian noise with
standard deviation 2 before and after the hidden activations, 2K = 4 walkback steps) and its
reference code, which leaves the first hidden layer noiseless (`noiseless_first_hidden`). With a
single hidden layer and walkbacks > 1 this is the walkback-trained denoising auto-encoder of the
2013 paper (set noiseless_first_hidden=false to inject noise in that layer). The original code
averages the BCE over pixels and trains by SGD (lr 0.25, momentum 0.5); here the BCE is summed over
pixels (nats per image, like every vaelab model) and the optimizer is the train config's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.data.datasets import Split
from vaelab.data.loader import Batch
from vaelab.errors import ConfigError, VaelabError
from vaelab.models.base import GenerativeModel
from vaelab.models.blocks import activation
from vaelab.models.training_graph import Node, TrainingGraph
from vaelab.noise import draw_normal, draw_uniform

CLUSTER_RANDOM_STATE = 0  # k-means of chain_init=clusters: the same centroids for the same training images


@dataclass
class GSNConfig:
    hidden: tuple[int, ...] = (1500, 1500)  # widths of h^1..h^K
    activation: str = "tanh"  # hidden units: tanh, sigmoid, or any name in blocks.ACTIVATIONS
    input_noise: Literal["salt_and_pepper", "gaussian", "masking"] = "salt_and_pepper"
    input_noise_level: float = 0.4  # salt_and_pepper/masking: fraction of pixels hit; gaussian: std
    hidden_noise_std: float = 2.0  # Gaussian noise added before and after each hidden activation
    noiseless_first_hidden: bool = True  # reference code (yaoli/GSN): no noise in h^1
    walkbacks: int | None = None  # walkback steps unrolled in training; None: 2 * len(hidden)
    sample_visible: bool = True  # sample X ~ P(X|h) between steps (False: pass the mean on)
    sample_burn_in: int = 100  # chain steps before sample() returns a state
    # chain start: Bernoulli(marginal pixel means), Bernoulli(a k-means centroid of the training
    # images, drawn by cluster size), or Bernoulli(1/2)
    chain_init: Literal["pixel_means", "clusters", "noise"] = "pixel_means"
    chain_init_clusters: int = 50  # k-means clusters for chain_init=clusters


class GSN(GenerativeModel):
    """A deep GSN: tied weights W_i between layers h^i and h^{i+1} (h^0 = X, flattened pixels).

    The weights are plain parameters rather than blocks.mlp stacks because each W_i is used twice
    per step (upward as W_i, downward as W_i^T) and a middle layer sums both neighbours' inputs."""

    config_class = GSNConfig
    reconstruction_description = ("one stochastic corrupt-encode-decode step: input corruption and hidden "
                                  "noise, one walkback step from zero hidden layers, P(X | h^1); seeded")
    stochastic_reconstruction = True
    pixel_means: Tensor  # (n_0,) buffer registered in __init__; declared for the type checker
    cluster_means: Tensor  # (K, n_0) and (K,), registered with chain_init=clusters
    cluster_weights: Tensor

    def __init__(self, config: GSNConfig, image_shape: Sequence[int], num_classes: int | None = None):
        super().__init__(config, image_shape, num_classes)
        config = self.config
        self._check(config)
        self.sizes = [math.prod(self.image_shape), *config.hidden]  # n_0 (pixels), n_1, ..., n_K
        self.act = activation(config.activation)
        # W_i: (n_i, n_{i+1}), uniform in +-sqrt(6 / (n_i + n_{i+1})) as in the reference code; b_i = 0.
        self.weights = nn.ParameterList(
            nn.Parameter(_glorot_uniform(self.sizes[i], self.sizes[i + 1])) for i in range(len(config.hidden)))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in self.sizes)
        # The training images' marginal pixel means (fitted by after_training): where chains start.
        self.register_buffer("pixel_means", torch.full((self.sizes[0],), 0.5))
        if config.chain_init == "clusters":  # k-means of the training images, fitted by after_training
            clusters = config.chain_init_clusters
            self.register_buffer("cluster_means", torch.full((clusters, self.sizes[0]), 0.5))  # (K, n_0)
            self.register_buffer("cluster_weights", torch.full((clusters,), 1.0 / clusters))  # (K,)

    @classmethod
    def prefers_binary_pixels(cls, config: GSNConfig) -> bool:
        return True  # the reconstruction distribution P(X | h) is Bernoulli

    @staticmethod
    def _check(config: GSNConfig) -> None:
        if not config.hidden or min(config.hidden) < 1:
            raise ConfigError("hidden must list at least one positive layer width for a GSN")
        if config.walkbacks is not None and config.walkbacks < 1:
            raise ConfigError(f"walkbacks must be at least 1 (or null for 2 * len(hidden)), got {config.walkbacks}")
        if config.input_noise != "gaussian" and not 0.0 <= config.input_noise_level <= 1.0:
            raise ConfigError(f"input_noise_level is a probability for {config.input_noise}, got "
                              f"{config.input_noise_level}")
        if config.input_noise_level < 0 or config.hidden_noise_std < 0:
            raise ConfigError("input_noise_level and hidden_noise_std must be non-negative")
        if config.chain_init_clusters < 1:
            raise ConfigError(f"chain_init_clusters must be at least 1, got {config.chain_init_clusters}")
        if config.sample_burn_in < 0:
            raise ConfigError(f"sample_burn_in must be non-negative, got {config.sample_burn_in}")
        activation(config.activation)  # an unknown name is a ConfigError now, not at the first step

    @property
    def num_layers(self) -> int:
        """K, the number of hidden layers."""
        return len(self.config.hidden)

    @property
    def num_walkbacks(self) -> int:
        """Walkback steps in the training graph: the config's, or 2K as in the 2014 paper's MNIST GSN
        (enough steps for the top layer's signal to reach X and come back)."""
        return self.config.walkbacks if self.config.walkbacks is not None else 2 * self.num_layers

    # -- noise -------------------------------------------------------------------------------------

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The input corruption C(X~ | X), x (B, D) -> (B, D).

        salt_and_pepper: each pixel with probability `level` is replaced by 0 or 1 with equal odds
        (the papers' MNIST noise); masking: set to 0 with probability `level`; gaussian: x + level * eps."""
        level, kind = self.config.input_noise_level, self.config.input_noise
        if level == 0:
            return x
        if kind == "gaussian":
            return x + level * draw_normal(x.shape, generator, like=x)
        hit = draw_uniform(x.shape, generator, like=x) < level  # (B, D)
        if kind == "masking":
            return x.masked_fill(hit, 0.0)
        salt = (draw_uniform(x.shape, generator, like=x) < 0.5).to(x.dtype)  # (B, D) the value a hit pixel takes
        return torch.where(hit, salt, x)

    def _hidden_noise(self, h: Tensor, layer: int, generator: torch.Generator | None) -> Tensor:
        std = self.config.hidden_noise_std
        if std == 0 or (layer == 1 and self.config.noiseless_first_hidden):
            return h
        return h + std * draw_normal(h.shape, generator, like=h)

    # -- one walkback step (the 2014 paper, Fig. 3) --------------------------------------------------

    def _pre_activation(self, layers: list[Tensor], i: int) -> Tensor:
        """b_i + h^{i-1} W_{i-1} (from below) + h^{i+1} W_i^T (from above, tied weights): (B, n_i)."""
        total = self.biases[i]
        if i > 0:
            total = total + layers[i - 1] @ self.weights[i - 1]
        if i < self.num_layers:
            total = total + layers[i + 1] @ self.weights[i].T
        return total

    def _update_hidden(self, layers: list[Tensor], i: int, generator: torch.Generator | None) -> None:
        """h^i <- f(a + n_pre) + n_post, noise N(0, hidden_noise_std^2) before and after the activation."""
        pre = self._hidden_noise(self._pre_activation(layers, i), i, generator)
        layers[i] = self._hidden_noise(self.act(pre), i, generator)

    def _update_visible(self, layers: list[Tensor], generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """P(X | h^1) = sigmoid(h^1 W_0^T + b_0); X ~ P is sampled, corrupted and becomes h^0.

        Returns the logits of P (B, D) and the uncorrupted sample (B, D)."""
        logits = self._pre_activation(layers, 0)
        probs = torch.sigmoid(logits)
        if self.config.sample_visible:
            # Bernoulli draw, no gradient
            x = (draw_uniform(probs.shape, generator, like=probs) < probs).to(probs.dtype)
        else:
            x = probs  # the mean goes on, and so does its gradient
        layers[0] = self.corrupt(x, generator)
        return logits, x

    def walkback_step(self, layers: list[Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One full update of all layers, in place: the odd layers, then the even ones (X among them).

        layers: [h^0 (B, n_0) the corrupted X, h^1 (B, n_1), ..., h^K]. Returns `_update_visible`'s
        (logits of P(X | ...), sampled X)."""
        for i in range(1, self.num_layers + 1, 2):
            self._update_hidden(layers, i, generator)
        visible = self._update_visible(layers, generator)  # X = h^0, the first even layer
        for i in range(2, self.num_layers + 1, 2):
            self._update_hidden(layers, i, generator)
        return visible

    def initial_layers(self, x: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """[C(x) (B, n_0), zeros (B, n_1), ..., zeros (B, n_K)]: x corrupted, the hidden layers at zero."""
        x = x.flatten(start_dim=1)
        zeros = [x.new_zeros(x.shape[0], n) for n in self.sizes[1:]]
        return [self.corrupt(x, generator), *zeros]

    # -- training ------------------------------------------------------------------------------------

    def walkback_costs(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """BCE(x, P_t(X | ...)) of the clean x at each walkback step t: x (B, C, H, W) -> (T, B)."""
        target = x.flatten(start_dim=1)  # (B, D)
        layers = self.initial_layers(x, generator)
        costs = []
        for _ in range(self.num_walkbacks):
            logits, _ = self.walkback_step(layers, generator)
            costs.append(F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1))
        return torch.stack(costs)

    def loss(self, batch: Batch, step: int | None = None) -> dict[str, Tensor]:
        """The walkback cost: sum over the T steps of the BCE against the clean x (summed over
        pixels), averaged over the batch. "reconstruction" is the first step's BCE alone, the plain
        denoising cost; "last_reconstruction" the T-th step's."""
        costs = self.walkback_costs(batch.x)  # (T, B)
        return {"loss": costs.sum(0).mean(), "reconstruction": costs[0].mean(),
                "last_reconstruction": costs[-1].mean()}

    @torch.no_grad()
    def after_training(self, train_split: Split) -> None:
        """Fit where chains start: the marginal pixel means of the training images and, with
        chain_init=clusters, their k-means centroids and cluster sizes."""
        images = train_split.images.flatten(start_dim=1)  # (N, n_0)
        self.pixel_means.copy_(images.mean(0).to(self.pixel_means))
        if self.config.chain_init == "clusters":
            means, weights = fit_clusters(images, self.config.chain_init_clusters)
            self.cluster_means.copy_(means.to(self.cluster_means))
            self.cluster_weights.copy_(weights.to(self.cluster_weights))

    # -- the training graph --------------------------------------------------------------------------

    @classmethod
    def training_graph(cls, config: GSNConfig | None = None) -> TrainingGraph:
        """The unrolled walkback graph (2014 paper, Fig. 3): per step, the corrupted X~ and the
        hidden layers carried from the previous step feed the network, whose P_t(X | h) is scored
        against the clean x and sampled (then corrupted) to become the next step's input."""
        config = config or cls.config_class()
        steps = config.walkbacks if config.walkbacks is not None else 2 * len(config.hidden)
        noise_name = config.input_noise.replace("_", "-")
        layers = len(config.hidden)
        first = 2 if config.noiseless_first_hidden else 1
        hidden_noise = (f"N(0, {config.hidden_noise_std:g}^2) on h^{first}..h^{layers}\nbefore, after f"
                        if config.hidden_noise_std > 0 and first <= layers else None)
        nodes = [Node("x", "x", "input")]
        edges = []
        for t in range(steps):
            fed_by = "x" if t == 0 else f"p{t}"
            nodes += [Node(f"corrupt{t}", f"{noise_name} {config.input_noise_level:g}", "noise"),
                      Node(f"x{t}", "x~ = C(x)" if t == 0 else f"x~_{t} = C(x_{t}),\nx_{t} ~ P_{t}", "sampled")]
            edges += [(fed_by, f"x{t}"), (f"corrupt{t}", f"x{t}"), (f"x{t}", f"net{t + 1}")]
            if hidden_noise:
                nodes.append(Node(f"hnoise{t + 1}", hidden_noise, "noise"))
                edges.append((f"hnoise{t + 1}", f"net{t + 1}"))
            nodes += [Node(f"net{t + 1}", f"step {t + 1}\nh^1..h^{layers} (tied W)", "network"),
                      Node(f"p{t + 1}", f"P_{t + 1}(X | h)", "output"),
                      Node(f"cost{t + 1}", f"BCE(x, P_{t + 1})", "cost")]
            edges += [(f"net{t + 1}", f"p{t + 1}"), (f"p{t + 1}", f"cost{t + 1}"),
                      (f"cost{t + 1}", "loss")]
            if t > 0:
                edges.append((f"net{t}", f"net{t + 1}"))  # the hidden layers are carried along
        nodes.append(Node("loss", "walkback cost\nsum over steps", "cost"))
        return TrainingGraph(f"GSN ({layers} hidden layers, {steps} walkback steps)",
                             tuple(nodes), tuple(edges))

    # -- generation ----------------------------------------------------------------------------------

    def _chain_start(self, num_chains: int, generator: torch.Generator | None) -> Tensor:
        """X_0 (n, n_0): a Bernoulli draw from the marginal pixel means, from a k-means centroid
        chosen with probability its cluster's share of the training images (chain_init=clusters: a
        mixture of K product-Bernoulli distributions), or from 1/2 (chain_init=noise)."""
        if self.config.chain_init == "noise":
            probs = torch.full_like(self.pixel_means, 0.5).expand(num_chains, -1)
        elif self.config.chain_init == "clusters":
            component = torch.multinomial(self.cluster_weights, num_chains, replacement=True, generator=generator)
            probs = self.cluster_means[component].clamp(0.0, 1.0)  # (n, n_0)
        else:
            probs = self.pixel_means.clamp(0.0, 1.0).expand(num_chains, -1)  # (n, n_0)
        return (draw_uniform(probs.shape, generator, like=probs) < probs).to(probs.dtype)

    @torch.no_grad()
    def sample_chain(self, num_chains: int, steps: int, generator: torch.Generator | None = None,
                     start: Tensor | None = None, burn_in: int = 0, mean: bool = True) -> Tensor:
        """Run num_chains Markov chains (corrupt, reconstruct, sample, repeat) and return `steps`
        consecutive states after `burn_in` discarded ones: (steps, num_chains, C, H, W) in [0, 1].

        A state is P(X | ...) (mean=True, the usual picture) or the X sampled from it. Chains start
        from `start` (num_chains, C, H, W) if given, else from `chain_init`; hidden layers start at zero
        and are carried along (they are part of the deep GSN's chain state)."""
        if steps < 1 or burn_in < 0:
            raise ValueError(f"steps must be at least 1 and burn_in non-negative, got {steps}, {burn_in}")
        device = self.pixel_means.device
        x0 = self._chain_start(num_chains, generator) if start is None else start.to(device).flatten(start_dim=1)
        if x0.shape[0] != num_chains:
            raise ValueError(f"start holds {x0.shape[0]} images for {num_chains} chains")
        layers = self.initial_layers(x0, generator)
        states = []
        for t in range(burn_in + steps):
            logits, x = self.walkback_step(layers, generator)
            if t >= burn_in:
                states.append(torch.sigmoid(logits) if mean else x)
        return torch.stack(states).view(steps, num_chains, *self.image_shape).clamp(0.0, 1.0)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               burn_in: int | None = None, mean: bool = True, **kwargs) -> Tensor:
        """The state of num_samples independent chains after `burn_in` steps (default
        sample_burn_in): the chain sample_chain runs, its (burn_in + 1)-th state. (n, C, H, W)."""
        burn_in = self.config.sample_burn_in if burn_in is None else burn_in
        return self.sample_chain(num_samples, 1, generator, burn_in=burn_in, mean=mean)[0]

    @torch.no_grad()
    def reconstruct(self, x: Tensor, label: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """One corrupt-encode-decode pass: corrupt x, one walkback step from hidden layers at zero
        (hidden noise included), and return P(X | h^1): x (B, C, H, W) -> (B, C, H, W)."""
        logits, _ = self.walkback_step(self.initial_layers(x, generator), generator)
        return torch.sigmoid(logits).view(x.shape[0], *self.image_shape)


def fit_clusters(images: Tensor, clusters: int) -> tuple[Tensor, Tensor]:
    """k-means of images (N, D) by scikit-learn (Lloyd's algorithm, k-means++ start, fixed
    random_state): the centroids (K, D) and each cluster's share of the images (K,)."""
    from sklearn.cluster import KMeans  # slow import: only when fitting

    if len(images) < clusters:
        raise VaelabError(f"chain_init=clusters with {clusters} clusters needs at least {clusters} training "
                          f"images, got {len(images)}; lower chain_init_clusters")
    array = images.detach().cpu().float().numpy()  # (N, D) float32: half the memory of float64
    fitted = KMeans(clusters, n_init=1, random_state=CLUSTER_RANDOM_STATE).fit(array)
    counts = torch.bincount(torch.from_numpy(fitted.labels_).long(), minlength=clusters).double()
    return torch.from_numpy(fitted.cluster_centers_).double(), counts / counts.sum()


def _glorot_uniform(fan_in: int, fan_out: int) -> Tensor:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return torch.empty(fan_in, fan_out).uniform_(-bound, bound)
