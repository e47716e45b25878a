"""Sweep specs: a scenario, seeds, a target attainment, and per contender family the knobs to
sweep, parsed and validated in one place (``simulations/README.md``, "Sweeps").

Errors name the file and the field path, like scenario errors
(``sweep.yaml: families.hpa.grid.target: must be greater than 0, got -1``), and all errors of a
file are reported at once. Baseline knobs are the scenario's contender fields and are checked
by the scenario parser itself; gpuscale knobs are paths into the ScalingPolicy document
(``metrics[queue].targetPerReplica``, ``coldStart``, ``forecast.method``) and every value is
checked by the policy parser, so a sweep accepts exactly what a scenario or a policy would.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from policies.declare import Boolean, Custom, Duration, Field, Fraction, Integer, Number, Section
from policies.parse import (
    PolicyError,
    PolicyFileError,
    load_policy_file,
    parse_policy_document,
    policy_to_document,
)
from policies.reading import ROOT, Reader, show
from policies.schema import ScalingPolicy
from simulations.config.scenario import (
    BASELINES,
    PACKAGE_DIR,
    Contender,
    GpuscaleContender,
    Scenario,
    ScenarioError,
    ScenarioReader,
    load_scenario,
    read_contender,
    read_yaml_file,
)
from simulations.config.variants import VariantSweepSpec, read_variant_sweep

DEFAULT_SWEEP = PACKAGE_DIR / "sweeps" / "default.yaml"
Knobs = tuple[tuple[str, Any], ...]
"""A point's knob values, sorted by knob name."""


class SweepSpecError(ScenarioError):
    """A sweep spec that cannot be used; ``messages`` are ``file: path: message`` lines."""


@dataclass(frozen=True, slots=True)
class PointSpec:
    family: str
    knobs: Knobs
    contender: Contender

    @property
    def label(self) -> str:
        return point_label(self.family, self.knobs)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str
    """``hpa``, ``keda``, ``kpa`` or ``gpuscale``."""
    points: tuple[PointSpec, ...]


@dataclass(frozen=True, slots=True)
class HindsightSpec:
    interval: float = 30.0
    """Seconds per decision interval of the hindsight schedule."""


@dataclass(frozen=True, slots=True)
class SweepSpec:
    file: str
    scenario: Scenario
    seeds: tuple[int, ...]
    target: float
    families: tuple[Family, ...]
    static: bool = True
    hindsight: HindsightSpec | None = HindsightSpec()


def point_label(family: str, knobs: Knobs) -> str:
    inside = ",".join(f"{k}={_show(v)}" for k, v in knobs)
    return f"{family}[{inside}]" if inside else family


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


# --------------------------------------------------------------------------- policy knobs

_SEGMENT = re.compile(r"([A-Za-z][A-Za-z0-9]*)(?:\[([^\]]+)\])?")


def set_policy_field(document: dict[str, Any], path: str, value: Any) -> str | None:
    """Set ``path`` (``a.b``, ``metrics[name].field``, ``list[0]``) in a policy document.

    Returns why it cannot be set, or ``None``. Missing mappings on the way are created.
    """
    parts = path.split(".")
    node: Any = document
    for i, part in enumerate(parts):
        m = _SEGMENT.fullmatch(part)
        if m is None:
            return f'expected a field path like "coldStart" or "metrics[queue].slo", got "{path}"'
        key, sel = m.group(1), m.group(2)
        last = i == len(parts) - 1 and sel is None
        if not isinstance(node, dict):
            return f"{'.'.join(parts[:i])} is not a mapping"
        if last:
            node[key] = copy.deepcopy(value)
            return None
        if sel is None:
            node = node.setdefault(key, {})
            continue
        items = node.get(key)
        if not isinstance(items, list):
            return f"{key} is not a list in the policy"
        if sel.isdigit():
            idx = int(sel)
            if idx >= len(items):
                return f"{key}[{idx}]: the policy has only {len(items)}"
            target = items[idx]
        else:
            named = [x for x in items if isinstance(x, dict) and x.get("name") == sel]
            if not named:
                have = ", ".join(str(x.get("name")) for x in items if isinstance(x, dict))
                return f"no {key} entry named {sel!r} in the policy (have: {have})"
            target = named[0]
        if i == len(parts) - 1:
            idx = items.index(target)
            items[idx] = copy.deepcopy(value)
            return None
        node = target
    return None


def apply_policy_knobs(policy: ScalingPolicy, knobs: Knobs) -> ScalingPolicy:
    """``policy`` with the knob values set; :class:`PolicyError` or ``ValueError`` if invalid."""
    document = policy_to_document(policy)
    for path, value in knobs:
        why = set_policy_field(document, path, value)
        if why is not None:
            raise ValueError(why)
    return parse_policy_document(document, namespace=policy.namespace, name=policy.name)


# --------------------------------------------------------------------------- reading

_FAMILY_KEYS = ("baseline", "file", "policy", "set", "grid", "points")
_BASELINE_FIXED = ("baseline", "name")


def _values(r: ScenarioReader, value: Any, path: str) -> list[Any] | None:
    """A knob's values: a list, one value, or ``{from, to, step}`` (numbers, both ends in)."""
    if isinstance(value, list):
        if not value:
            r.error(path, "expected at least one value")
            return None
        return list(value)
    if isinstance(value, Mapping):
        obj = r.mapping(value, path, optional=("from", "to", "step"))
        if obj is None:
            return None
        for key in ("from", "to", "step"):
            if key not in obj:
                r.error(f"{path}.{key}", "required in a range")
        if any(k not in obj for k in ("from", "to", "step")):
            return None
        lo = r.number(obj["from"], f"{path}.from")
        hi = r.number(obj["to"], f"{path}.to")
        step = r.number(obj["step"], f"{path}.step", positive=True)
        if lo is None or hi is None or step is None:
            return None
        if hi < lo:
            r.error(f"{path}.to", f"must be at least from ({lo:g}), got {hi:g}")
            return None
        n = math.floor((hi - lo) / step + 1e-9) + 1
        if n > 1000:
            r.error(path, f"range has {n} values, at most 1000")
            return None
        out = [round(lo + i * step, 10) for i in range(n)]
        return [int(v) if all(float(x).is_integer() for x in out) else v for v in out]
    return [value]


def _grids(
    r: ScenarioReader, value: Any, path: str
) -> list[tuple[str, list[tuple[str, list[Any]]]]]:
    """``(path, [(knob, values)])`` for each grid (a mapping, or a list of mappings)."""
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        p = f"{path}[{i}]" if isinstance(value, list) else path
        if not isinstance(item, Mapping) or not item:
            r.error(p, f"expected a mapping of knob: [values], got {show(item)}")
            continue
        knobs = []
        for knob, vals in item.items():
            got = _values(r, vals, f"{p}.{knob}")
            if got is not None:
                knobs.append((str(knob), got))
        out.append((p, knobs))
    return out


def _family(r: ScenarioReader, name: str, value: Any) -> Family | None:
    p = f"families.{name}"
    obj = r.mapping(value, p, optional=_FAMILY_KEYS)
    if obj is None:
        return None
    if ("baseline" in obj) == ("file" in obj):
        r.error(p, "expected exactly one of baseline: (hpa, keda, kpa) or file: (a policy)")
        return None
    fixed = obj.get("set", {})
    if not isinstance(fixed, Mapping):
        r.error(f"{p}.set", f"expected a mapping of knob: value, got {show(fixed)}")
        fixed = {}
    grids = _grids(r, obj["grid"], f"{p}.grid") if "grid" in obj else []
    listed: list[tuple[str, dict[str, Any]]] = []
    if "points" in obj:
        pts = obj["points"]
        if not isinstance(pts, list):
            r.error(f"{p}.points", f"expected a list of mappings, got {show(pts)}")
        else:
            for i, item in enumerate(pts):
                if not isinstance(item, Mapping):
                    r.error(f"{p}.points[{i}]", f"expected a mapping, got {show(item)}")
                else:
                    listed.append((f"{p}.points[{i}]", {str(k): v for k, v in item.items()}))
    combos: list[tuple[str, dict[str, Any]]] = []
    for gp, knobs in grids:
        names = [k for k, _ in knobs]
        for values in itertools.product(*(v for _, v in knobs)):
            combos.append((gp, dict(zip(names, values, strict=True))))
    combos += listed
    if not combos:
        combos = [(p, {})]
    if "baseline" in obj:
        kind = r.choice(obj["baseline"], f"{p}.baseline", BASELINES)
        if kind is None:
            return None
        build = _baseline_builder(r, kind, name, r.base_dir)
    else:
        kind = "gpuscale"
        build = _policy_builder(r, obj, p, name)
        if build is None:
            return None
    points: list[PointSpec] = []
    seen: set[Knobs] = set()
    bad = 0
    for where, chosen in combos:
        merged = {str(k): v for k, v in fixed.items()} | chosen
        key: Knobs = tuple(sorted(merged.items()))
        if key in seen:
            continue
        seen.add(key)
        contender = build(key, where, bad < 5)
        if contender is None:
            bad += 1
            continue
        points.append(PointSpec(name, key, contender))
    if bad > 5:
        r.error(p, f"{bad - 5} more invalid points not listed")
    return Family(name, kind, tuple(points))


def _baseline_builder(r: ScenarioReader, kind: str, family: str, base_dir: Path) -> Any:
    def build(knobs: Knobs, where: str, report: bool) -> Contender | None:
        for k, _ in knobs:
            if k in _BASELINE_FIXED:
                if report:
                    r.error(f"{where}.{k}", "not a knob (set by the family)")
                return None
        item = {"baseline": kind, "name": point_label(family, knobs), **dict(knobs)}
        sub = ScenarioReader(base_dir)
        out = read_contender(sub, item, where)
        if sub.errors:
            if report:
                for e in sub.errors:
                    r.error(e.path, e.message.replace("one of: baseline, name, ", "one of: "))
            return None
        return out[0]

    return build


def _policy_builder(r: ScenarioReader, obj: Mapping[str, Any], p: str, family: str) -> Any:
    path = r.path(obj.get("file"), f"{p}.file")
    if path is None:
        return None
    try:
        found = load_policy_file(path)
    except PolicyFileError as exc:
        for m in exc.messages:
            r.error(f"{p}.file", m)
        return None
    wanted = obj.get("policy")
    if wanted is not None:
        found = [x for x in found if x.name == wanted]
        if not found:
            r.error(f"{p}.policy", f"no policy named {wanted!r} in {path}")
            return None
    elif len(found) != 1:
        names = ", ".join(x.name for x in found) or "none"
        r.error(f"{p}.policy", f"{path} holds {len(found)} policies ({names}): name one")
        return None
    base = found[0]
    alone: dict[tuple[str, str], list[str]] = {}

    def check(knob: str, value: Any) -> list[str]:
        """Why one knob value alone makes the policy invalid (cached)."""
        key = (knob, repr(value))
        if key not in alone:
            try:
                apply_policy_knobs(base, ((knob, value),))
                alone[key] = []
            except PolicyError as exc:
                alone[key] = [e.message for e in exc.errors]
            except ValueError as exc:
                alone[key] = [str(exc)]
        return alone[key]

    def build(knobs: Knobs, where: str, report: bool) -> Contender | None:
        bad = False
        for knob, value in knobs:
            for message in check(knob, value):
                bad = True
                r.error(f"{where}.{knob}", message)
        if bad:
            return None
        try:
            policy = apply_policy_knobs(base, knobs)
        except (PolicyError, ValueError) as exc:
            if report:
                listed = ", ".join(f"{k}={_show(v)}" for k, v in knobs)
                for line in str(exc).splitlines():
                    r.error(where, f"{listed}: {line.split(': ', 1)[-1]}")
            return None
        return GpuscaleContender(point_label(family, knobs), policy, str(path))

    return build


def _read_scenario(r: Reader, value: Any, path: str) -> Scenario | None:
    """The scenario file the sweep runs; its own errors are passed on under ``scenario:``."""
    assert isinstance(r, ScenarioReader)
    sc_path = r.path(value, path)
    if sc_path is None:
        return None
    try:
        return load_scenario(sc_path)
    except ScenarioError as exc:
        for m in exc.messages:
            r.error(path, m)
        return None


def _read_seeds(r: Reader, value: Any, path: str) -> tuple[int, ...] | int | None:
    """Seeds listed (distinct), or how many to run from the scenario's own seed on."""
    if not isinstance(value, list):
        return r.integer(value, path, minimum=1)
    got = [r.integer(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not value:
        r.error(path, "expected at least one seed")
        return None
    if len(set(value)) != len(value):
        r.error(path, "seeds must be distinct")
        return None
    return None if any(s is None for s in got) else tuple(s for s in got if s is not None)


def _read_hindsight(r: Reader, value: Any, path: str) -> HindsightSpec | bool | None:
    """``true`` (the defaults), ``false`` (no hindsight bound) or ``{interval}``."""
    if isinstance(value, bool):
        return value
    return _HINDSIGHT.read(r, value, path)


_HINDSIGHT = Section(
    (Field("interval", Duration(positive=True), default=HindsightSpec().interval),),
    HindsightSpec,
)
_FAMILY_NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]*")


def _read_families(r: Reader, value: Any, path: str) -> tuple[Family, ...] | None:
    assert isinstance(r, ScenarioReader)
    if not isinstance(value, Mapping) or not value:
        r.error(path, f"required: a mapping of family name to its knobs, got {show(value)}")
        return None
    families = []
    for name, knobs in value.items():
        if not isinstance(name, str) or not _FAMILY_NAME.fullmatch(name):
            r.error(f"{path}.{name}", "family names are letters, digits, -, _ and .")
            continue
        family = _family(r, name, knobs)
        if family is not None:
            families.append(family)
    return tuple(families)


def _scenario_for_the_sweep(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    """The scenario (the built-in one by default) with the sweep's duration and no contenders;
    a count of seeds counts from the scenario's seed."""
    scenario = values["scenario"] if "scenario" in obj else load_scenario(None)
    if scenario is None:
        return None
    if values["duration"] is not None:
        scenario = replace(scenario, duration=values["duration"])
    seeds = values["seeds"]
    if seeds is None and "seeds" not in obj:
        seeds = (scenario.seed,)
    elif isinstance(seeds, int):
        seeds = tuple(range(scenario.seed, scenario.seed + seeds))
    bounds = values.pop("bounds")
    if bounds is None:
        return None
    return values | {"scenario": replace(scenario, contenders=()), "seeds": seeds, **bounds}


SWEEP_DOCUMENT: Section[dict[str, Any]] = Section(
    (
        Field("scenario", Custom(_read_scenario, lambda ctx: {"type": "string"})),
        Field("duration", Duration(positive=True)),
        Field("seeds", Custom(_read_seeds, lambda ctx: {})),
        Field(
            "target",
            Number(positive=True, at_most=1),
            required=True,
            missing="required: the attainment to reach, e.g. 0.99",
        ),
        Field(
            "bounds",
            Section(
                (
                    Field("static", Boolean(), default=True),
                    Field("hindsight", Custom(_read_hindsight, lambda ctx: {}), default=True),
                ),
                lambda static, hindsight: {
                    "static": static,
                    "hindsight": HindsightSpec() if hindsight is True else hindsight or None,
                },
            ),
            default={"static": True, "hindsight": HindsightSpec()},
        ),
        Field(
            "families",
            Custom(_read_families, lambda ctx: {"type": "object"}),
            required=True,
            missing="required: a mapping of family name to its knobs, got nothing",
        ),
    ),
    dict,
    check=_scenario_for_the_sweep,
)
"""A sweep spec: the scenario, seeds, target and bounds declared; each family's knobs are
checked by the scenario's and the policy's own declarations as its points are built."""


def _variant_points(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    """Each family's points, read against the scenario's variants; seeds count from its seed."""
    scenario = values["scenario"]
    if scenario is None or "families" not in obj:
        return None
    if scenario.variants is None:
        r.error("scenario", f"{obj['scenario']}: the scenario has no variants")
        return None
    assert isinstance(r, ScenarioReader)
    families = read_variant_sweep(r, obj, scenario.variants.deployments, scenario.service)
    seeds = values["seeds"] or 0
    return values | {
        "seeds": tuple(range(scenario.seed, scenario.seed + seeds)),
        "families": families,
        "scenario_file": scenario.file,
    }


VARIANT_SWEEP_DOCUMENT: Section[dict[str, Any]] = Section(
    (
        Field("scenario", Custom(_read_scenario, lambda ctx: {"type": "string"}), required=True),
        Field("seeds", Integer(1), default=2),
        Field("target", Fraction(closed_top=True), default=0.99),
        Field(
            "families",
            Custom(lambda r, value, path: value, lambda ctx: {"type": "object"}),
            required=True,
        ),
    ),
    dict,
    check=_variant_points,
)
"""A sweep of variant contenders (``sweeps/variants.yaml``): the scenario, seeds and target
declared; each family's ``base`` contender and ``grid`` are read through the variants
declaration (:func:`simulations.config.variants.read_variant_sweep`) as its points are built."""


def parse_variant_sweep(
    document: Any, file: str, base_dir: Path
) -> tuple[Scenario, VariantSweepSpec]:
    """A variants sweep from a parsed YAML document; :class:`SweepSpecError` lists every error."""
    r = ScenarioReader(base_dir)
    values = VARIANT_SWEEP_DOCUMENT.read(r, document, ROOT)
    if r.errors or values is None:
        raise SweepSpecError(list(dict.fromkeys(r.messages(file))) or [f"{file}: invalid"])
    scenario = values.pop("scenario")
    return scenario, VariantSweepSpec(file=file, **values)


def parse_sweep(document: Any, file: str, base_dir: Path) -> SweepSpec:
    """Build a sweep from a parsed YAML document; :class:`SweepSpecError` lists every error."""
    r = ScenarioReader(base_dir)
    if document is None or (isinstance(document, Mapping) and not document):
        r.error(ROOT, "empty sweep spec")
        raise SweepSpecError(r.messages(file))
    values = SWEEP_DOCUMENT.read(r, document, ROOT)
    if r.errors or values is None:
        raise SweepSpecError(list(dict.fromkeys(r.messages(file))) or [f"{file}: invalid"])
    values.pop("duration")
    return SweepSpec(file=file, **values)


def load_sweep(path: Path | str | None = None) -> SweepSpec:
    """Read a sweep spec (the built-in default when ``path`` is ``None``)."""
    p = DEFAULT_SWEEP if path is None else Path(path)
    return parse_sweep(read_yaml_file(p, SweepSpecError), str(p), p.resolve().parent)


def all_points(spec: SweepSpec) -> Sequence[PointSpec]:
    return [pt for fam in spec.families for pt in fam.points]
