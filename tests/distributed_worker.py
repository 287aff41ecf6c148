"""Run by tests/test_distributed.py under torchrun: trains a tiny VAE through the Trainer and saves
this process's final weights as OUT/rank{R}.safetensors, so the test can see that every process
ends with the same weights (DistributedDataParallel averaged the gradients)."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from vaelab.config import DataConfig, RunConfig, TrainConfig
from vaelab.data.datasets import Split
from vaelab.distributed import join_world
from vaelab.models.vae import VAE, VAEConfig
from vaelab.trainer import Trainer


def main(out: Path) -> None:
    world = join_world("cpu")
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden=(16,), latent_dim=2), (1, 4, 4))
    images = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    config = RunConfig("vae", model.config, DataConfig(binarize="none"),
                       TrainConfig(batch_size=16, epochs=2, lr=1e-2, tensorboard=False), image_shape=(1, 4, 4))
    Trainer(model, config, out / "run", Split(images), Split(images[:16]), None, progress_bar=False,
            world=world).fit()
    save_file({name: value.contiguous() for name, value in model.state_dict().items()},
              str(out / f"rank{world.rank}.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
