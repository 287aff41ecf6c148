"""`vaelab compare` end to end on tiny data with a tiny budget: the report, results.json in the
`vaelab eval --json` form, a failing model, reuse of finished runs, resumption of an interrupted
one, `vaelab report`, and the same job from Python."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import vaelab
from tiny_runs import error_lines, write_images
from vaelab.checkpoint import load_training_state
from vaelab.cli import main
from vaelab.comparison.budget import BUDGETS, load_budget
from vaelab.comparison.report_data import protocol
from vaelab.comparison.runner import Job, train
from vaelab.errors import VaelabError
from vaelab.models.vae import VAE
from vaelab.registry import MODELS

EVAL = {"iw_k": 10, "limit": 6, "num_samples": 40, "decoder_ais_images": 3, "decoder_ais_steps": 6,
        "decoder_ais_chains": 2, "rbm_ais_runs": 4, "rbm_ais_steps": 20}
RUNS = {
    "vae": {"model": "vae", "settings": {"hidden": [16], "latent_dim": 2, "epochs": 2, "batch_size": 8}},
    "rbm": {"model": "rbm", "settings": {"num_hidden": 6, "epochs": 2, "batch_size": 8, "burn_in": 5}},
    "gan": {"model": "gan", "settings": {"latent_dim": 2, "g_hidden": [16], "d_hidden": [16], "epochs": 2,
                                         "batch_size": 8}},
}


def write_budget(path: Path, runs: dict) -> Path:
    path.write_text(yaml.safe_dump({"data": "unused", "eval": EVAL, "models": runs}))
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = write_images(root / "tiny.npz", num_train=60, num_test=10, labels=True)
    gaussian = {"model": "vae", "settings": {**RUNS["vae"]["settings"], "likelihood": "gaussian"},
                "eval": {"limit": 3}}  # a run's own eval override (the standard budget's conv VAE has one)
    broken = {**RUNS, "vae_gaussian": gaussian, "broken": {"model": "vae", "settings": {"latent_dim": 0, "epochs": 1}}}
    budget = write_budget(root / "budget.yaml", broken)
    out = root / "out"
    import os
    os.environ["VAELAB_CACHE"] = str(root / "cache")
    argv = ["compare", "--budget", str(budget), "--data", str(data), "--out", str(out)]
    status = main(argv)
    return {"root": root, "data": data, "budget": budget, "out": out, "status": status, "argv": argv}


def test_every_shipped_budget_names_only_registered_models():
    for name in BUDGETS:
        budget = load_budget(name)
        assert budget.runs and all(spec.model in MODELS for spec in budget.runs.values())
        assert {spec.model for spec in budget.runs.values()} == set(MODELS), name  # every model is compared


def test_a_failing_model_is_an_error_in_the_report_and_the_rest_is_written(compared, capsys):
    assert compared["status"] == 1
    out = compared["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["broken"]["status"] == "failed"
    assert "latent_dim" in summary["models"]["broken"]["error"]
    assert {name for name, entry in summary["models"].items() if entry["status"] == "ok"} == {*RUNS, "vae_gaussian"}
    html = (out / "report.html").read_text()
    assert "broken" in html and "failed" in html and (out / "report.md").is_file()


def test_results_map_each_model_to_eval_json_metrics(compared):
    results = json.loads((compared["out"] / "results.json").read_text())
    assert set(results) == {*RUNS, "vae_gaussian", "data"}
    for metrics in results.values():
        for result in metrics.values():
            assert set(result) == {"value", "stderr", "settings"}
    assert {"iw_bound", "decoder_ais", "parzen", "frechet_distance", "reconstruction_mse"} <= set(results["vae"])
    assert {"rbm_log_likelihood", "parzen", "reconstruction_mse"} <= set(results["rbm"])
    assert "iw_bound" not in results["gan"] and "decoder_ais" in results["gan"]
    assert set(results["data"]) == {"parzen", "frechet_distance", "precision", "recall", "mean_pairwise_distance"}
    # every AIS figure carries its convergence check
    for name in ("decoder_ais", "rbm_log_likelihood"):
        model = "vae" if name == "decoder_ais" else "rbm"
        assert "half_steps" in results[model][name]["settings"], name
    # one protocol: decoder AIS of every model under the same Gaussian observation model
    assert all(results[m]["decoder_ais"]["settings"]["observation"].startswith("gaussian") for m in ("vae", "gan"))
    for cost in ("parameters", "train_seconds", "samples_per_second", "peak_memory_mb"):
        assert results["vae"][cost]["value"] > 0, cost


def test_a_gaussian_vaes_bound_is_a_density_of_continuous_pixels_in_its_own_column(compared):
    results = json.loads((compared["out"] / "results.json").read_text())
    assert "iw_bound" in results["vae"] and "iw_bound" not in results["vae_gaussian"]
    assert results["vae_gaussian"]["continuous_iw_bound"]["settings"]["bound_of"] == "log p(x)"
    columns = json.loads((compared["out"] / "summary.json").read_text())["columns"]
    assert {"key": "continuous_iw_bound", "protocol": "continuous, model's own Gaussian"}.items() <= \
        next(column for column in columns if column["key"] == "continuous_iw_bound").items()


def test_a_runs_eval_override_changes_only_that_run_and_the_protocol_says_so(compared):
    results = json.loads((compared["out"] / "results.json").read_text())
    assert results["vae_gaussian"]["continuous_iw_bound"]["settings"]["examples"] == 3
    assert results["vae_gaussian"]["reconstruction_mse"]["settings"]["examples"] == 3
    assert results["vae"]["iw_bound"]["settings"]["examples"] == EVAL["limit"]
    protocol = json.loads((compared["out"] / "summary.json").read_text())["protocol"]
    assert "vae_gaussian spends differently from the other runs: limit=3 (the others: 6)." in protocol
    assert "limit=3 (the others: 6)" in (compared["out"] / "report.md").read_text()


def test_the_protocol_names_a_run_that_sets_its_own_pixel_model():
    """The standard budget's GSN trains on grey levels (binarize=none), against its model's default."""
    standard, quick = protocol(load_budget("standard")), protocol(load_budget("quick"))
    assert "gsn sets binarize=none: it trains on the continuous pixels." in standard
    assert not any("sets binarize=" in line for line in quick)


def test_an_unknown_eval_override_is_a_config_error(tmp_path):
    runs = {**RUNS, "vae": {**RUNS["vae"], "eval": {"iw_samples": 5}}}
    with pytest.raises(VaelabError, match="run vae's eval must map eval keys"):
        load_budget(str(write_budget(tmp_path / "budget.yaml", runs)))
    runs = {**RUNS, "vae": {**RUNS["vae"], "eval": {"decoder_ais_gradients": "fp16"}}}
    with pytest.raises(VaelabError, match="decoder_ais_gradients"):
        load_budget(str(write_budget(tmp_path / "budget.yaml", runs)))


def test_rerunning_reuses_finished_runs(compared, capfd):
    out = compared["out"]
    evals = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/compare_eval.json")}
    weights = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/model.safetensors")}
    capfd.readouterr()
    assert main(compared["argv"]) == 1  # the broken run still fails
    assert "already finished" in capfd.readouterr().err  # said by the runs' own processes
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/compare_eval.json")} == evals
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/model.safetensors")} == weights


def test_an_interrupted_run_is_resumed(compared, tmp_path, monkeypatch):
    out = tmp_path / "out"
    budget = write_budget(tmp_path / "budget.yaml", {"vae": RUNS["vae"]})
    run = out / "runs" / "vae"
    original = VAE.train_step

    def interrupted(self, batch, step, updater):
        if step == 9:  # in the second epoch
            raise KeyboardInterrupt
        return original(self, batch, step, updater)

    # the run as compare trains it (the same command line), cut short by an interrupt
    job = Job(load_budget(str(budget)).runs["vae"], run, str(compared["data"]), None, 0, load_budget(str(budget)).eval)
    monkeypatch.setattr(VAE, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(job)
    monkeypatch.setattr(VAE, "train_step", original)
    assert load_training_state(run)["progress"]["step"] == 9 and not (run / "model.safetensors").exists()
    assert main(["compare", "--budget", str(budget), "--data", str(compared["data"]), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and lines[-1]["step"] == 14


def test_report_rebuilds_the_report_from_the_saved_runs(compared, capsys):
    out = compared["out"]
    (out / "report.html").unlink()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out


def test_the_same_job_from_python(compared, tmp_path):
    budget = write_budget(tmp_path / "budget.yaml", {"vae": RUNS["vae"]})
    results = vaelab.compare(budget=str(budget), data=str(compared["data"]), out=tmp_path / "out")
    assert set(results) == {"vae", "data"}
    scores = vaelab.evaluate(tmp_path / "out" / "runs" / "vae", metrics=["iw"], k=5, limit=4)
    assert set(scores) == {"iw_bound"} and scores["iw_bound"]["settings"]["k"] == 5


def test_bad_input_is_one_line(compared, capsys):
    assert main(["compare", "--budget", "huge"]) == 2
    assert "unknown budget 'huge'" in error_lines(capsys.readouterr().err)[0]
    assert main(["compare", "--budget", str(compared["budget"]), "--models", "vae,nope",
                 "--data", str(compared["data"]), "--out", str(compared["root"] / "x")]) == 2
    assert "unknown model 'nope'" in error_lines(capsys.readouterr().err)[0]


def test_collapse_flags_name_each_model_below_the_ratio_of_the_data_rows_spread():
    from vaelab.comparison.report_data import COLLAPSE_RATIO, collapse_flags, report_flags

    def spread(value):
        return {"mean_pairwise_distance": {"value": value, "stderr": 0.1, "settings": {}}}

    results = {"data": spread(10.0), "blurry": spread(7.9), "fine": spread(10.0 * COLLAPSE_RATIO), "rbm": {}}
    flags = collapse_flags(results)
    assert len(flags) == 1 and "blurry" in flags[0] and "0.79 of the data's 10.00" in flags[0]
    assert report_flags(results) == flags  # nothing else to flag here
    assert collapse_flags({"blurry": spread(1.0)}) == []  # no data row: nothing to compare with


def test_two_jobs_at_a_time_give_the_same_results_as_one(compared, tmp_path):
    out = tmp_path / "parallel"
    status = main(["compare", "--budget", str(compared["budget"]), "--data", str(compared["data"]), "--out", str(out),
                   "--jobs", "2"])
    assert status == 1  # the broken run fails here too
    one = json.loads((compared["out"] / "results.json").read_text())
    two = json.loads((out / "results.json").read_text())
    assert set(one) == set(two)
    for model, metrics in one.items():  # the same seeded runs, only scheduled differently
        for name, result in metrics.items():
            if name not in ("train_seconds", "samples_per_second", "peak_memory_mb"):
                assert two[model][name]["value"] == result["value"], (model, name)
    with pytest.raises(VaelabError, match="--jobs must be at least 1"):
        vaelab.compare(budget=str(compared["budget"]), data=str(compared["data"]), out=tmp_path / "x", jobs=0)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc to read a process's peak")
def test_peak_memory_is_the_run_process_own_not_the_orchestrators(compared, tmp_path):
    """A child spawned by a large process inherits its ru_maxrss across exec; the report must not."""
    ballast = bytearray(1 << 30)  # 1 GiB held by this process while the run's child trains and scores
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touched, so it is resident
    out = tmp_path / "memory"
    main(["compare", "--budget", str(compared["budget"]), "--data", str(compared["data"]), "--out", str(out),
          "--models", "vae"])
    peak = json.loads((out / "results.json").read_text())["vae"]["peak_memory_mb"]
    assert 0 < peak["value"] < 1024 and "VmHWM" in peak["settings"]["measured"], peak
    del ballast


def test_start_first_runs_start_before_the_others_and_the_report_keeps_the_budget_order(tmp_path):
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump({"data": "unused", "eval": EVAL, "models": RUNS, "start_first": ["gan"]}, sort_keys=False))
    budget = load_budget(str(path))
    assert budget.start_order() == ["gan", "vae", "rbm"] and list(budget.runs) == ["vae", "rbm", "gan"]
    assert budget.with_runs({"vae": budget.runs["vae"]}).start_order() == ["vae"]  # --models narrows it
    path.write_text(yaml.safe_dump({"data": "unused", "eval": EVAL, "models": RUNS, "start_first": ["gsn"]}))
    with pytest.raises(VaelabError, match="start_first must list runs"):
        load_budget(str(path))
