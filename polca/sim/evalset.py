"""The evaluation set: a named family of traces a policy is judged on, never one trace.

DESIGN ("How we evaluate a policy"): a policy tuned on one trace fools us, so ``polca sweep``
runs every policy on every member of this set (and several seeds) and reports the worst case.
Members span what production looks like (issue 15):

* ``conv`` — the Azure conversation trace itself, when the file is present (the project works
  without it; ``conv-fit`` stands in);
* synthetic traces from :mod:`polca.sim.synthetic`, each a documented change of the
  conversation fit: arrival burstiness (inter-arrival CV 1 to 15), output length (median 10 to
  300 tokens: code completion is short and bursty, chat is long), prompt length (median 200 to
  4,000 tokens), a diurnal shape, and a row that mixes training with inference.

The parameter values and why each was chosen: ``docs/simulator.md`` section 2 ("The evaluation
set"). A synthetic member is deterministic for a seed (:func:`polca.sim.synthetic.
synthetic_trace`). The caller says whether the conversation trace file exists; only
:func:`load_eval_trace` reads a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from polca.sim.domain import Mix
from polca.sim.synthetic import CONV_PARAMS, SyntheticParams, synthetic_trace
from polca.sim.trace import Trace, read_trace

__all__ = ["CONV_TRACE_NAME", "EvalTrace", "evaluation_set", "load_eval_trace", "synthetic_members"]

CONV_TRACE_NAME = "AzureLLMInferenceTrace_conv.csv"
_INFERENCE_MIX = Mix(high=0.5, low=0.5, train=0.0)


@dataclass(frozen=True, slots=True)
class EvalTrace:
    """One member: a trace file or generator parameters, and the row's workload mix."""

    name: str
    why: str
    params: SyntheticParams | None = None  # synthetic member
    path: Path | None = None  # trace file member
    mix: Mix = _INFERENCE_MIX
    diurnal_over_run: bool = False  # the diurnal period is the run's duration

    def __post_init__(self) -> None:
        if (self.params is None) == (self.path is None):
            raise ValueError(f"{self.name}: give exactly one of params and path")


def _lengths(
    params: SyntheticParams,
    *,
    context_median: float | None = None,
    generated_median: float | None = None,
) -> SyntheticParams:
    """``params`` with other median prompt/output lengths (log-normal: median = exp(mean))."""
    if context_median is not None:
        params = replace(params, context_log_mean=math.log(context_median))
    if generated_median is not None:
        params = replace(params, generated_log_mean=math.log(generated_median))
    return params


def synthetic_members() -> tuple[EvalTrace, ...]:
    """The synthetic members (always present)."""
    return (
        EvalTrace("conv-fit", "the generator fitted to the conversation trace", CONV_PARAMS),
        EvalTrace(
            "code",
            "code completion: short outputs (median 10), longer prompts (1,500), bursty (CV 8)",
            replace(
                _lengths(CONV_PARAMS, context_median=1500, generated_median=10),
                arrival_cv=8.0,
                rate_log_sd=0.5,
                generated_min=1,
            ),
        ),
        EvalTrace(
            "chat-long",
            "long chat answers (median 300) to short prompts (median 200), Poisson arrivals",
            replace(
                _lengths(CONV_PARAMS, context_median=200, generated_median=300),
                arrival_cv=1.0,
                generated_max=2000,
            ),
        ),
        EvalTrace(
            "bursty",
            "conversation lengths, very bursty arrivals (CV 15) and a drifting rate",
            replace(CONV_PARAMS, arrival_cv=15.0, rate_log_sd=0.5),
        ),
        EvalTrace(
            "long-prompt",
            "long prompts (median 4,000, e.g. retrieval) with medium outputs (median 100)",
            replace(
                _lengths(CONV_PARAMS, context_median=4000, generated_median=100),
                context_log_sd=0.7,
                context_max=32000,
            ),
        ),
        EvalTrace(
            "diurnal",
            "conversation fit with a daily shape (rate ×0.5 to ×1.5) over the run",
            replace(CONV_PARAMS, diurnal_amplitude=0.5),
            diurnal_over_run=True,
        ),
        EvalTrace(
            "train-mix",
            "conversation fit on a row with a fifth of its servers training",
            CONV_PARAMS,
            mix=Mix(high=0.4, low=0.4, train=0.2),
        ),
    )


def evaluation_set(conv_trace: Path | None) -> tuple[EvalTrace, ...]:
    """The conversation trace (when ``conv_trace`` is given: a file the caller found) and the
    synthetic members."""
    head: tuple[EvalTrace, ...] = ()
    if conv_trace is not None:
        head = (EvalTrace("conv", "the Azure LLM inference conversation trace", path=conv_trace),)
    return head + synthetic_members()


def load_eval_trace(member: EvalTrace, duration_s: float, seed: int) -> Trace:
    """The requests of ``member`` for a run of ``duration_s`` with ``seed``."""
    if member.path is not None:
        return read_trace(member.path)
    assert member.params is not None
    params = member.params
    if member.diurnal_over_run:
        params = replace(params, diurnal_period_s=duration_s)
    return synthetic_trace(params, duration_s, seed)
