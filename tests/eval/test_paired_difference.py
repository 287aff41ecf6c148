"""The paired difference of two models' per-example estimates, and the report's sentence from it."""

from __future__ import annotations

import math

import pytest

from vaelab.comparison.report_data import paired_decoder_ais
from vaelab.eval.estimate import paired_difference


def estimate(per_example):
    settings = {} if per_example is None else {"per_example": per_example}
    return {"value": sum(per_example or [0]) / max(1, len(per_example or [])), "stderr": 1.0, "settings": settings}


def test_paired_difference_is_the_mean_and_stderr_of_the_differences():
    # differences 1, 0, 2, 3: mean 1.5, sample std sqrt(5/3), stderr sqrt(5/3) / 2
    mean, stderr = paired_difference(estimate([1.0, 2.0, 3.0, 4.0]), estimate([0.0, 2.0, 1.0, 1.0]))
    assert mean == pytest.approx(1.5, abs=1e-12)
    assert stderr == pytest.approx(math.sqrt(5 / 3) / 2, abs=1e-12)


def test_a_shared_per_image_offset_cancels_from_the_paired_stderr():
    # Both models see the same wildly varying image difficulty; one is 3 nats better on every image.
    difficulty = [-700.0, -400.0, -900.0, -650.0, -300.0]
    mean, stderr = paired_difference(estimate([d + 3.0 for d in difficulty]), estimate(difficulty))
    assert mean == pytest.approx(3.0, abs=1e-9) and stderr == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("second", [None, [1.0, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
def test_no_pairing_without_per_example_values_for_the_same_number_of_images(second):
    assert paired_difference(estimate([1.0, 2.0, 3.0, 4.0]), estimate(second)) is None


def test_the_report_pairs_every_decoder_model_with_each_gan():
    statuses = {"vae": {"model": "vae", "status": "ok"}, "gan": {"model": "gan", "status": "ok"},
                "rbm": {"model": "rbm", "status": "ok"}}
    results = {"vae": {"decoder_ais": estimate([5.0, 7.0, 9.0])}, "gan": {"decoder_ais": estimate([4.0, 5.0, 6.0])},
               "rbm": {"rbm_log_likelihood": estimate([1.0, 2.0, 3.0])}}
    lines = paired_decoder_ais(statuses, results)
    assert lines == ["Decoder AIS, vae minus gan on the same 3 test images: +2.0 ± 0.6 nats "
                     "(stderr of the paired differences)."]
    assert paired_decoder_ais({"vae": statuses["vae"]}, results) == []  # no GAN, nothing to pair with
