"""Model names -> model classes. The CLI, checkpoint loading and the tests all read this dict;
adding a model touches its file, one line here and its tests."""

from __future__ import annotations

from vaelab.errors import VaelabError
from vaelab.models.ae import AE
from vaelab.models.base import GenerativeModel
from vaelab.models.cvae import CVAE
from vaelab.models.dae import DAE
from vaelab.models.gan import GAN
from vaelab.models.gsn import GSN
from vaelab.models.rbm import RBM
from vaelab.models.vae import VAE

MODELS: dict[str, type[GenerativeModel]] = {
    "vae": VAE,
    "ae": AE,
    "dae": DAE,
    "cvae": CVAE,
    "gan": GAN,
    "rbm": RBM,
    "gsn": GSN,
}


def get_model_class(name: str) -> type[GenerativeModel]:
    if name not in MODELS:
        raise VaelabError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return MODELS[name]
