"""A linear-Gaussian VAE whose log p(x) is known exactly (probabilistic PCA):

    p(z) = N(0, I),  p(x|z) = N(W z + b, s^2 I)   =>   p(x) = N(b, W W^T + s^2 I).

W has orthogonal columns, so the exact posterior N(A (x - b), diag(v)) with
A = (I + W^T W / s^2)^-1 W^T / s^2 and v = diag((I + W^T W / s^2)^-1) is diagonal and an affine
encoder represents it exactly.
"""

import torch
from torch.distributions import MultivariateNormal

from vaelab.models.vae import VAE, VAEConfig

IMAGE_SHAPE = (1, 3, 3)
LATENT_DIM = 2
NOISE_STD = 0.5


def make_linear_gaussian_vae(seed: int = 0, exact_posterior: bool = True, perturbation: float = 0.0) -> VAE:
    config = VAEConfig(architecture="linear", likelihood="gaussian", gaussian_mean="identity",
                       fixed_std=NOISE_STD, latent_dim=LATENT_DIM)
    model = VAE(config, IMAGE_SHAPE)
    generator = torch.Generator().manual_seed(seed)
    pixels = 9
    q, _ = torch.linalg.qr(torch.randn(pixels, LATENT_DIM, generator=generator))
    W = q * torch.tensor([2.0, 1.2])  # (P, D), orthogonal columns
    b = torch.randn(pixels, generator=generator) * 0.3
    precision = torch.eye(LATENT_DIM) + W.T @ W / NOISE_STD**2  # diagonal
    covariance = torch.linalg.inv(precision)
    A = covariance @ W.T / NOISE_STD**2  # (D, P)
    with torch.no_grad():
        model.decoder.net.weight.copy_(W)
        model.decoder.net.bias.copy_(b)
        head = model.posterior_head  # rows 0..D-1: mu, rows D..2D-1: log_var
        head.weight.zero_()
        head.bias.zero_()
        head.weight[:LATENT_DIM] = A
        head.bias[:LATENT_DIM] = -A @ b
        head.bias[LATENT_DIM:] = torch.log(torch.diagonal(covariance))
        if not exact_posterior:
            head.weight[:LATENT_DIM] += 0.25 * perturbation * torch.randn(LATENT_DIM, pixels, generator=generator)
            head.bias[LATENT_DIM:] += perturbation
    model.exact_marginal = MultivariateNormal(b, W @ W.T + NOISE_STD**2 * torch.eye(pixels))
    return model.eval()


def exact_log_prob(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) for each example of x (B, 1, 3, 3): (B,)."""
    return model.exact_marginal.log_prob(x.flatten(1))


def sample_data(model: VAE, count: int, seed: int = 1) -> torch.Tensor:
    """Draws from the model's own marginal, shaped as images."""
    torch.manual_seed(seed)
    return model.exact_marginal.sample((count,)).view(count, *IMAGE_SHAPE)
