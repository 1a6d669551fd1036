"""The synthetic generator and its fit to the Azure conversation trace."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from polca.sim.synthetic import CONV_PARAMS, SyntheticParams, fit, generate
from polca.sim.trace import read_trace

SHARED_TRACE = (
    Path(__file__).resolve().parents[4] / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
)


@pytest.mark.skipif(not SHARED_TRACE.exists(), reason="shared conv trace not present")
def test_defaults_are_the_fit_of_the_conv_trace() -> None:
    fitted = fit(read_trace(SHARED_TRACE))
    for f in fields(SyntheticParams):
        expected = getattr(fitted, f.name)
        assert getattr(CONV_PARAMS, f.name) == pytest.approx(expected, rel=0.01), f.name


def test_deterministic_for_a_seed() -> None:
    a = generate(CONV_PARAMS, 600, np.random.default_rng(5))
    b = generate(CONV_PARAMS, 600, np.random.default_rng(5))
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert np.array_equal(a.context_tokens, b.context_tokens)


def test_generated_statistics_follow_parameters() -> None:
    trace = generate(CONV_PARAMS, 7200, np.random.default_rng(11))
    refit = fit(trace)
    assert refit.rate_per_s == pytest.approx(CONV_PARAMS.rate_per_s, rel=0.15)
    assert refit.arrival_cv == pytest.approx(CONV_PARAMS.arrival_cv, rel=0.15)
    assert refit.context_log_mean == pytest.approx(CONV_PARAMS.context_log_mean, abs=0.05)
    assert refit.generated_log_sd == pytest.approx(CONV_PARAMS.generated_log_sd, abs=0.05)
    assert trace.context_tokens.max() <= CONV_PARAMS.context_max
    assert trace.generated_tokens.min() >= CONV_PARAMS.generated_min
    assert trace.arrival_s.max() < 7200


def test_poisson_like_parameters() -> None:
    params = replace(CONV_PARAMS, arrival_cv=1.0, rate_log_sd=0.0, rate_per_s=20.0)
    trace = generate(params, 1000, np.random.default_rng(1))
    gaps = np.diff(trace.arrival_s)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.05)
    assert len(trace) == pytest.approx(20_000, rel=0.05)


@pytest.mark.parametrize(
    "change",
    [{"rate_per_s": 0.0}, {"rate_ac1": 1.0}, {"context_min": 0}, {"generated_log_sd": -1.0}],
)
def test_invalid_parameters(change: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        replace(CONV_PARAMS, **change)  # type: ignore[arg-type]
