#!/usr/bin/env bash
# Redraw the training graphs shown in docs/models.md (run from the repository root).
set -euo pipefail
for model in vae cvae ae dae rbm gsn gan; do
    vaelab graph "$model" --out "docs/images/graphs/$model.png"
done
