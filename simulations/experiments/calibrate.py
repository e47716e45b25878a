"""Fit a step-time profile (``beta0..beta3``) to measurements, by least squares.

Two kinds of measurements:

- **Steps** (a CSV with one engine step per row: ``prefill_tokens, decode_seqs, step_seconds``
  and optionally ``context_tokens``), e.g. from vLLM's step-level logs or a profiler. The model
  is linear in the coefficients, so this is non-negative least squares (``scipy.optimize.nnls``).
- **Load levels** (a load test at known offered loads): per level the request rate per engine,
  the mean prompt and generated tokens per request, and the mean TTFT and inter-token latency,
  as Prometheus gives them from vLLM's histograms and counters. The coefficients are fitted so
  that :func:`policies.stepmodel.steady_state` (the model ``modelCapacity`` sizes with)
  reproduces the measured means, minimising relative errors (``scipy.optimize.least_squares``,
  ``beta >= 0``; ``beta3`` is not identifiable from means and stays 0). The alphas are not
  fitted from levels alone: fitting ``alpha0`` and ``alpha2`` beside the betas to the engine's
  own levels (shipped H100 profile, 4 loads) gave a degenerate ``beta1 = 0``, ``alpha0`` 17.6 ms,
  ``alpha2 = 0`` at the same 1.7% error as the betas alone, which put ``beta0`` at 8.9 ms for the
  true 5.75 + 3.36 ms of ``beta0 + alpha2``. The fit says so in a note.

Both together (:func:`fit_alphas`): betas from the steps, then the alphas from what the levels'
per-token latencies have beyond the modelled steps, by non-negative least squares (linear once
the betas are known): ``TTFT - model = alpha0 + alpha1·P + alpha2`` and ``ITL - model = alpha2``.
Step times alone carry no alpha terms.

:func:`load_levels_from_prometheus` turns a load test's Prometheus data into levels.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from policies.stepmodel import EngineLimits, StepProfile, TokenMix, steady_state, step_time


class CalibrationError(ValueError):
    """Measurements that cannot be fitted; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class Fit:
    profile: StepProfile
    measured: np.ndarray
    predicted: np.ndarray
    labels: tuple[str, ...]
    """What each measurement is (``step``, ``ttft``, ``itl``)."""
    rmse: float
    mape: float
    """Mean absolute relative error."""
    r2: float
    notes: tuple[str, ...] = field(default=())
    """What could not be fitted, and why."""


def _fit_stats(measured: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    err = predicted - measured
    rmse = float(np.sqrt(np.mean(err**2)))
    mape = float(np.mean(np.abs(err) / np.maximum(np.abs(measured), 1e-12)))
    total = float(np.sum((measured - measured.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / total if total > 0 else math.nan
    return rmse, mape, r2


def _number(row: dict[str, str], key: str, where: str) -> float:
    raw = row.get(key)
    if raw is None or raw.strip() == "":
        raise CalibrationError(f"{where}: {key}: missing")
    try:
        value = float(raw)
    except ValueError:
        raise CalibrationError(f"{where}: {key}: expected a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise CalibrationError(f"{where}: {key}: expected a number >= 0, got {raw!r}")
    return value


def _rows(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CalibrationError(f"{path}: cannot read: {reason}") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [k for k in required if k not in header]
    if missing:
        raise CalibrationError(
            f"{path}:1: missing column(s) {', '.join(missing)} (header: {','.join(header)})"
        )
    rows = [
        (n, {(k or "").strip(): (v or "") for k, v in row.items()})
        for n, row in enumerate(reader, start=2)
    ]
    if not rows:
        raise CalibrationError(f"{path}: no measurements after the header")
    return rows


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class Steps:
    prefill: np.ndarray
    decode: np.ndarray
    context: np.ndarray | None
    seconds: np.ndarray


def read_steps(path: Path) -> Steps:
    """``prefill_tokens,decode_seqs,step_seconds[,context_tokens]``, one step per row."""
    rows = _rows(path, ("prefill_tokens", "decode_seqs", "step_seconds"))
    has_context = "context_tokens" in rows[0][1]
    cols: list[list[float]] = [[], [], [], []]
    for n, row in rows:
        where = f"{path}:{n}"
        cols[0].append(_number(row, "prefill_tokens", where))
        cols[1].append(_number(row, "decode_seqs", where))
        cols[2].append(_number(row, "step_seconds", where))
        if has_context:
            cols[3].append(_number(row, "context_tokens", where))
    return Steps(
        np.asarray(cols[0]),
        np.asarray(cols[1]),
        np.asarray(cols[3]) if has_context else None,
        np.asarray(cols[2]),
    )


def fit_steps(steps: Steps, name: str, *, source: str = "") -> Fit:
    """Non-negative least squares of ``step_seconds`` on ``[1, prefill, decode(, context)]``."""
    from scipy.optimize import nnls

    n = len(steps.seconds)
    columns = [np.ones(n), steps.prefill, steps.decode]
    if steps.context is not None:
        columns.append(steps.context)
    a = np.column_stack(columns)
    if n < a.shape[1]:
        raise CalibrationError(f"need at least {a.shape[1]} steps to fit, got {n}")
    if np.linalg.matrix_rank(a) < a.shape[1]:
        raise CalibrationError(
            "the steps do not vary enough to tell the coefficients apart"
            " (need steps with different prefill tokens and decoding sequences)"
        )
    # scale columns so the solver sees numbers of similar size
    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
    x, _ = nnls(a / scale, steps.seconds)
    betas = list(x / scale) + [0.0] * (4 - len(x))
    profile = StepProfile(name, betas[0], betas[1], betas[2], betas[3], source=source)
    predicted = np.array(
        [
            step_time(profile, p, d, c)
            for p, d, c in zip(
                steps.prefill,
                steps.decode,
                steps.context if steps.context is not None else np.zeros(n),
                strict=True,
            )
        ]
    )
    rmse, mape, r2 = _fit_stats(steps.seconds, predicted)
    return Fit(profile, steps.seconds, predicted, ("step",) * n, rmse, mape, r2)


# --------------------------------------------------------------------------- load levels


@dataclass(frozen=True, slots=True)
class Level:
    """One load level of a load test, per engine."""

    rate: float
    """Requests/s reaching one engine."""
    prompt_tokens: float
    generated_tokens: float
    ttft: float
    """Mean time to first token, seconds."""
    itl: float
    """Mean inter-token latency, seconds."""
    max_num_batched_tokens: int | None = None
    """The engine's token budget during this level where it differs from the fit's limits."""


def read_levels(path: Path) -> list[Level]:
    """``rate,prompt_tokens,generated_tokens,ttft_seconds,itl_seconds[,replicas]`` per level
    (``rate`` is the whole service's; it is divided by ``replicas``, default 1)."""
    rows = _rows(path, ("rate", "prompt_tokens", "generated_tokens", "ttft_seconds", "itl_seconds"))
    levels = []
    for n, row in rows:
        where = f"{path}:{n}"
        replicas = _number(row, "replicas", where) if row.get("replicas", "").strip() else 1.0
        if replicas <= 0:
            raise CalibrationError(f"{where}: replicas: must be at least 1")
        levels.append(
            Level(
                _number(row, "rate", where) / replicas,
                _number(row, "prompt_tokens", where),
                _number(row, "generated_tokens", where),
                _number(row, "ttft_seconds", where),
                _number(row, "itl_seconds", where),
            )
        )
    return levels


LEVELS_CANNOT_FIT_ALPHAS = (
    "alphas not fitted: mean latencies at load levels cannot tell them from the betas (a"
    " constant overhead and a larger beta0 or beta1 fit them equally well); give the engine's"
    " steps too (--steps) and the alphas are fitted against them"
)


def fit_levels(
    levels: Sequence[Level], limits: EngineLimits, name: str, *, source: str = ""
) -> Fit:
    """``beta0..beta2`` whose modelled mean TTFT and TPOT best match the levels (relative
    errors); the alphas stay 0 (:data:`LEVELS_CANNOT_FIT_ALPHAS`, a note on the fit)."""
    from scipy.optimize import least_squares

    if len(levels) < 2:
        raise CalibrationError(
            f"need at least 2 load levels to fit 3 coefficients, got {len(levels)}"
        )
    measured = np.array([x for lv in levels for x in (lv.ttft, lv.itl)])
    if (measured <= 0).any():
        raise CalibrationError("every level needs a positive mean TTFT and inter-token latency")

    def model(x: np.ndarray) -> np.ndarray:
        p = StepProfile(name, float(x[0]), float(x[1]), float(x[2]))
        out = []
        for lv in levels:
            s = steady_state(p, limits, lv.rate, TokenMix(lv.prompt_tokens, lv.generated_tokens))
            big = 1e3  # an infeasible guess: far off, but finite for the solver
            out += [min(s.ttft, big), min(s.tpot, big)]
        return np.asarray(out)

    # start from the lightest level: TPOT ≈ beta0 + beta2, TTFT ≈ beta0 + beta1·P
    light = min(levels, key=lambda lv: lv.rate)
    b0 = max(light.itl * 0.9, 1e-5)
    b1 = max((light.ttft - b0) / max(light.prompt_tokens, 1.0), 1e-9)
    x0 = np.array([b0, b1, max(light.itl * 0.1 / 8, 1e-8)])
    scale = np.maximum(x0, 1e-9)
    res = least_squares(
        lambda z: (model(z * scale) - measured) / measured,
        x0 / scale,
        bounds=(0, np.inf),
        x_scale="jac",
    )
    x = res.x * scale
    profile = StepProfile(name, float(x[0]), float(x[1]), float(x[2]), source=source)
    predicted = model(x)
    rmse, mape, r2 = _fit_stats(measured, predicted)
    labels = tuple(lbl for _ in levels for lbl in ("ttft", "itl"))
    return Fit(profile, measured, predicted, labels, rmse, mape, r2, (LEVELS_CANNOT_FIT_ALPHAS,))


def _alpha_fit(
    levels: Sequence[Level], limits: EngineLimits, profile: StepProfile
) -> tuple[list[float], np.ndarray, np.ndarray, list[str]]:
    """NNLS of the levels' latency beyond the modelled steps on ``[1, P, 1]`` (TTFT) and
    ``[0, 0, 1]`` (ITL): the alphas, the model without them, the design and the notes."""
    from scipy.optimize import nnls

    steps_only = replace(profile, alpha0=0.0, alpha1=0.0, alpha2=0.0)
    rows: list[list[float]] = []
    excess: list[float] = []
    base: list[float] = []
    for k, lv in enumerate(levels, start=1):
        own = limits
        if lv.max_num_batched_tokens is not None:
            own = replace(limits, max_num_batched_tokens=lv.max_num_batched_tokens)
        s = steady_state(steps_only, own, lv.rate, TokenMix(lv.prompt_tokens, lv.generated_tokens))
        if s.limit is not None:
            raise CalibrationError(
                f"level {k} ({lv.rate:g} req/s): the fitted steps cannot carry it ({s.limit})"
            )
        rows += [[1.0, lv.prompt_tokens, 1.0], [0.0, 0.0, 1.0]]
        excess += [lv.ttft - s.ttft, lv.itl - s.tpot]
        base += [s.ttft, s.tpot]
    a = np.asarray(rows)
    notes: list[str] = []
    columns = [0, 1, 2]
    if np.linalg.matrix_rank(a) < 3:
        columns = [0, 2]
        notes.append("alpha1 not fitted: every level has the same prompt length")
    scale = np.maximum(np.abs(a[:, columns]).max(axis=0), 1e-12)
    x, _ = nnls(a[:, columns] / scale, np.asarray(excess))
    values = [0.0, 0.0, 0.0]
    for c, v in zip(columns, x / scale, strict=True):
        values[c] = float(v)
    return values, np.asarray(base), a, notes


CONTEXT_FITTED = (
    "beta3 fitted beside the alphas: the value in [0, the largest every level can carry] whose"
    " alphas (non-negative least squares at that beta3) leave the smallest squared error"
)


def fit_alphas(
    levels: Sequence[Level], limits: EngineLimits, profile: StepProfile, *, context: bool = False
) -> Fit:
    """``alpha0..alpha2`` for known betas: what the levels' mean TTFT and inter-token latency
    have beyond the modelled steps (non-negative least squares; ``alpha1`` only when the
    levels' prompt lengths differ).

    With ``context``, ``beta3`` (per context token, which the other betas may lack, e.g. when
    they come from another engine version) is fitted too, by a bounded 1-D search around the
    linear alpha fit: the steady state is not linear in ``beta3``, but for each value it is in
    the alphas. Levels must then differ in how much context their decoding sequences hold (by
    rate or by length), else ``beta3`` trades off against ``alpha2``."""
    from scipy.optimize import minimize_scalar

    notes: list[str] = []
    if context:
        # every level must stay below utilisation 1: rate * c < 1, c linear in beta3
        ceiling = math.inf
        for lv in levels:
            p, d = lv.prompt_tokens, max(lv.generated_tokens - 1.0, 0.0)
            per = lv.rate * d * (p + d / 2)
            rest = 1.0 - lv.rate * (profile.beta1 * p + profile.beta2 * d)
            if rest <= 0:
                raise CalibrationError(
                    f"level {lv.rate:g} req/s: beta1 and beta2 alone already exceed its capacity"
                )
            if per > 0:
                ceiling = min(ceiling, rest / per)
        if not math.isfinite(ceiling):
            raise CalibrationError("beta3 cannot be fitted: no level has decoding sequences")

        def sse(share: float) -> float:
            trial = replace(profile, beta3=share * ceiling)
            try:
                values, base, a, _ = _alpha_fit(levels, limits, trial)
            except CalibrationError:
                return 1e6  # a level the trial cannot carry: far off, finite for the search
            measured = np.array([x for lv in levels for x in (lv.ttft, lv.itl)])
            return float(np.sum((base + a @ np.asarray(values) - measured) ** 2))

        # searched as a share of the ceiling: the solver's tolerance is absolute
        best = minimize_scalar(sse, bounds=(0.0, 0.999), method="bounded", options={"xatol": 1e-7})
        profile = replace(profile, beta3=float(best.x) * ceiling)
        notes.append(CONTEXT_FITTED)
    values, base, a, more = _alpha_fit(levels, limits, profile)
    fitted = replace(profile, alpha0=values[0], alpha1=values[1], alpha2=values[2])
    measured = np.array([x for lv in levels for x in (lv.ttft, lv.itl)])
    predicted = base + a @ np.asarray(values)
    rmse, mape, r2 = _fit_stats(measured, predicted)
    labels = tuple(lbl for _ in levels for lbl in ("ttft", "itl"))
    return Fit(fitted, measured, predicted, labels, rmse, mape, r2, (*more, *notes))


Query = Callable[[str, float], float | None]
"""``query(promql, at_unix_time) -> value`` (``None`` for an empty result)."""


def load_levels_from_prometheus(
    query: Query, windows: Sequence[tuple[float, float, float, float]], selector: str = ""
) -> list[Level]:
    """Levels from vLLM's V1 series over each ``(start, end, rate, replicas)`` window.

    ``rate`` is the offered load the load test ran at (requests/s, whole service). Means come
    from ratios of ``increase()`` over the window: TTFT from ``time_to_first_token_seconds``,
    inter-token latency from ``inter_token_latency_seconds``, tokens per request from
    ``prompt_tokens_total``/``generation_tokens_total`` over ``request_success_total``.
    """
    levels = []
    for k, (start, end, rate, replicas) in enumerate(windows, start=1):
        w = f"{max(int((end - start) * 1000), 1)}ms"

        def inc(metric: str, w: str = w, end: float = end) -> float:
            value = query(f"sum(increase(vllm:{metric}{selector}[{w}]))", end)
            return 0.0 if value is None or not math.isfinite(value) else value

        done = inc("request_success_total")
        ttft_n = inc("time_to_first_token_seconds_count")
        itl_n = inc("inter_token_latency_seconds_count")
        if done <= 0 or ttft_n <= 0 or itl_n <= 0:
            raise CalibrationError(
                f"level {k} ({start:g}..{end:g}): no finished requests or tokens in the window"
            )
        levels.append(
            Level(
                rate / max(replicas, 1.0),
                inc("prompt_tokens_total") / done,
                inc("generation_tokens_total") / done,
                inc("time_to_first_token_seconds_sum") / ttft_n,
                inc("inter_token_latency_seconds_sum") / itl_n,
            )
        )
    return levels


def read_windows(path: Path) -> list[tuple[float, float, float, float]]:
    """``start,end,rate[,replicas]`` (Unix seconds, requests/s) per load level."""
    rows = _rows(path, ("start", "end", "rate"))
    out = []
    for n, row in rows:
        where = f"{path}:{n}"
        start, end = _number(row, "start", where), _number(row, "end", where)
        if end <= start:
            raise CalibrationError(f"{where}: end: must be after start")
        replicas = _number(row, "replicas", where) if row.get("replicas", "").strip() else 1.0
        out.append((start, end, _number(row, "rate", where), replicas))
    return out


def with_source(fit: Fit, what: str) -> StepProfile:
    """The fitted profile with a ``source`` saying how it was made and how well it fits."""
    text = (
        f"fitted by gpuscale simulate calibrate from {what}: {len(fit.measured)} measurements,"
        f" RMSE {fit.rmse * 1e3:.3g} ms, mean relative error {fit.mape * 100:.2g}%"
    )
    return replace(fit.profile, source=text)


def plot_fit(fit: Fit, path: Path, title: str) -> Path:
    """Measured against fitted, on a log-log scale, with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    labels = np.asarray(fit.labels)
    for label in sorted(set(fit.labels)):
        sel = labels == label
        ax.scatter(fit.measured[sel] * 1e3, fit.predicted[sel] * 1e3, s=12, label=label)
    lo = max(float(min(fit.measured.min(), fit.predicted.min())) * 1e3 * 0.8, 1e-3)
    hi = float(max(fit.measured.max(), fit.predicted.max())) * 1e3 * 1.2
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("model (ms)")
    ax.set_title(f"{title}\nRMSE {fit.rmse * 1e3:.3g} ms, mean rel. error {fit.mape * 100:.2g}%")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
