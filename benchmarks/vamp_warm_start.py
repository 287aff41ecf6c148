"""Make the starting weights of a VampPrior fine-tune from a trained standard-prior VAE run.

The run's encoder and decoder, plus K pseudo-inputs set to K training images drawn with a
seed (Tomczak & Welling 2018 start theirs near-black and learn them from scratch; a warm start
needs them where the encoder already puts posteriors). Validation images are never picked. It
prints the validation bound L_k under both priors, the same draws for each, so that the cost of
swapping the prior is seen before any training.

    VAELAB_DATA=../shared/data python benchmarks/vamp_warm_start.py \
        --run benchmarks/results/vae_fashion_mnist_iwae50 --out runs/vamp_init.safetensors

The network and the data splits are the run's own (its config.json).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from vaelab.checkpoint import build_model, load, load_run_config, save_weights
from vaelab.errors import VaelabError
from vaelab.experiment import load_data, training_splits
from vaelab.models.vae import VAE


@torch.no_grad()
def validation_bound(model: VAE, images: torch.Tensor, k: int, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    bounds = [model.iw_bound(batch, k, generator) for batch in images.split(500)]
    return float(torch.cat(bounds).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True,
                        help="the run directory of a trained standard-prior VAE (its final weights are used)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pseudo-inputs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-images", type=int, default=2000, help="validation images for the L_k check")
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args()

    try:
        run_config = load_run_config(args.run)
        standard = load(args.run)
        train, val = training_splits(load_data(run_config.data), run_config.data)
    except VaelabError as error:
        raise SystemExit(f"vamp_warm_start: {error}") from None
    vamp_model_config = replace(run_config.model, prior="vamp", pseudo_inputs=args.pseudo_inputs)
    vamp = build_model(replace(run_config, model=vamp_model_config))
    assert isinstance(standard, VAE) and isinstance(vamp, VAE), "a VAE run is needed"
    missing, unexpected = vamp.load_state_dict(standard.state_dict(), strict=False)
    assert missing == ["pseudo_inputs.logits"] and not unexpected, (missing, unexpected)
    picked = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(args.seed))[:args.pseudo_inputs]
    vamp.pseudo_inputs.set_images(train.images[picked].float())

    check = val.images[:args.check_images].float()
    for name, model in (("N(0, I)", standard), ("VampPrior", vamp)):
        model.eval()
        print(f"validation L_{args.k} on {len(check)} images, prior {name}: "
              f"{validation_bound(model, check, args.k, args.seed):.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(vamp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
