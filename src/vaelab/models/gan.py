"""The Generative Adversarial Network (Goodfellow et al. 2014, "Generative Adversarial Nets").

    z ~ p(z) = N(0, I)        noise
    G(z)                      generator: noise -> image in [0, 1] (sigmoid output: the data lives in [0, 1])
    D(x)                      discriminator: image -> a logit; sigmoid(D(x)) is the probability that x is real

The two networks play the minimax game of eq. (1),

    min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))],

trained as in Algorithm 1: every trainer step is one discriminator update on a fresh minibatch of real
images and of noise (ascending V), and every `d_steps`-th step is also followed by one generator
update on a fresh minibatch of noise (k = d_steps in the paper). The generator uses the
non-saturating loss of section 3: instead of minimizing log(1 - D(G(z))) it maximizes log D(G(z)),
"the same fixed point ... but much stronger gradients early in learning". In logits both losses are
binary cross-entropies: D's with labels 1 (real) and 0 (fake), G's with label 1 on its fakes.

Two architectures: `mlp` (fully connected networks, as in the paper's MNIST experiments; the
discriminator uses leaky ReLUs and optional dropout) and `dcgan` (Radford, Metz & Chintala 2016,
"Unsupervised Representation Learning with Deep Convolutional GANs", section 3: strided
convolutions instead of pooling, batch normalization in both networks except the generator's output
and the discriminator's input layer, ReLU in G, LeakyReLU(0.2) in D, no fully connected hidden
layers, N(0, 0.02) initial weights, Adam with beta1 = 0.5).

A GAN has no likelihood, so it has no likelihood-based validation loss: `validation_loss` reports
the same two adversarial losses as training (D's on held-out real images against fresh fakes, G's
on those fakes), which say how well the current D separates the current G from the data, not how
good the samples are. The "best" checkpoint and `early_stopping`, which follow it, are therefore
not measures of sample quality; use the final weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from vaelab.data.loader import Batch
from vaelab.errors import ConfigError
from vaelab.models.base import GenerativeModel, StandardNormalPrior, detached
from vaelab.models.blocks import MLPDecoder, activation
from vaelab.models.modes import eval_mode, frozen
from vaelab.models.training_graph import Node, TrainingGraph
from vaelab.optim import Updater


@dataclass
class GANConfig:
    architecture: Literal["mlp", "dcgan"] = "mlp"
    latent_dim: int = 100  # the noise z ~ N(0, I)
    g_hidden: tuple[int, ...] = (256, 512)  # mlp generator widths, from z towards the image
    d_hidden: tuple[int, ...] = (512, 256)  # mlp discriminator widths, from the image towards the logit
    g_activation: str = "relu"  # mlp generator hidden activation (the paper's G used ReLU)
    dropout: float = 0.0  # dropout after each mlp discriminator hidden layer (the paper's D used it)
    channels: tuple[int, ...] = (64, 128)  # dcgan discriminator widths; the generator mirrors them
    leaky_slope: float = 0.2  # negative slope of the discriminator's LeakyReLUs (DCGAN: 0.2)
    betas: tuple[float, ...] = (0.5, 0.999)  # Adam/AdamW (beta1, beta2) for both players (DCGAN: beta1 = 0.5)
    d_steps: int = 1  # k of Algorithm 1: discriminator updates per generator update
    # > 0: sample and decode with an exponential moving average of G's weights, updated after every
    # generator step with this decay (Yazici et al. 2019, "The Unusual Effectiveness of Averaging in
    # GAN Training"); 0: the last iterate, as in Algorithm 1
    generator_average_decay: float = 0.0


# -- networks ------------------------------------------------------------------------------------

class MLPDiscriminator(nn.Module):
    """(B, C, H, W) -> flatten -> [Linear, LeakyReLU, Dropout] per hidden width -> (B,) logits.

    Written here rather than with blocks.mlp, which has neither dropout nor a leaky slope."""

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], leaky_slope: float, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = math.prod(image_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(leaky_slope)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(start_dim=1)).squeeze(-1)  # (B,)


def halved_sizes(height: int, width: int, layers: int) -> list[tuple[int, int]]:
    """Spatial sizes through `layers` 4x4 stride-2 padding-1 convolutions, each halving (rounding
    down): [(H, W), (H/2, W/2), ...]. Raises ConfigError when the map would vanish."""
    sizes = [(height, width)]
    for _ in range(layers):
        h, w = sizes[-1]
        if h < 2 or w < 2:
            raise ConfigError(f"channels has {layers} convolution layers, too many for {height}x{width} "
                              "images: each one halves the size")
        sizes.append((h // 2, w // 2))
    return sizes


class DCGANDiscriminator(nn.Module):
    """Strided 4x4 convolutions (DCGAN: no pooling), BatchNorm on every one but the first, LeakyReLU;
    the last feature map is flattened into a single logit (DCGAN section 3). (B, C, H, W) -> (B,)."""

    def __init__(self, image_shape: Sequence[int], channels: Sequence[int], leaky_slope: float):
        super().__init__()
        in_channels, height, width = image_shape
        sizes = halved_sizes(height, width, len(channels))
        layers: list[nn.Module] = []
        for i, c in enumerate(channels):
            first = i == 0
            # BatchNorm's shift replaces the bias; none on the input layer (it destabilized DCGAN)
            layers.append(nn.Conv2d(in_channels, c, 4, stride=2, padding=1, bias=first))
            if not first:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(leaky_slope))
            in_channels = c
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels * math.prod(sizes[-1]), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x).flatten(start_dim=1)).squeeze(-1)  # (B,)


class DCGANGenerator(nn.Module):
    """z (B, D) -> a linear projection reshaped to a small feature map, then stride-2 4x4 transposed
    convolutions with BatchNorm and ReLU, no BatchNorm on the output layer (DCGAN section 3).
    Returns logits (B, C, H, W); output padding makes the size exactly (H, W) for any image."""

    def __init__(self, latent_dim: int, image_shape: Sequence[int], channels: Sequence[int]):
        super().__init__()
        out_channels, height, width = image_shape
        sizes = halved_sizes(height, width, len(channels))  # the discriminator's sizes, mirrored here
        widths = list(reversed(channels))
        self.start_shape = (widths[0], *sizes[-1])
        self.project = nn.Linear(latent_dim, math.prod(self.start_shape), bias=False)
        layers: list[nn.Module] = [nn.BatchNorm2d(widths[0]), nn.ReLU()]
        targets = list(reversed(sizes[:-1]))
        for i, (target_h, target_w) in enumerate(targets):
            last = i == len(targets) - 1
            in_h, in_w = sizes[-1 - i]
            # out = 2 * in + output_padding for kernel 4, stride 2, padding 1
            padding = (target_h - 2 * in_h, target_w - 2 * in_w)
            out_c = out_channels if last else widths[i + 1]
            layers.append(nn.ConvTranspose2d(widths[i], out_c, 4, stride=2, padding=1,
                                             output_padding=padding, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(out_c), nn.ReLU()]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.project(z).view(-1, *self.start_shape))  # (B, C, H, W)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN section 4: weights from N(0, 0.02); BatchNorm scales from N(1, 0.02), shifts 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# -- the model -----------------------------------------------------------------------------------

class GAN(GenerativeModel, StandardNormalPrior):
    """G and D of Algorithm 1. As a LatentDecoder it is the prior N(0, I) and G, whose output is a
    logit per pixel (the image is its sigmoid), with no observation model of its own."""

    config_class = GANConfig
    decoder_output = "logits"
    likelihood = None

    def __init__(self, config: GANConfig, image_shape: Sequence[int], num_classes: int | None = None):
        super().__init__(config, image_shape, num_classes)
        config = self.config
        self._check_config(config)
        self.generator: nn.Module  # G: z (B, D) -> logits (B, C, H, W)
        self.generator_average: Tensor  # (P,) G's averaged weights, when generator_average_decay > 0
        self.generator_average_statistics: Tensor  # BatchNorm running means and variances for them
        self.generator_average_statistics_ready: Tensor  # () bool: those statistics were measured
        self.discriminator: nn.Module  # D: x (B, C, H, W) -> logit (B,)
        if config.architecture == "mlp":
            # MLPDecoder lists its widths from the image side, so the generator's order is reversed
            self.generator = MLPDecoder(config.latent_dim, self.image_shape, self.image_shape[0],
                                        list(reversed(config.g_hidden)), config.g_activation)
            self.discriminator = MLPDiscriminator(self.image_shape, config.d_hidden, config.leaky_slope,
                                                  config.dropout)
        else:
            self.generator = DCGANGenerator(config.latent_dim, self.image_shape, config.channels)
            self.discriminator = DCGANDiscriminator(self.image_shape, config.channels, config.leaky_slope)
            self.apply(dcgan_init)
        if config.generator_average_decay > 0:  # G's weights averaged over the steps, as one flat buffer
            initial = parameters_to_vector(self.generator.parameters()).detach().clone()  # (P,)
            self.register_buffer("generator_average", initial)
            # BatchNorm statistics of the averaged weights, measured once training ends
            # (recalibrate_averaged_statistics); until then the averaged G uses G's own.
            statistics = [b.detach().reshape(-1) for b in self._normalization_statistics().values()]
            self.register_buffer("generator_average_statistics", torch.cat(statistics) if statistics
                                 else torch.zeros(0))
            self.register_buffer("generator_average_statistics_ready", torch.tensor(False))

    @staticmethod
    def _check_config(config: GANConfig) -> None:
        if config.latent_dim < 1 or config.d_steps < 1:
            raise ConfigError("latent_dim and d_steps must be at least 1")
        if len(config.betas) != 2 or not all(0.0 <= b < 1.0 for b in config.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {list(config.betas)}")
        if not 0.0 <= config.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {config.dropout}")
        if not 0.0 <= config.generator_average_decay < 1.0:
            raise ConfigError(f"generator_average_decay must be in [0, 1), got {config.generator_average_decay}")
        if config.architecture == "mlp" and (not config.g_hidden or not config.d_hidden):
            raise ConfigError("g_hidden and d_hidden must list at least one layer width for an mlp GAN")
        if config.architecture == "dcgan" and not config.channels:
            raise ConfigError("channels must list at least one convolution width for a dcgan GAN")
        activation(config.g_activation)  # an unknown name is a ConfigError

    # -- the two players ------------------------------------------------------------------------

    def decode(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        """G's logits: z (..., D) -> (..., C, H, W), with G in eval mode (BatchNorm running statistics)."""
        self.check_label(label)
        with eval_mode(self.generator):
            logits = self.generator_logits(z.reshape(-1, z.shape[-1]), averaged=True)
        return logits.view(*z.shape[:-1], *logits.shape[1:])

    def generate(self, z: Tensor, averaged: bool = False) -> Tensor:
        """G(z): z (B, D) -> images (B, C, H, W) in [0, 1] (a sigmoid output, since the data lives
        there); averaged=True uses the averaged weights when there are any."""
        return torch.sigmoid(self.generator_logits(z, averaged))

    def generator_logits(self, z: Tensor, averaged: bool = False) -> Tensor:
        """G's logits (B, C, H, W) for z (B, D): with G's own weights (training), or with their
        average (averaged=True and generator_average_decay > 0: what samples and decodes use)."""
        if averaged and self.config.generator_average_decay > 0:
            return functional_call(self.generator, self.averaged_generator_weights(), (z,))
        return self.generator(z)

    def averaged_generator_weights(self) -> dict[str, Tensor]:
        """The generator_average buffer cut into G's parameters by name (views, no copy), with the
        averaged weights' own BatchNorm statistics once they are measured."""
        weights = self._averaged_parameters()
        if bool(self.generator_average_statistics_ready):
            weights.update(self._averaged_statistics())
        return weights

    def _averaged_parameters(self) -> dict[str, Tensor]:
        """generator_average as views shaped like G's parameters, by name."""
        return _cut(self.generator_average, {name: p.shape for name, p in self.generator.named_parameters()})

    def _averaged_statistics(self) -> dict[str, Tensor]:
        """generator_average_statistics as views shaped like G's BatchNorm statistics, by name."""
        shapes = {name: b.shape for name, b in self._normalization_statistics().items()}
        return _cut(self.generator_average_statistics, shapes)

    def _normalization_statistics(self) -> dict[str, Tensor]:
        """G's BatchNorm running means and variances by name (not the batch counters)."""
        return {name: b for name, b in self.generator.named_buffers() if name.endswith(("running_mean", "running_var"))}

    @torch.no_grad()
    def recalibrate_averaged_statistics(self, num_batches: int = 50, batch_size: int = 256, seed: int = 0) -> None:
        """Measure the BatchNorm statistics the averaged weights produce: the exact mean over
        num_batches batches of fresh z (seeded) of each layer's batch mean and variance, as SWA's
        update_bn does (Izmailov et al. 2018); G's own statistics belong to its last iterate and
        would mis-normalize the average. Nothing to do without BatchNorm."""
        statistics = self._averaged_statistics()
        if not statistics:
            return
        for name, value in statistics.items():
            value.fill_(1.0 if name.endswith("running_var") else 0.0)
        layers = [m for m in self.generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [layer.momentum for layer in layers]
        counters = {name: torch.zeros_like(b) for name, b in self.generator.named_buffers()
                    if name.endswith("num_batches_tracked")}
        weights = {**self._averaged_parameters(), **statistics, **counters}
        generator = torch.Generator(self.generator_average.device).manual_seed(seed)
        was_training = self.generator.training
        try:
            for layer in layers:
                layer.momentum = None  # a cumulative average over the batches
            self.generator.train()
            for _ in range(num_batches):
                functional_call(self.generator, weights, (self.sample_prior(batch_size, generator),))
        finally:
            for layer, momentum in zip(layers, momenta, strict=True):
                layer.momentum = momentum
            self.generator.train(was_training)
        self.generator_average_statistics_ready.fill_(True)

    def after_training(self, train_split) -> None:
        """The averaged generator's BatchNorm statistics (see recalibrate_averaged_statistics)."""
        if self.config.generator_average_decay > 0:
            self.recalibrate_averaged_statistics()

    @torch.no_grad()
    def _update_generator_average(self) -> None:
        """average <- decay * average + (1 - decay) * G's weights, after a generator step."""
        current = parameters_to_vector(self.generator.parameters())
        self.generator_average.lerp_(current, 1.0 - self.config.generator_average_decay)
        self.generator_average_statistics_ready.fill_(False)  # they belong to the average before this step


    def discriminate(self, x: Tensor) -> Tensor:
        """D(x) as a logit: x (B, C, H, W) -> (B,); sigmoid(logit) is the probability that x is real."""
        return self.discriminator(x)

    # -- the losses, in logits ------------------------------------------------------------------

    def discriminator_terms(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """D's loss -[mean log D(x) + mean log(1 - D(G(z)))], the minibatch estimate of -V(D, G)
        (descending it is Algorithm 1's ascent of V): BCE-with-logits against label 1 on real and 0
        on fake images. Real and fake go through D as separate batches (as in the DCGAN code), so
        BatchNorm never mixes them. real, fake (B, C, H, W) -> scalars, and the fake logits (B,)."""
        real_logits, fake_logits = self.discriminate(real), self.discriminate(fake)  # (B,), (B,)
        real_loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        fake_loss = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return {"d_loss": real_loss + fake_loss, "fake_logits": fake_logits,
                "d_real": torch.sigmoid(real_logits).mean(), "d_fake": torch.sigmoid(fake_logits).mean()}

    @staticmethod
    def generator_loss(fake_logits: Tensor) -> Tensor:
        """Non-saturating generator loss (section 3): maximize log D(G(z)), i.e. minimize
        -mean log sigmoid(D(G(z))) = BCE-with-logits of D(G(z)) against label 1."""
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

    def loss(self, batch: Batch, step: int | None = None) -> dict[str, Tensor]:
        """Both players' losses on one batch of real images and fresh noise, without an update.
        "loss" is d_loss + g_loss, the scalar the trainer logs (a GAN minimizes no single loss)."""
        real = batch.x
        fake = self.generate(self.sample_prior(len(real)))
        terms = self.discriminator_terms(real, fake)
        g_loss = self.generator_loss(terms.pop("fake_logits"))
        return {"loss": terms["d_loss"] + g_loss, "g_loss": g_loss, **terms}

    # -- training: Algorithm 1 ------------------------------------------------------------------

    def make_optimizers(self, build_optimizer) -> list[torch.optim.Optimizer]:
        """[D's optimizer, G's optimizer], each built from the train config (optimizer, lr,
        weight_decay, momentum); for Adam and AdamW with this config's betas (DCGAN: (0.5, 0.999))."""
        return [self._with_betas(build_optimizer(self.discriminator.parameters())),
                self._with_betas(build_optimizer(self.generator.parameters()))]

    def _with_betas(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            betas = tuple(self.config.betas)
            optimizer.defaults["betas"] = betas
            for group in optimizer.param_groups:
                group["betas"] = betas
        return optimizer

    def train_step(self, batch: Batch, step: int, updater: Updater) -> dict[str, Tensor]:
        """One discriminator update on this batch; then, every d_steps-th step, one generator update
        on fresh noise (Algorithm 1 with k = d_steps); both through the trainer's Updater
        (optimizers[0] is D's, optimizers[1] G's). Returns detached terms: "loss" = d_loss +
        g_loss, d_loss, g_loss, and d_real / d_fake, the mean probability D gives real and fake
        images before its update. On steps without a generator update, g_loss is the
        non-saturating loss of the discriminator step's fakes (no extra forward pass)."""
        terms = self.discriminator_step(batch.x, updater)
        fake_logits = terms.pop("fake_logits")
        if (step + 1) % self.config.d_steps == 0:
            g_loss = self.generator_step(len(batch.x), updater)
        else:
            g_loss = self.generator_loss(fake_logits)
        return {"loss": terms["d_loss"] + g_loss, "g_loss": g_loss, **terms}

    def discriminator_step(self, real: Tensor, updater: Updater) -> dict[str, Tensor]:
        """One update of D: ascend mean log D(x) + log(1 - D(G(z))) for real (B, C, H, W) and fresh
        fakes, in D's parameters only (the fakes are made without a graph). Returns the detached
        discriminator_terms, measured before the update."""
        with torch.no_grad(), updater.autocast():
            fake = self.generate(self.sample_prior(len(real)))  # (B, C, H, W)
        with updater.autocast():
            terms = self.discriminator_terms(real, fake)
        updater.minimize(terms["d_loss"], optimizer_index=0, name="d_loss")
        return detached(terms)

    def generator_step(self, num_samples: int, updater: Updater) -> Tensor:
        """One update of G on num_samples fresh draws of z: descend the non-saturating loss
        -mean log D(G(z)) in G's parameters only. D is frozen, so no gradient reaches its .grad (its
        BatchNorm statistics still see the fakes, as in the DCGAN code). Returns the detached loss."""
        with frozen(self.discriminator), updater.autocast():
            g_loss = self.generator_loss(self.discriminate(self.generate(self.sample_prior(num_samples))))
        updater.minimize(g_loss, optimizer_index=1, name="g_loss")
        if self.config.generator_average_decay > 0:
            self._update_generator_average()
        return g_loss.detach()

    # -- the training graph ---------------------------------------------------------------------

    @classmethod
    def training_graph(cls, config: GANConfig | None = None) -> TrainingGraph:
        """x and G(z) both go through D; D's cost is -V(D, G), G's the non-saturating -log D(G(z))."""
        config = config or cls.config_class()
        # Nodes are declared top-down within each layer of the drawing.
        nodes = (Node("x", "x (real)", "input"), Node("z", "z ~ N(0, I)", "noise"),
                 Node("generator", "generator\nG(z)", "network"), Node("fake", "G(z) (fake)", "output"),
                 Node("discriminator", "discriminator\nD(.) (logit)", "network"),
                 Node("d_cost", "D: -log D(x)\n- log(1 - D(G(z)))", "cost"),
                 Node("g_cost", "G: -log D(G(z))\n(non-saturating)", "cost"))
        edges = (("z", "generator"), ("generator", "fake"), ("x", "discriminator"), ("fake", "discriminator"),
                 ("discriminator", "d_cost"), ("discriminator", "g_cost"))
        return TrainingGraph(f"{cls.__name__} ({config.architecture})", nodes, edges)

    # -- generation ------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, **kwargs) -> Tensor:
        """G(z) for z ~ N(0, I) drawn from `generator`, with G in eval mode (BatchNorm running
        statistics) and its averaged weights if it keeps them, whatever mode the model is in:
        (num_samples, C, H, W) in [0, 1]."""
        self.check_label(kwargs.get("label"))
        z = self.sample_prior(num_samples, generator)
        with eval_mode(self.generator):
            return self.generate(z, averaged=True).float().clamp(0.0, 1.0)


def _cut(flat: Tensor, shapes: dict[str, torch.Size]) -> dict[str, Tensor]:
    """A flat tensor cut into views of the given shapes, in order, by name."""
    pieces = torch.split(flat, [math.prod(shape) for shape in shapes.values()])
    return {name: piece.view(shape) for name, piece, shape in zip(shapes, pieces, shapes.values(), strict=True)}
