"""Network building blocks shared by the models: MLPs and convolutional encoders/decoders.

Every encoder maps images (B, C, H, W) to features (B, F); every decoder maps vectors (B, D) to
(B, out_channels, H, W). Models choose the architecture by name through ENCODERS / DECODERS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


GATED = "gated"  # an MLP's hidden layers as GatedLinear units instead of Linear + activation


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        choices = ", ".join(ACTIVATIONS) + f" ({GATED}: MLP layers only)"
        raise ConfigError(f"unknown activation {name!r}; choose one of {choices}")
    return ACTIVATIONS[name]()


class GatedLinear(nn.Module):
    """h = (W x + b) * sigmoid(V x + c): gated linear units (Dauphin et al. 2017), the `GatedDense`
    hidden layers of the VampPrior reference code (Tomczak & Welling 2018) whose Fashion-MNIST
    protocol vaelab reproduces. W and V are one (in, 2 out) Linear layer: one matmul per layer."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.both = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.both(x).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


def mlp(in_features: int, hidden: Sequence[int], out_features: int | None, act: str) -> nn.Sequential:
    """Linear layers of the given widths with `act` between them; no activation after the last
    layer when out_features is given (it is a head), otherwise the last hidden layer is activated.
    act="gated": every hidden layer is a GatedLinear unit instead."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [GatedLinear(width, h)] if act == GATED else [nn.Linear(width, h), activation(act)]
        width = h
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """What every encoder is: images (B, C, H, W) -> features (B, out_features)."""

    out_features: int


class MLPEncoder(Encoder):
    """(B, C, H, W) -> flatten -> hidden layers -> (B, hidden[-1])."""

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], act: str,
                 channels: Sequence[int] = ()):
        super().__init__()
        if not hidden:
            raise ConfigError("hidden must list at least one layer width for an MLP")
        self.net = mlp(math.prod(image_shape), hidden, None, act)
        self.out_features = hidden[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(start_dim=1))


class MLPDecoder(nn.Module):
    """(B, D) -> hidden layers (in reverse order) -> (B, out_channels, H, W)."""

    def __init__(self, in_features: int, image_shape: Sequence[int], out_channels: int,
                 hidden: Sequence[int], act: str, channels: Sequence[int] = ()):
        super().__init__()
        _, height, width = image_shape
        self.out_shape = (out_channels, height, width)
        self.net = mlp(in_features, list(reversed(hidden)), math.prod(self.out_shape), act)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.out_shape)


class LinearEncoder(Encoder):
    """No hidden layer: the features are the flattened pixels, so the model's posterior head is the
    whole (affine) encoder. With a linear decoder and a Gaussian likelihood this is the
    linear-Gaussian VAE, whose log p(x) is known exactly (probabilistic PCA)."""

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int] = (), act: str = "relu",
                 channels: Sequence[int] = ()):
        super().__init__()
        self.out_features = math.prod(image_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(start_dim=1)


class LinearDecoder(nn.Module):
    """One affine map from the latent to the likelihood's parameters."""

    def __init__(self, in_features: int, image_shape: Sequence[int], out_channels: int,
                 hidden: Sequence[int] = (), act: str = "relu", channels: Sequence[int] = ()):
        super().__init__()
        _, height, width = image_shape
        self.out_shape = (out_channels, height, width)
        self.net = nn.Linear(in_features, math.prod(self.out_shape))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.out_shape)


def _halved(size: int) -> int:
    """Spatial size after a 3x3 convolution with stride 2 and padding 1."""
    return (size + 1) // 2


class ConvEncoder(Encoder):
    """Stride-2 3x3 convolutions (one per entry of `channels`), then an MLP over the flattened map.
    Works for any image size: each convolution halves the size, rounding up."""

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], act: str,
                 channels: Sequence[int] = (32, 64)):
        super().__init__()
        if not channels:
            raise ConfigError("channels must list at least one convolution width for a conv network")
        in_channels, height, width = image_shape
        layers: list[nn.Module] = []
        for c in channels:
            layers += [nn.Conv2d(in_channels, c, 3, stride=2, padding=1), activation(act)]
            in_channels, height, width = c, _halved(height), _halved(width)
        self.conv = nn.Sequential(*layers)
        self.head = mlp(in_channels * height * width, hidden, None, act)
        self.out_features = hidden[-1] if hidden else in_channels * height * width

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x).flatten(start_dim=1))


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder: an MLP to a small feature map, then stride-2 transposed convolutions
    whose output padding is chosen so the output is exactly (out_channels, H, W)."""

    def __init__(self, in_features: int, image_shape: Sequence[int], out_channels: int,
                 hidden: Sequence[int], act: str, channels: Sequence[int] = (32, 64)):
        super().__init__()
        if not channels:
            raise ConfigError("channels must list at least one convolution width for a conv network")
        _, height, width = image_shape
        sizes = [(height, width)]
        for _ in channels:
            sizes.append((_halved(sizes[-1][0]), _halved(sizes[-1][1])))
        self.start_shape = (channels[-1], *sizes[-1])
        self.head = nn.Sequential(mlp(in_features, list(reversed(hidden)), math.prod(self.start_shape), act),
                                  activation(act))
        layers: list[nn.Module] = []
        widths = list(reversed(channels))
        targets = list(reversed(sizes[:-1]))
        for i, (target_h, target_w) in enumerate(targets):
            is_last = i == len(targets) - 1
            out_c = out_channels if is_last else widths[i + 1]
            # (in - 1) * 2 - 2 + 3 + output_padding = target  =>  output_padding = target - 2 * in + 1
            in_h, in_w = (sizes[-1 - i])
            padding = (target_h - 2 * in_h + 1, target_w - 2 * in_w + 1)
            layers.append(nn.ConvTranspose2d(widths[i], out_c, 3, stride=2, padding=1, output_padding=padding))
            if not is_last:
                layers.append(activation(act))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.head(z).view(-1, *self.start_shape))


ENCODERS: dict[str, type[Encoder]] = {"mlp": MLPEncoder, "conv": ConvEncoder, "linear": LinearEncoder}
DECODERS: dict[str, type[nn.Module]] = {"mlp": MLPDecoder, "conv": ConvDecoder, "linear": LinearDecoder}


def build_encoder(architecture: str, image_shape, hidden, act, channels) -> Encoder:
    if architecture not in ENCODERS:
        raise ConfigError(f"unknown architecture {architecture!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[architecture](image_shape, hidden, act, channels)


def build_decoder(architecture: str, in_features, image_shape, out_channels, hidden, act, channels) -> nn.Module:
    if architecture not in DECODERS:
        raise ConfigError(f"unknown architecture {architecture!r}; choose one of {', '.join(DECODERS)}")
    return DECODERS[architecture](in_features, image_shape, out_channels, hidden, act, channels)
