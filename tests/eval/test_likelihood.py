"""The ELBO and the importance-weighted bound L_k against the exact log p(x) of a linear-Gaussian VAE."""

import pytest
import torch

from linear_gaussian import exact_log_prob, make_linear_gaussian_vae, sample_data
from vaelab.compiled import CompiledWithFallback
from vaelab.data.datasets import Split
from vaelab.errors import VaelabError
from vaelab.eval.likelihood import elbo, importance_weighted_bound


def _split(x):
    return Split(images=x, labels=None)


def test_exact_posterior_makes_every_bound_exact():
    model = make_linear_gaussian_vae(exact_posterior=True)
    x = sample_data(model, 50)
    exact = exact_log_prob(model, x).mean().item()
    # With q equal to the posterior every importance weight is p(x): L_k is exact for any k, and the
    # ELBO is exact in expectation (its reconstruction term is a Monte Carlo average).
    assert elbo(model, _split(x), num_samples=4000)["elbo"].value == pytest.approx(exact, abs=0.02)
    for k in (1, 7, 100):
        assert importance_weighted_bound(model, _split(x), k=k).value == pytest.approx(exact, abs=1e-4)


def test_iw_bound_rises_with_k_and_converges_to_log_px():
    model = make_linear_gaussian_vae(exact_posterior=False, perturbation=0.4)
    x = sample_data(model, 200)
    exact = exact_log_prob(model, x).mean().item()
    elbo_value = elbo(model, _split(x), num_samples=1000)["elbo"].value
    bounds = [importance_weighted_bound(model, _split(x), k=k, seed=k).value for k in (1, 10, 100, 1000, 5000)]
    assert elbo_value < exact - 0.5, "the perturbed encoder should leave a visible ELBO gap"
    assert bounds[0] == pytest.approx(elbo_value, abs=0.3)  # L_1 is a one-sample ELBO estimate
    # L_k rises with k in expectation; from k=1000 on the remaining rise (< 0.02 nats) is below the
    # noise of a 200-example estimate, so the last step is compared with k=100 instead.
    assert all(a < b for a, b in zip(bounds[:4], bounds[1:4])), bounds
    assert bounds[4] > bounds[2], bounds
    assert bounds[1] > elbo_value + 0.5
    assert abs(exact - bounds[-1]) < 0.05, (bounds, exact)


def test_chunked_log_sum_exp_is_exact():
    model = make_linear_gaussian_vae(exact_posterior=True)
    x = sample_data(model, 10)
    chunked = importance_weighted_bound(model, _split(x), k=50, max_rows=7, batch_size=3).value
    assert chunked == pytest.approx(exact_log_prob(model, x).mean().item(), abs=1e-4)


def test_chunking_does_not_change_the_estimate_beyond_noise():
    model = make_linear_gaussian_vae(exact_posterior=False, perturbation=0.4)
    x = sample_data(model, 100)
    seeds = range(6)  # one seed's L_500 over 100 examples varies by ~0.03 nats
    whole = sum(importance_weighted_bound(model, _split(x), k=500, seed=s).value for s in seeds) / 6
    chunked = sum(importance_weighted_bound(model, _split(x), k=500, seed=s, max_rows=7, batch_size=3).value
                  for s in seeds) / 6
    assert chunked == pytest.approx(whole, abs=0.03)


def test_estimates_report_settings_and_stderr():
    model = make_linear_gaussian_vae()
    x = sample_data(model, 30)
    estimate = importance_weighted_bound(model, _split(x), k=20)
    assert estimate.settings["k"] == 20 and estimate.settings["examples"] == 30
    per_example = exact_log_prob(model, x)
    assert estimate.stderr == pytest.approx(per_example.std().item() / 30**0.5, rel=1e-3)


def test_bf16_decoder_rounds_the_bound_but_keeps_the_proposal_exact():
    """precision="bf16" runs the decoder's matmul in bf16: with the exact posterior as proposal
    the fp32 weights are all log p(x), and the bf16 ones stay within the rounding of the decoder's
    means (a few hundredths of a nat here), so L_k moves by that much and no more."""
    model = make_linear_gaussian_vae(exact_posterior=True)
    x = sample_data(model, 50)
    exact = exact_log_prob(model, x).mean().item()
    fp32 = importance_weighted_bound(model, _split(x), k=100).value
    bf16 = importance_weighted_bound(model, _split(x), k=100, precision="bf16")
    assert bf16.settings["precision"] == "bf16"
    assert bf16.value != fp32  # the bf16 path ran
    assert bf16.value == pytest.approx(exact, abs=0.05)
    with pytest.raises(VaelabError, match="precision must be one of fp32, bf16"):
        importance_weighted_bound(model, _split(x), k=10, precision="fp16")


def test_compiled_log_likelihood_gives_the_same_exact_bound():
    """compile=True runs log p(x|z) through torch.compile: with the exact posterior L_k is still
    exactly log p(x), and with the same seed it is the eager estimate to float rounding."""
    model = make_linear_gaussian_vae(exact_posterior=False, perturbation=0.4)
    x = sample_data(model, 40)
    eager = importance_weighted_bound(model, _split(x), k=64, seed=3)
    compiled = importance_weighted_bound(model, _split(x), k=64, seed=3, compile=True)
    assert compiled.settings["compiled"] is True and eager.settings["compiled"] is False
    assert compiled.value == pytest.approx(eager.value, abs=1e-4)
    exact_model = make_linear_gaussian_vae(exact_posterior=True)
    exact = exact_log_prob(exact_model, x).mean().item()
    assert importance_weighted_bound(exact_model, _split(x), k=16, compile=True).value == pytest.approx(exact, abs=1e-4)


def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_compile(function, **_):
        def compiled(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = make_linear_gaussian_vae(exact_posterior=False, perturbation=0.4)
    x = sample_data(model, 20)
    eager = importance_weighted_bound(model, _split(x), k=30, seed=1, batch_size=5)
    with pytest.warns(RuntimeWarning, match="torch.compile of log p\\(x\\|z\\) failed \\(InvalidCxxCompiler") as caught:
        fallback = importance_weighted_bound(model, _split(x), k=30, seed=1, batch_size=5, compile=True)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1  # once, not per batch
    assert fallback.value == eager.value and fallback.settings["compiled"] is False


def test_the_fallback_still_raises_what_eager_raises(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda function, **_: function)
    wrapped = CompiledWithFallback(lambda a, b: a @ b, "a product")
    with pytest.raises(RuntimeError, match="cannot be multiplied"), pytest.warns(RuntimeWarning, match="a product"):
        wrapped(torch.ones(2, 3), torch.ones(2, 3))
