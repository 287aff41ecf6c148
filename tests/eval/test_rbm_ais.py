"""AIS for the RBM partition function against exact enumeration (Salakhutdinov & Murray 2008)."""

import math

import pytest
import torch
import torch.nn.functional as F

from vaelab.data.datasets import Split
from vaelab.errors import VaelabError
from vaelab.eval.likelihood import Estimate
from vaelab.eval.rbm_ais import (
    _convergence,
    ais_log_weights,
    ais_schedule,
    base_log_partition,
    base_rate_visible_bias,
    half_schedule,
    rbm_log_likelihood,
    rbm_log_partition_ais,
    softplus_difference,
)
from vaelab.models.rbm import RBM, RBMConfig, binary_states


def make_rbm(num_visible: int, num_hidden: int, weight_std: float, seed: int, bias_std: float = 0.5) -> RBM:
    torch.manual_seed(seed)
    rbm = RBM(RBMConfig(num_hidden=num_hidden, init_std=weight_std), (1, 1, num_visible))
    with torch.no_grad():
        rbm.visible_bias.normal_(0.0, bias_std)
        rbm.hidden_bias.normal_(0.0, bias_std)
    return rbm


def exact_visible_marginals(rbm: RBM) -> torch.Tensor:
    """p(v_i = 1) by enumerating the hidden layer: sum_h p(h) sigmoid(b + W h)."""
    weight, b, c = rbm.weight.detach().double(), rbm.visible_bias.detach().double(), rbm.hidden_bias.detach().double()
    h = binary_states(rbm.config.num_hidden)  # (2^H, H)
    visible_input = h @ weight.t() + b  # (2^H, D)
    log_p_h = torch.log_softmax(h @ c + F.softplus(visible_input).sum(-1), 0)  # (2^H,)
    return (log_p_h.exp()[:, None] * torch.sigmoid(visible_input)).sum(0)


def exact_log_prob(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    """log p(v) = log sum_h exp(-E(v, h)) - log Z from the energy, by enumerating h (not via F)."""
    h = binary_states(rbm.config.num_hidden, dtype=torch.float32)  # (S, H)
    n, s = len(v), len(h)
    energies = rbm.energy(v.repeat_interleave(s, 0), h.repeat(n, 1)).double().view(n, s)
    return torch.logsumexp(-energies, 1) - rbm.log_partition_exact()


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the schedule, the base model and the weight increments ------------------------------------

def test_default_schedule_is_the_papers():
    betas = ais_schedule()
    assert len(betas) == 14501 and betas[0] == 0 and betas[-1] == 1
    assert betas[500].item() == pytest.approx(0.5) and betas[4500].item() == pytest.approx(0.9)
    steps = betas.diff()
    for segment, size in ((slice(0, 500), 1e-3), (slice(500, 4500), 1e-4), (slice(4500, 14500), 1e-5)):
        assert torch.allclose(steps[segment], torch.full_like(steps[segment], size), rtol=1e-6)
    scaled = ais_schedule(1450)  # a tenth of the steps: 50, 400, 1000
    assert len(scaled) == 1451 and scaled[50].item() == pytest.approx(0.5) and scaled[450].item() == pytest.approx(0.9)
    assert torch.equal(ais_schedule(2), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    for num_steps in (1, 3, 7, 100):
        assert bool((ais_schedule(num_steps).diff() > 0).all()) and len(ais_schedule(num_steps)) == num_steps + 1
    with pytest.raises(VaelabError):
        ais_schedule(0)


def test_base_log_partition_is_the_enumeration_of_the_base_rbm():
    base_bias = torch.randn(10, generator=generator(0)) * 2
    base = RBM(RBMConfig(num_hidden=8), (1, 1, 10))
    with torch.no_grad():
        base.weight.zero_()
        base.visible_bias.copy_(base_bias)
        base.hidden_bias.zero_()
    assert base_log_partition(base_bias, 8) == pytest.approx(base.log_partition_exact().item(), abs=1e-9)
    rbm = make_rbm(10, 8, 0.5, seed=1)
    estimate = rbm_log_partition_ais(rbm, base_bias, num_runs=3, num_steps=5)
    assert estimate.settings["log_z_base"] == pytest.approx(base.log_partition_exact().item(), abs=1e-9)


def test_base_rate_bias_is_the_clamped_log_odds_of_the_pixel_means():
    images = torch.zeros(4, 1, 2, 2)
    images[:2, 0, 0, 0] = 1  # mean 1/2
    images[:, 0, 0, 1] = 1  # always on -> 1 - eps
    images[0, 0, 1, 0] = 0.4  # a grey value: mean 0.1
    bias = base_rate_visible_bias(Split(images), eps=1e-3)
    expected = torch.logit(torch.tensor([0.5, 1 - 1e-3, 0.1, 1e-3], dtype=torch.float64)).float()
    assert torch.allclose(bias, expected, atol=1e-5)


def test_softplus_difference_matches_float64_without_cancellation():
    x = torch.randn(200, 50, generator=generator(0)) * 30  # float32 activations, |x| up to ~150
    for beta, previous in ((1e-3, 0.0), (0.5, 0.4999), (1.0, 0.99999), (0.5, 0.0), (1.0, 0.0), (1.0, 0.5)):
        x64 = x.double()
        exact = F.softplus(beta * x64) - F.softplus(previous * x64)
        got = softplus_difference(x, beta, previous).double()
        assert torch.allclose(got, exact, rtol=1e-5, atol=1e-9), (beta, previous, (got - exact).abs().max())


# -- AIS against exact partition functions -----------------------------------------------------

def test_ais_is_exact_when_the_target_is_the_base_model():
    """Zero weights and visible biases b_A: every p_k is p_A, so every weight is Z_B / Z_A exactly."""
    rbm = make_rbm(12, 6, 0.0, seed=2)
    estimate = rbm_log_partition_ais(rbm, rbm.visible_bias.detach().clone(), num_runs=20, num_steps=50)
    assert estimate.value == pytest.approx(rbm.log_partition_exact().item(), abs=1e-5)
    assert estimate.stderr < 1e-6 and estimate.settings["effective_sample_size"] == pytest.approx(20)


@pytest.mark.parametrize("num_visible, num_hidden, weight_std, base", [
    (10, 8, 0.5, "uniform"), (10, 8, 0.5, "base-rate"),
    (12, 16, 1.0, "uniform"), (12, 16, 1.0, "base-rate"),
    (64, 10, 0.3, "base-rate"),
])
def test_ais_log_z_matches_enumeration(num_visible, num_hidden, weight_std, base):
    rbm = make_rbm(num_visible, num_hidden, weight_std, seed=num_visible + num_hidden)
    exact = rbm.log_partition_exact().item()
    base_bias = torch.logit(exact_visible_marginals(rbm).clamp(1e-3, 1 - 1e-3)).float() if base == "base-rate" else None
    estimate = rbm_log_partition_ais(rbm, base_bias, num_runs=100, num_steps=2000, generator=generator(3))
    assert abs(estimate.value - exact) < 0.1, (estimate.value, exact, estimate.stderr)
    assert estimate.stderr < 0.05
    assert abs(estimate.value - exact) < 5 * estimate.stderr + 0.01  # and within its own error bars


@pytest.mark.parametrize("betas", [[0.0, 1.0], [0.0, 0.5, 1.0]])
@pytest.mark.parametrize("base", ["uniform", "random"])
def test_few_step_ais_weights_are_unbiased_for_z(betas, base):
    """E[w] = Z_B / Z_A for any schedule (Neal 2001): with one or two steps the weights are far from
    constant, so the mean over many runs checks the weights and the Gibbs transition at beta=0.5."""
    rbm = make_rbm(10, 8, 0.6, seed=4)
    base_bias = torch.zeros(10) if base == "uniform" else torch.randn(10, generator=generator(5))
    log_ratio = rbm.log_partition_exact().item() - base_log_partition(base_bias, 8)
    w = torch.exp(ais_log_weights(rbm, base_bias, betas, 40000, generator(6)) - log_ratio)  # E[w] = 1
    stderr = w.std().item() / math.sqrt(len(w))
    assert w.std().item() > 0.3, "the test needs weights that vary"
    assert abs(w.mean().item() - 1) < 4 * stderr, (w.mean().item(), stderr)


def test_stderr_shrinks_with_runs_and_matches_the_spread_over_seeds():
    rbm = make_rbm(12, 16, 1.0, seed=7)
    exact = rbm.log_partition_exact().item()
    few = rbm_log_partition_ais(rbm, num_runs=25, num_steps=100, generator=generator(0))
    many = rbm_log_partition_ais(rbm, num_runs=400, num_steps=100, generator=generator(1))
    assert 2 < few.stderr / many.stderr < 8  # sqrt(400 / 25) = 4
    assert abs(many.value - exact) < 4 * many.stderr + 0.01
    repeats = [rbm_log_partition_ais(rbm, num_runs=25, num_steps=100, generator=generator(10 + s)) for s in range(30)]
    spread = torch.tensor([r.value for r in repeats]).std().item()
    mean_stderr = sum(r.stderr for r in repeats) / len(repeats)
    assert 0.5 < spread / mean_stderr < 2, (spread, mean_stderr)


def test_estimate_settings_and_seeding():
    rbm = make_rbm(10, 8, 0.5, seed=8)
    a = rbm_log_partition_ais(rbm, num_runs=30, num_steps=30, generator=generator(11))
    b = rbm_log_partition_ais(rbm, num_runs=30, num_steps=30, generator=generator(11))
    assert a.value == b.value and a.stderr == b.stderr
    assert rbm_log_partition_ais(rbm, num_runs=30, num_steps=30, generator=generator(12)).value != a.value
    s = a.settings
    assert s["num_runs"] == 30 and s["num_steps"] == 30 and s["seed"] == 11
    assert "0.5->0.9" in s["schedule"] and s["log_z_base"] == pytest.approx(18 * math.log(2))
    # the effective sample size of these very weights (the same generator seed redraws them)
    log_w = ais_log_weights(rbm, torch.zeros(10), ais_schedule(30), 30, generator(11))
    w = torch.exp(log_w - log_w.max())
    ess = (w.sum() ** 2 / w.pow(2).sum()).item()
    assert s["effective_sample_size"] == pytest.approx(ess, rel=1e-9)
    assert 2 < ess < 29  # weights neither equal nor dominated by one run
    low, high = s["log_z_3sd_interval"]
    assert low < a.value < high
    assert rbm_log_partition_ais(rbm, num_runs=5, betas=[0.0, 0.2, 1.0]).settings["num_steps"] == 2
    with pytest.raises(VaelabError):
        rbm_log_partition_ais(rbm, num_runs=5, betas=[0.1, 1.0])
    with pytest.raises(VaelabError):
        rbm_log_partition_ais(rbm, torch.zeros(9), num_runs=5, num_steps=5)


def test_effective_sample_size_of_two_valued_weights():
    """One visible unit of bias log 3, no weights, a uniform base and one step (betas 0, 1): every
    log-weight is b v = 0 or log 3 for v ~ Bernoulli(1/2), so with n1 runs at v = 1 of K,
    Z_hat / Z_A = (n0 + 3 n1) / K and ESS = (n0 + 3 n1)^2 / (n0 + 9 n1), strictly between 1 and K."""
    rbm = RBM(RBMConfig(num_hidden=2), (1, 1, 1))
    with torch.no_grad():
        rbm.weight.zero_()
        rbm.hidden_bias.zero_()
        rbm.visible_bias.fill_(math.log(3.0))
    runs = 40
    estimate = rbm_log_partition_ais(rbm, torch.zeros(1), num_runs=runs, betas=[0.0, 1.0], generator=generator(3))
    log_w = ais_log_weights(rbm, torch.zeros(1), [0.0, 1.0], runs, generator(3))
    on = (log_w - math.log(3.0)).abs() < 1e-6
    assert bool((on | (log_w.abs() < 1e-6)).all())  # each weight is 1 or 3
    n1 = int(on.sum())
    n0 = runs - n1
    assert 10 < n1 < 30
    ess = (n0 + 3 * n1) ** 2 / (n0 + 9 * n1)
    assert 1 < ess < runs
    assert estimate.settings["effective_sample_size"] == pytest.approx(ess, rel=1e-6)
    log_z_base = math.log(2.0) + 2 * math.log(2.0)  # softplus(0) for the visible unit, log 2 per hidden unit
    assert estimate.value == pytest.approx(log_z_base + math.log((n0 + 3 * n1) / runs), abs=1e-6)
    # equal weights (the target is the base model): ESS = K exactly
    rbm_log_z = rbm_log_partition_ais(rbm, rbm.visible_bias.detach().clone(), num_runs=runs, betas=[0.0, 1.0])
    assert rbm_log_z.settings["effective_sample_size"] == pytest.approx(runs, rel=1e-9)


# -- the log-likelihood ------------------------------------------------------------------------

def test_log_likelihood_with_the_exact_log_z_is_exact():
    rbm = make_rbm(10, 8, 1.0, seed=9)
    v = binary_states(10, dtype=torch.float32)[torch.randperm(1024, generator=generator(0))[:300]]
    split = Split(v.view(300, 1, 1, 10))
    per_example = exact_log_prob(rbm, v)
    exact = Estimate(rbm.log_partition_exact().item(), 0.0)
    estimate = rbm_log_likelihood(rbm, split, exact, batch_size=64)  # five batches, the last partial
    assert estimate.value == pytest.approx(per_example.mean().item(), abs=1e-4)
    over_examples = per_example.std().item() / math.sqrt(300)
    assert estimate.stderr == pytest.approx(over_examples, rel=1e-4)
    assert estimate.settings["binary"] and estimate.settings["examples"] == 300
    # log Z's error adds in quadrature and shifts nothing but the value.
    shifted = rbm_log_likelihood(rbm, split, Estimate(exact.value + 0.5, 0.2))
    assert shifted.value == pytest.approx(estimate.value - 0.5, abs=1e-6)
    assert shifted.stderr == pytest.approx(math.hypot(over_examples, 0.2), rel=1e-4)
    assert shifted.settings["log_z"] == exact.value + 0.5 and shifted.settings["log_z_stderr"] == 0.2
    # Grey values are used as probabilities in F(v) and flagged as such.
    grey = rbm_log_likelihood(rbm, Split(torch.full((3, 1, 1, 10), 0.3)), exact)
    assert not grey.settings["binary"]
    assert grey.value == pytest.approx(-rbm.free_energy(torch.full((1, 10), 0.3)).item() - exact.value, abs=1e-4)


def test_log_likelihood_with_ais_log_z_matches_exact():
    rbm = make_rbm(12, 10, 1.0, seed=10)
    v = binary_states(12, dtype=torch.float32)[torch.randperm(4096, generator=generator(1))[:200]]
    exact = exact_log_prob(rbm, v).mean().item()
    log_z = rbm_log_partition_ais(rbm, num_runs=100, num_steps=2000, generator=generator(2))
    estimate = rbm_log_likelihood(rbm, Split(v.view(200, 1, 1, 12)), log_z)
    assert abs(estimate.value - exact) < 0.1
    assert estimate.settings["log_z_settings"]["num_runs"] == 100


# -- the convergence check: the same estimate at half the steps --------------------------------

def test_convergence_check_is_the_same_estimate_at_half_the_steps_from_an_independent_generator():
    rbm = make_rbm(10, 8, 0.8, seed=12)
    checked = rbm_log_partition_ais(rbm, num_runs=30, num_steps=41, generator=generator(5))
    plain = rbm_log_partition_ais(rbm, num_runs=30, num_steps=41, generator=generator(5), convergence_check=False)
    # the main estimate does not depend on whether the check runs
    assert checked.value == plain.value and checked.stderr == plain.stderr
    assert plain.settings["half_steps"] is None and plain.settings["converged"] is None
    half = checked.settings["half_steps"]
    # its generator is seeded by one draw from the caller's generator after the main run
    main_generator = generator(5)
    ais_log_weights(rbm, torch.zeros(10), ais_schedule(41), 30, main_generator)
    expected_seed = int(torch.randint(0, 2 ** 62, (1,), generator=main_generator).item())
    assert half["seed"] == expected_seed != 5
    again = rbm_log_partition_ais(rbm, num_runs=30, num_steps=20, generator=generator(expected_seed),
                                  convergence_check=False)
    assert half["num_steps"] == 20  # 41 // 2, the paper's schedule rescaled
    assert half["value"] == again.value and half["stderr"] == again.stderr
    assert half["difference"] == pytest.approx(checked.value - again.value, abs=1e-12)
    assert half["difference_stderr"] == pytest.approx(math.hypot(checked.stderr, again.stderr), rel=1e-12)
    assert checked.settings["converged"] == (abs(checked.value - again.value) <= checked.stderr)
    assert half["value"] != checked.value


def test_convergence_check_of_an_exact_estimate_passes_and_of_a_one_step_schedule_is_skipped():
    rbm = make_rbm(12, 6, 0.0, seed=2)  # the target is the base model: every estimate is exact
    estimate = rbm_log_partition_ais(rbm, rbm.visible_bias.detach().clone(), num_runs=20, num_steps=50)
    assert estimate.settings["half_steps"]["num_steps"] == 25
    assert estimate.settings["half_steps"]["value"] == pytest.approx(estimate.value, abs=1e-5)
    assert estimate.settings["converged"] is True
    one_step = rbm_log_partition_ais(rbm, num_runs=5, betas=[0.0, 1.0])
    assert one_step.settings["half_steps"] is None and one_step.settings["converged"] is None


@pytest.mark.parametrize("betas, half", [([0.0, 0.1, 0.3, 0.6, 1.0], [0.0, 0.3, 1.0]),
                                         ([0.0, 0.2, 0.5, 1.0], [0.0, 0.5, 1.0]),
                                         ([0.0, 0.5, 1.0], [0.0, 1.0])])
def test_convergence_check_of_a_custom_schedule_keeps_every_other_beta(betas, half):
    assert half_schedule(torch.tensor(betas, dtype=torch.float64)).tolist() == half
    rbm = make_rbm(10, 8, 0.5, seed=13)
    estimate = rbm_log_partition_ais(rbm, num_runs=10, betas=betas, generator=generator(1))
    seed = estimate.settings["half_steps"]["seed"]
    again = rbm_log_partition_ais(rbm, num_runs=10, betas=half, generator=generator(seed), convergence_check=False)
    assert estimate.settings["half_steps"]["num_steps"] == len(half) - 1
    assert estimate.settings["half_steps"]["value"] == again.value


def test_converged_means_within_the_full_estimates_stderr_of_the_half_steps_estimate():
    """The issue's case: log Z 2.2 nats below its 60,000-step value with a stderr of 0.05 is flagged;
    a move smaller than the stderr is not; the difference's own stderr is the two in quadrature."""
    moved = _convergence(650.0, 0.05, 652.2, 0.07, 7250, seed=1)
    assert moved["converged"] is False
    assert moved["half_steps"]["difference"] == pytest.approx(-2.2)
    assert moved["half_steps"]["difference_stderr"] == pytest.approx(math.hypot(0.05, 0.07))
    assert _convergence(650.0, 0.05, 650.04, 0.07, 7250, seed=1)["converged"] is True
    assert _convergence(650.0, 0.05, 649.94, 0.07, 7250, seed=1)["converged"] is False


def test_log_likelihood_carries_the_convergence_check_of_its_log_z():
    rbm = make_rbm(10, 8, 1.0, seed=14)
    split = Split(binary_states(10, dtype=torch.float32)[::7].reshape(-1, 1, 1, 10))
    log_z = rbm_log_partition_ais(rbm, num_runs=20, num_steps=30, generator=generator(4))
    estimate = rbm_log_likelihood(rbm, split, log_z)
    mean = estimate.settings["mean_negative_free_energy"]
    half = estimate.settings["half_steps"]
    assert half["num_steps"] == 15 and half["value"] == pytest.approx(mean - log_z.settings["half_steps"]["value"])
    assert half["difference"] == pytest.approx(estimate.value - half["value"], abs=1e-9)
    assert half["stderr"] == pytest.approx(math.hypot(estimate.settings["negative_free_energy_stderr"],
                                                      log_z.settings["half_steps"]["stderr"]))
    assert estimate.settings["converged"] == log_z.settings["converged"]
    unchecked = rbm_log_likelihood(rbm, split, Estimate(log_z.value, log_z.stderr))
    assert unchecked.settings["half_steps"] is None and unchecked.settings["converged"] is None
