"""``gpuscale policy explain`` for a policy with ``variants:``: the mix and why not one fewer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from policies.schema import ScalingPolicy
from policies.variants import MixDecision, decide_mix, observe, shared_metric, variant_policy


def summary(p: ScalingPolicy) -> str:
    """``check``'s line: each variant's target, bounds and price, and the preference."""
    assert p.variants is not None
    parts = [
        f"{t.name} {t.target.kind}/{t.target.name} {t.replicas.min}..{t.replicas.max}"
        f" at {t.replica_price:g}/h"
        for t in p.variants.targets
    ]
    prefer = " > ".join(p.variants.prefer) or "cheapest"
    within = f" within {p.variants.prefer_within:.0%}" if p.variants.prefer else ""
    return f"variants {', '.join(parts)}; prefer {prefer}{within}"


def explain_variants(
    p: ScalingPolicy, values: Mapping[str, float | None], placeable: Mapping[str, int]
) -> MixDecision | str:
    """The mix for ``values``, or why there is none (a missing metric, an unknown variant)."""
    assert p.variants is not None
    names = [t.name for t in p.variants.targets]
    unknown = sorted(set(placeable) - set(names))
    if unknown:
        return f"unknown variant {', '.join(unknown)} in --placeable (policy has: {names})"
    observed = observe(p, values, placeable or None)
    if observed is None:
        metric = shared_metric(p)
        return (
            f"metric {metric.name} (or one of its token queries) is missing: the controller"
            " keeps every variant's count while it is (the HPAs hold)"
        )
    return decide_mix(variant_policy(p), observed)


def mix_json(p: ScalingPolicy, d: MixDecision) -> dict[str, Any]:
    return {"policy": p.key, "mix": asdict(d)}


def mix_text(p: ScalingPolicy, d: MixDecision) -> str:
    assert p.variants is not None
    lines = [f"Policy {p.key} sizes {len(p.variants.targets)} variants together:"]
    for t, row in zip(p.variants.targets, d.variants, strict=True):
        lines.append(
            f"  {t.name:<8} {t.target.kind}/{t.target.name}: {row.replicas} replicas"
            f" (bounds {t.replicas.min}..{row.bound}), {row.capacity:.3g} req/s each at the SLO,"
            f" gets {row.share:.3g} req/s each, {row.cost:.4g}/h"
        )
    lines += ["", "Why:"]
    lines += [f"  - {why}" for why in d.why]
    state = "saturated (every variant at its bound)" if d.saturated else "meets the SLO"
    mix = ", ".join(f"{r.name} {r.replicas}" for r in d.variants)
    lines += ["", f"Mix: {mix}; {d.cost:.4g}/h; {state}"]
    lines += [
        "",
        "Not shown: history. The controller publishes this mix as one count per variant, each"
        " read by that variant's own HPA (gpuscale-<policy>-<variant>), and holds a variant's"
        f" count at its highest of the last {_window(p)} (behavior.scaleDown.stabilizationWindow)"
        " unless its pods find no GPU.",
    ]
    return "\n".join(lines)


def _window(p: ScalingPolicy) -> str:
    from policies.durations import format_duration

    return format_duration(p.behavior.scale_down.stabilization_window)
