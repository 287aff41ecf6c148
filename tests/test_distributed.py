"""Training and evaluation under torchrun (vaelab.distributed): the sharded batches are exactly a
one-process run's, two gloo processes follow a one-process run's loss trajectory and reach the same
metrics within their stderr, one process writes, --resume continues every process's RNG stream, and
L_k split across processes agrees with one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_runs import read_metrics, read_tensors, write_images
from vaelab.config import DataConfig, RunConfig, TrainConfig
from vaelab.data.datasets import Split
from vaelab.data.loader import BatchIterator, contiguous_share
from vaelab.data.pixels import binarize
from vaelab.distributed import SINGLE, World, check_batch_size, gather_rows, local_split, shard_of
from vaelab.errors import ConfigError
from vaelab.models.gan import GAN, GANConfig
from vaelab.trainer import Trainer

SRC = Path(__file__).resolve().parents[1] / "src"
PROCESSES = 2


def run_vaelab(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """`python -m vaelab ARGS`, or the same under torchrun with `processes` gloo processes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "vaelab"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
         "-m", "vaelab"]
    result = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# -- shards --------------------------------------------------------------------------------------

@pytest.mark.parametrize("count,parts", [(10, 2), (11, 2), (7, 3), (2, 3), (0, 2), (128, 4)])
def test_contiguous_shares_cover_every_item_once_with_sizes_within_one(count, parts):
    shares = [contiguous_share(count, part, parts) for part in range(parts)]
    covered = [i for share in shares for i in range(count)[share]]
    assert covered == list(range(count))
    sizes = [share.stop - share.start for share in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_sharded_batches_joined_are_the_one_process_batches_binarization_included():
    images = torch.rand(37, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    split = Split(images, torch.arange(37))
    common = {"shuffle": True, "seed": 4, "epoch": 2, "transform": binarize}
    whole = list(BatchIterator(split, 8, **common))
    shards = [list(BatchIterator(split, 8, shard=(rank, 3), **common)) for rank in range(3)]
    for b, batch in enumerate(whole):
        assert torch.equal(torch.cat([shard[b].x for shard in shards]), batch.x)
        assert torch.equal(torch.cat([shard[b].label for shard in shards]), batch.label)


def test_local_split_and_gathering_in_one_process_are_the_identity():
    split = Split(torch.rand(5, 1, 2, 2), torch.arange(5))
    assert local_split(split, SINGLE) is split
    values = torch.arange(5.0)
    assert gather_rows(values, SINGLE) is values
    second = local_split(split, World(rank=1, size=2))
    assert torch.equal(second.labels, torch.tensor([3, 4])) and shard_of(5, World(rank=1, size=2)) == slice(3, 5)


def test_the_global_batch_must_split_evenly_and_a_gan_is_refused():
    check_batch_size(8, World(rank=0, size=2))
    with pytest.raises(ConfigError, match="batch_size=7 does not split evenly over 2 processes"):
        check_batch_size(7, World(rank=0, size=2))
    gan = GAN(GANConfig(latent_dim=2, g_hidden=(4,), d_hidden=(4,)), (1, 4, 4))
    config = RunConfig("gan", gan.config, DataConfig(binarize="none"), TrainConfig(batch_size=4),
                       image_shape=(1, 4, 4))
    split = Split(torch.rand(8, 1, 4, 4))
    with pytest.raises(ConfigError, match="distributed training of GAN is not supported"):
        Trainer(gan, config, "unused", split, split, None, world=World(rank=0, size=2))


# -- two processes against one -------------------------------------------------------------------

TRAIN_ARGS = ("--epochs", "4", "--seed", "3", "batch_size=32", "hidden=[32]", "latent_dim=4", "lr=3e-3",
              "tensorboard=false", "val_size=64")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny VAE trained by one process and by two, with the same global batch."""
    root = tmp_path_factory.mktemp("distributed")
    data = write_images(root / "blobs.npz", num_train=512, num_test=128, size=8)
    single, double = root / "single", root / "double"
    run_vaelab("train", "vae", "--data", str(data), "--out", str(single), *TRAIN_ARGS)
    result = run_vaelab("train", "vae", "--data", str(data), "--out", str(double), *TRAIN_ARGS, processes=PROCESSES)
    return {"data": data, "single": single, "double": double, "stderr": result.stderr}


def test_two_processes_follow_the_one_process_loss_trajectory(runs):
    single, double = read_metrics(runs["single"]), read_metrics(runs["double"])
    assert [m["step"] for m in double] == [m["step"] for m in single] == [14, 28, 42, 56]  # 448 / 32 per epoch
    for one, two in zip(single, double, strict=True):
        # The same images in every step; only the noise of the reparameterization differs (each
        # process draws its own), so the losses agree to within a few percent, not bit for bit.
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=0.03)
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=0.03)
    assert single[-1]["train_loss"] < 0.9 * single[0]["train_loss"]  # it learned: the comparison means something


def test_one_process_writes_one_metrics_line_per_epoch_and_one_announcement(runs):
    lines = (runs["double"] / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(line)["epoch"] for line in lines}) == 4
    assert runs["stderr"].count("training vae on") == 1 and runs["stderr"].count("done: step 56") == 1


def test_two_processes_reach_the_same_metrics_within_their_stderr(runs, tmp_path):
    scores = {}
    for name in ("single", "double"):
        out = tmp_path / f"{name}.json"
        run_vaelab("eval", str(runs[name]), "--metrics", "iw", "--k", "50", "--json", str(out))
        scores[name] = json.loads(out.read_text())["iw_bound"]
    difference = abs(scores["single"]["value"] - scores["double"]["value"])
    assert difference <= 2 * (scores["single"]["stderr"] ** 2 + scores["double"]["stderr"] ** 2) ** 0.5


def test_l_k_split_across_processes_agrees_with_one_process(runs, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    run_vaelab("eval", str(runs["single"]), "--metrics", "iw", "--k", "50", "--json", str(one))
    run_vaelab("eval", str(runs["single"]), "--metrics", "iw", "--k", "50", "--json", str(two), processes=PROCESSES)
    one_process, two_processes = json.loads(one.read_text())["iw_bound"], json.loads(two.read_text())["iw_bound"]
    assert two_processes["settings"]["processes"] == 2 and one_process["settings"]["processes"] == 1
    assert two_processes["settings"]["examples"] == one_process["settings"]["examples"] == 128
    # The same weights and images; rank 1's importance samples come from its own stream.
    assert two_processes["value"] == pytest.approx(one_process["value"], abs=one_process["stderr"])
    assert two_processes["stderr"] == pytest.approx(one_process["stderr"], rel=0.1)


def test_resume_under_torchrun_ends_where_the_uninterrupted_run_ends(runs, tmp_path):
    interrupted = tmp_path / "interrupted"
    common = ("train", "vae", "--data", str(runs["data"]), "--out", str(interrupted), *TRAIN_ARGS)
    run_vaelab(*common, "--max-steps", "21", processes=PROCESSES)  # stops mid-epoch 2
    run_vaelab(*common, "--max-steps", "56", "--resume", processes=PROCESSES)  # the whole 4 epochs
    assert read_metrics(interrupted) == read_metrics(runs["double"])
    final = read_tensors(interrupted / "model.safetensors")
    uninterrupted = read_tensors(runs["double"] / "model.safetensors")
    assert final.keys() == uninterrupted.keys()
    for name in final:
        torch.testing.assert_close(final[name], uninterrupted[name], rtol=0, atol=1e-6)


def test_every_process_ends_with_the_same_weights_because_the_gradients_are_averaged(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("distributed_worker.py")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={PROCESSES}", str(worker), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = read_tensors(tmp_path / "rank0.safetensors"), read_tensors(tmp_path / "rank1.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)  # each saw only half of every batch
    assert (tmp_path / "run" / "model.safetensors").is_file()
