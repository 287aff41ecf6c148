"""The trainer end to end through `vaelab train`: the run directory, step limits, checkpoints,
determinism, resuming (mid-epoch and after whole epochs), TensorBoard and failures."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vaelab
from tiny_runs import (STEPS_PER_EPOCH, assert_same_state, error_lines, read_metrics, read_tensors, resume,
                       same_tensors, train, write_images)
from vaelab import trainer as trainer_module
from vaelab.checkpoint import load_run_config, load_training_state
from vaelab.data.loader import BatchIterator
from vaelab.experiment import load_data, training_splits
from vaelab.models.vae import VAE


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray default --out would land here, not in the repo
    return write_images(tmp_path / "tiny.npz")


def weights(run_dir):
    return read_tensors(run_dir / "model.safetensors")


# -- the run directory ---------------------------------------------------------------------------------

def test_train_writes_a_complete_run_directory(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "2") == 0
    stderr = capsys.readouterr().err
    assert "36 train / 4 val images" in stderr and "done: step 10" in stderr
    assert not error_lines(stderr)

    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert files == [".lock", "checkpoints/best.safetensors", "checkpoints/last.json", "checkpoints/last.safetensors",
                     "checkpoints/previous.safetensors", "config.json", "metrics.jsonl", "model.safetensors"]
    assert (run / ".lock").read_text() == ""  # released: no process holds the run

    metrics = read_metrics(run, ignore=())
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [m["step"] for m in metrics] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for line in metrics:
        for key in ("train_loss", "val_loss", "epoch_seconds", "train_kl", "val_reconstruction"):
            assert isinstance(line[key], float) and math.isfinite(line[key]), key
        assert line["epoch_seconds"] >= 0 and "partial_epoch" not in line
        assert line["train_loss"] == pytest.approx(line["train_reconstruction"] + line["train_kl"], rel=1e-5)

    config = json.loads((run / "config.json").read_text())
    assert config["model_name"] == "vae" and config["vaelab_version"] == vaelab.__version__
    assert config["image_shape"] == [1, 6, 6]
    assert config["model"]["latent_dim"] == 3 and config["model"]["hidden"] == [16]
    assert config["train"]["epochs"] == 2 and config["train"]["batch_size"] == 8
    assert config["data"]["name"] == str(data)

    # model.safetensors holds the final weights: the checkpoint's, and they reproduce the logged val loss
    final = weights(run)
    state = load_training_state(run)
    assert same_tensors(final, {k: v for k, v in state["model"].items()})
    assert state["progress"]["step"] == 10 and state["progress"]["epoch"] == 2
    model = vaelab.load(run)
    run_config = load_run_config(run)
    _, val_split = training_splits(load_data(run_config.data), run_config.data)
    with torch.random.fork_rng():
        torch.manual_seed(trainer_module.VALIDATION_SEED)
        (batch,) = BatchIterator(val_split, 500, shuffle=False)
        val_loss = model.validation_loss(batch)["loss"].item()
    assert val_loss == pytest.approx(metrics[-1]["val_loss"], rel=1e-5)

    # best.safetensors: the weights of the epoch with the lowest validation loss
    best = read_tensors(run / "checkpoints" / "best.safetensors")
    last_is_best = metrics[1]["val_loss"] < metrics[0]["val_loss"]
    assert same_tensors(best, final) == last_is_best


def test_training_lowers_the_loss(tmp_path, data):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "6", "lr=1e-2") == 0
    metrics = read_metrics(run)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 1.0
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]


def test_max_steps_stops_at_that_step_mid_epoch(tmp_path, data):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "5", "--max-steps", "7") == 0
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [5, 7]
    assert metrics[-1]["epoch"] == 2 and metrics[-1]["partial_epoch"] is True
    progress = load_training_state(run)["progress"]
    assert (progress["step"], progress["epoch"], progress["batch_in_epoch"]) == (7, 1, 2)
    assert same_tensors(weights(run), load_training_state(run)["model"])


def test_max_steps_beyond_the_epochs_stops_at_the_epochs(tmp_path, data):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "1", "--max-steps", "100") == 0
    assert [m["step"] for m in read_metrics(run)] == [5]


def _record_checkpoints(monkeypatch) -> list[tuple[int, int]]:
    """Spy on the trainer's checkpoint writes: (step, batch_in_epoch) of each."""
    saved = []
    original = trainer_module.save_training_state

    def spy(run_dir, state):
        saved.append((state["progress"]["step"], state["progress"]["batch_in_epoch"]))
        original(run_dir, state)

    monkeypatch.setattr(trainer_module, "save_training_state", spy)
    return saved


def test_save_every_writes_checkpoints_mid_epoch(tmp_path, data, monkeypatch):
    saved = _record_checkpoints(monkeypatch)
    assert train(tmp_path / "a", data, "--epochs", "2") == 0
    # epoch ends only (batch_in_epoch is reset for the next epoch), then the finished run's one
    assert saved == [(5, 0), (10, 0), (10, 0)]
    saved.clear()
    assert train(tmp_path / "b", data, "--epochs", "2", "--save-every", "2") == 0
    # every second step, wherever it falls in the epoch, and at each epoch end as before
    assert saved == [(2, 2), (4, 4), (5, 0), (6, 1), (8, 3), (10, 5), (10, 0), (10, 0)]


def test_a_crash_resumes_from_the_save_every_checkpoint(tmp_path, data, monkeypatch, capsys):
    """A run that dies mid-epoch (not an interrupt: no checkpoint on the way out) continues from its
    last --save-every checkpoint, and ends exactly where an uninterrupted run does."""
    reference = tmp_path / "reference"
    assert train(reference, data, "--epochs", "3", "--max-steps", "12", "binarize=dynamic") == 0

    crashed = tmp_path / "crashed"
    original = VAE.train_step

    def crash_at_step_9(self, batch, step, updater):
        if step == 8:  # the 9th step, one after the step-8 checkpoint
            raise RuntimeError("simulated crash")
        return original(self, batch, step, updater)

    monkeypatch.setattr(VAE, "train_step", crash_at_step_9)
    assert train(crashed, data, "--epochs", "3", "--max-steps", "12", "--save-every", "4", "binarize=dynamic") == 1
    assert error_lines(capsys.readouterr().err) == [
        "vaelab: error: RuntimeError: simulated crash (rerun with --debug for the traceback)"]
    assert load_training_state(crashed)["progress"]["step"] == 8
    monkeypatch.setattr(VAE, "train_step", original)

    assert resume(crashed, "--max-steps", "12") == 0
    assert same_tensors(weights(crashed), weights(reference))
    assert read_metrics(crashed) == read_metrics(reference)


# -- determinism and resuming ----------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_run_and_another_seed_another(tmp_path, data):
    runs = {}
    for name, seed in [("a", "3"), ("b", "3"), ("c", "4")]:
        assert train(tmp_path / name, data, "--epochs", "2", "--seed", seed, "binarize=dynamic") == 0
        runs[name] = (weights(tmp_path / name), read_metrics(tmp_path / name))
    assert same_tensors(runs["a"][0], runs["b"][0])
    assert runs["a"][1] == runs["b"][1]
    assert not same_tensors(runs["a"][0], runs["c"][0])
    assert runs["a"][1] != runs["c"][1]


def test_the_initial_weights_follow_the_seed(tmp_path, data):
    """--max-steps 0 saves the weights as built: they must be a function of --seed alone, not of
    whatever else drew from the global RNG before (here, an earlier run in the same process)."""
    for name, seed in [("a", "0"), ("b", "0"), ("c", "1")]:
        torch.rand(17)  # disturb the global RNG between runs
        assert train(tmp_path / name, data, "--max-steps", "0", "--seed", seed) == 0
    a, b, c = (weights(tmp_path / name) for name in "abc")
    assert same_tensors(a, b)
    assert not same_tensors(a, c)


def _state_without_clock(run_dir):
    state = load_training_state(run_dir)
    state["progress"].pop("epoch_seconds")
    return state


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path, data):
    """binarize=dynamic draws fresh data noise every batch; 7 and 13 both stop mid-epoch."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train(whole, data, "--epochs", "5", "--max-steps", "13", "binarize=dynamic") == 0

    assert train(resumed, data, "--epochs", "5", "--max-steps", "7", "binarize=dynamic") == 0
    first = read_metrics(resumed)
    assert [m["step"] for m in first] == [5, 7] and first[-1]["partial_epoch"]
    assert not same_tensors(weights(resumed), weights(whole))
    assert resume(resumed, "--max-steps", "13") == 0

    assert same_tensors(weights(resumed), weights(whole))
    assert same_tensors(read_tensors(resumed / "checkpoints" / "best.safetensors"),
                        read_tensors(whole / "checkpoints" / "best.safetensors"))
    metrics = read_metrics(resumed)
    assert [m["step"] for m in metrics] == [5, 10, 13]  # the partial line of step 7 was replaced
    assert metrics == read_metrics(whole)
    assert_same_state(_state_without_clock(resumed), _state_without_clock(whole))
    assert load_run_config(resumed).train == load_run_config(whole).train


def test_resume_after_whole_epochs_with_more_epochs(tmp_path, data):
    extra = ["binarize=dynamic", "schedule=step", "lr_step_size=1", "lr_gamma=0.5"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train(whole, data, "--epochs", "3", *extra) == 0
    assert train(resumed, data, "--epochs", "2", *extra) == 0
    assert len(read_metrics(resumed)) == 2
    assert resume(resumed, "--epochs", "3") == 0

    assert same_tensors(weights(resumed), weights(whole))
    metrics = read_metrics(resumed)
    assert metrics == read_metrics(whole)
    assert [m["lr"] for m in metrics] == pytest.approx([5e-4, 2.5e-4, 1.25e-4])  # the schedule resumed too
    assert_same_state(_state_without_clock(resumed), _state_without_clock(whole))
    assert load_run_config(resumed).train.epochs == 3


def test_resume_when_already_done_changes_nothing(tmp_path, data):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "1") == 0
    before, metrics = weights(run), read_metrics(run)
    assert resume(run) == 0
    assert same_tensors(weights(run), before) and read_metrics(run) == metrics


def test_resume_keeps_the_saved_config(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "1") == 0
    capsys.readouterr()
    assert resume(run, "lr=0.5") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("vaelab: error: --resume: the command line differs from the saved run in "
                           "lr= (saved 0.001, given 0.5); only --epochs")
    assert train(run, data, "--resume", "--epochs", "1") == 0  # the same command line continues
    assert "already finished at step 5" in capsys.readouterr().err
    assert train(run, data, "--resume", "latent_dim=4") == 2
    assert "latent_dim= (saved 3, given 4)" in capsys.readouterr().err


def test_overwrite_replaces_the_run_and_keeps_other_files(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "2") == 0
    (run / "notes.txt").write_text("mine")
    assert train(run, data, "--epochs", "1") == 2
    assert "already holds a run" in error_lines(capsys.readouterr().err)[0]
    assert len(read_metrics(run)) == 2  # untouched
    assert train(run, data, "--epochs", "1", "--overwrite") == 0
    assert [m["epoch"] for m in read_metrics(run)] == [1]
    assert (run / "notes.txt").read_text() == "mine"


# -- TensorBoard, early stopping, failures -------------------------------------------------------------

def test_tensorboard_event_files_hold_the_epoch_scalars(tmp_path, data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert train(run, data, "--epochs", "2", tensorboard=True) == 0
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    accumulator = EventAccumulator(str(run / "tensorboard"))
    accumulator.Reload()
    scalars = accumulator.Scalars("epoch/val_loss")
    metrics = read_metrics(run)
    assert [s.step for s in scalars] == [m["step"] for m in metrics]
    assert [s.value for s in scalars] == pytest.approx([m["val_loss"] for m in metrics], rel=1e-6)
    assert "epoch/train_loss" in accumulator.Tags()["scalars"]


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path, data, monkeypatch):
    losses = iter([5.0, 4.0, 4.5, 4.2, 3.0, 2.0])
    monkeypatch.setattr(trainer_module.Trainer, "validate", lambda self: {"loss": next(losses)})
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "6", "early_stopping=2") == 0
    assert [m["val_loss"] for m in read_metrics(run)] == [5.0, 4.0, 4.5, 4.2]


def test_best_checkpoint_holds_the_weights_of_the_lowest_validation_loss(tmp_path, data, monkeypatch):
    def scripted(losses):
        values = iter(losses)
        monkeypatch.setattr(trainer_module.Trainer, "validate", lambda self: {"loss": next(values)})

    scripted([5.0, 4.0])
    assert train(tmp_path / "two", data, "--epochs", "2") == 0
    scripted([5.0, 4.0, 4.5])  # the same run one epoch longer, whose last epoch is worse
    assert train(tmp_path / "three", data, "--epochs", "3") == 0
    best = read_tensors(tmp_path / "three" / "checkpoints" / "best.safetensors")
    assert same_tensors(best, weights(tmp_path / "two"))
    assert not same_tensors(best, weights(tmp_path / "three"))
    assert vaelab.load(tmp_path / "three", checkpoint="best").state_dict().keys() == best.keys()


def test_a_nan_loss_stops_with_exit_1_and_keeps_the_last_checkpoint(tmp_path, data, monkeypatch, capsys):
    original = VAE.loss

    def nan_at_step_7(self, batch, step=None):
        terms = original(self, batch, step)
        if step == 6:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(VAE, "loss", nan_at_step_7)
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "3") == 1
    stderr = capsys.readouterr().err
    (line,) = error_lines(stderr)
    assert "step 7: the loss term 'loss' became nan" in line and "intact" in line
    assert "Traceback" not in stderr
    assert load_training_state(run)["progress"]["step"] == 5
    assert [m["step"] for m in read_metrics(run)] == [5]
