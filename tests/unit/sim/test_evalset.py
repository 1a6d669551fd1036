"""The evaluation set: its members span the ranges docs/simulator.md documents, deterministic
by seed; the diurnal shape of the generator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from polca.sim.evalset import EvalTrace, evaluation_set, load_eval_trace, synthetic_members
from polca.sim.synthetic import CONV_PARAMS, fit, generate

DURATION_S = 3600.0


def _member(name: str) -> EvalTrace:
    return next(m for m in synthetic_members() if m.name == name)


def test_conv_is_a_member_only_when_its_file_is_given() -> None:
    names = [m.name for m in evaluation_set(None)]
    assert names == [
        "conv-fit",
        "code",
        "chat-long",
        "bursty",
        "long-prompt",
        "diurnal",
        "train-mix",
    ]
    with_conv = evaluation_set(Path("conv.csv"))
    assert with_conv[0].name == "conv"
    assert with_conv[0].path == Path("conv.csv")
    assert [m.name for m in with_conv[1:]] == names


def test_members_span_the_documented_ranges() -> None:
    fitted = {
        m.name: fit(load_eval_trace(m, DURATION_S, seed=0))
        for m in synthetic_members()
        if m.name != "train-mix"  # the conv fit on another row
    }
    cvs = [f.arrival_cv for f in fitted.values()]
    assert min(cvs) < 1.3
    assert max(cvs) > 8
    medians_out = {n: float(np.exp(f.generated_log_mean)) for n, f in fitted.items()}
    assert medians_out["code"] == pytest.approx(10, rel=0.2)
    assert medians_out["chat-long"] == pytest.approx(300, rel=0.1)
    medians_in = {n: float(np.exp(f.context_log_mean)) for n, f in fitted.items()}
    assert medians_in["chat-long"] == pytest.approx(200, rel=0.1)
    assert medians_in["long-prompt"] == pytest.approx(4000, rel=0.1)
    assert _member("train-mix").mix.train > 0


def test_members_are_deterministic_by_seed() -> None:
    for member in synthetic_members():
        a = load_eval_trace(member, 300.0, seed=3)
        b = load_eval_trace(member, 300.0, seed=3)
        c = load_eval_trace(member, 300.0, seed=4)
        assert np.array_equal(a.arrival_s, b.arrival_s), member.name
        assert np.array_equal(a.generated_tokens, b.generated_tokens), member.name
        assert not np.array_equal(a.arrival_s[:50], c.arrival_s[:50]), member.name


def test_diurnal_shape_peaks_half_a_period_in() -> None:
    params = replace(CONV_PARAMS, rate_log_sd=0.0, diurnal_amplitude=0.5, diurnal_period_s=3600)
    trace = generate(params, 3600.0, np.random.default_rng(2))
    quarter = np.histogram(trace.arrival_s, bins=4, range=(0, 3600))[0]
    # 1 − 0.5·cos: mean factor 0.68 in the first and last quarters, 1.32 in the middle two.
    assert quarter[1] > 1.6 * quarter[0]
    assert quarter[2] > 1.6 * quarter[3]
    assert len(trace) == pytest.approx(CONV_PARAMS.rate_per_s * 3600, rel=0.1)


def test_the_diurnal_member_follows_the_run_duration() -> None:
    trace = load_eval_trace(_member("diurnal"), 600.0, seed=0)
    halves = np.histogram(trace.arrival_s, bins=[0, 150, 450, 600])[0]
    assert halves[1] / 300 > 1.3 * (halves[0] + halves[2]) / 300


def test_a_member_is_a_file_or_parameters() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        EvalTrace("x", "neither")
    with pytest.raises(ValueError, match="exactly one"):
        EvalTrace("x", "both", params=CONV_PARAMS, path=Path("a.csv"))
    with pytest.raises(ValueError, match="diurnal"):
        replace(CONV_PARAMS, diurnal_amplitude=1.0)
