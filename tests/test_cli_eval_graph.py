"""`vaelab eval` with every metric and `vaelab graph` for every model, end to end on tiny data."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tiny_runs import error_lines, write_images
from vaelab.cli import main
from vaelab.registry import MODELS

RUNS = {  # model -> tiny KEY=VALUE settings
    "vae": ["hidden=[16]", "latent_dim=2"],
    "cvae": ["hidden=[16]", "latent_dim=2"],
    "ae": ["hidden=[16]", "latent_dim=2"],
    "gan": ["latent_dim=2", "g_hidden=[16]", "d_hidden=[16]"],
    "rbm": ["num_hidden=6", "burn_in=5", "binarize=dynamic"],
}
METRICS = {  # model -> the metrics that apply to it
    "vae": ["elbo", "iw", "decoder_ais", "parzen", "reconstruction", "latent", "sample_quality"],
    "cvae": ["elbo", "iw", "decoder_ais", "parzen", "latent", "sample_quality"],
    "ae": ["decoder_ais", "parzen", "reconstruction"],
    "gan": ["decoder_ais", "parzen"],
    "rbm": ["rbm_ais", "parzen", "reconstruction"],
}
FAST = ["--k", "20", "--samples", "30", "--ais-steps", "20", "--ais-runs", "4", "--limit", "6"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = write_images(root / "tiny.npz", num_train=60, num_test=10, labels=True)
    for name, settings in RUNS.items():
        assert main(["train", name, "--data", str(data), "--out", str(root / name), "--epochs", "1",
                     "batch_size=8", "tensorboard=false", *settings]) == 0
    return root


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_applicable_metric_writes_value_stderr_and_settings(name, runs, tmp_path):
    out = tmp_path / "eval.json"
    sigma = ["--sigma", "0.3"] if name == "gan" else []
    assert main(["eval", str(runs / name), "--metrics", ",".join(METRICS[name]), *FAST, *sigma,
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for result in results.values():
        assert set(result) == {"value", "stderr", "settings"}
        assert result["settings"]["split"] == "test"
    if name == "rbm":
        assert results["rbm_log_z"]["settings"]["num_steps"] == 20
        assert results["rbm_log_likelihood"]["value"] < 0
    if name in ("vae", "cvae"):
        assert results["iw_bound"]["value"] >= results["elbo"]["value"] - 1.0


def test_a_metric_that_does_not_apply_is_one_line_exit_2(runs, capsys):
    assert main(["eval", str(runs / "gan"), "--metrics", "elbo"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "does not apply" in lines[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_graph_draws_every_model(name, tmp_path):
    png, svg = tmp_path / f"{name}.png", tmp_path / f"{name}.svg"
    assert main(["graph", name, "--out", str(png)]) == 0
    assert main(["graph", name, "--out", str(svg)]) == 0
    assert Image.open(png).size[0] > 300
    assert svg.read_text().lstrip().startswith("<?xml")


def test_graph_highlights_the_kl_only_in_the_vae_family():
    highlighted = {name: [n.name for n in cls.training_graph().nodes if n.highlight] for name, cls in MODELS.items()}
    assert highlighted["vae"] == ["kl"] and highlighted["cvae"] == ["kl"]
    assert all(not nodes for name, nodes in highlighted.items() if name not in ("vae", "cvae"))


def test_graph_rejects_a_bad_extension(tmp_path, capsys):
    assert main(["graph", "vae", "--out", str(tmp_path / "g.pdf")]) == 2
    assert len(error_lines(capsys.readouterr().err)) == 1


@pytest.mark.parametrize("name", ["vae", "cvae"])
def test_iw_compile_gives_the_eager_bound_and_says_so(name, runs, tmp_path):
    figures = {}
    for flag in ([], ["--iw-compile"]):
        out = tmp_path / f"eval{len(flag)}.json"
        assert main(["eval", str(runs / name), "--metrics", "iw", *FAST, *flag, "--json", str(out)]) == 0
        figures[bool(flag)] = json.loads(out.read_text())["iw_bound"]
    assert figures[True]["settings"]["compiled"] is True and figures[False]["settings"]["compiled"] is False
    assert figures[True]["value"] == pytest.approx(figures[False]["value"], abs=1e-4)  # the same seed: the same z
