"""Read, validate and write ScalingPolicy ConfigMaps (DESIGN §2).

Validation collects every error of a policy, each naming the ConfigMap, the field path and what
was expected, so an SRE fixes a file in one pass. Unknown fields are errors: a typo such as
``targetPerReplcia`` must not silently fall back to a default.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from policies.durations import format_duration
from policies.metrics import KINDS, WAKE_TYPES
from policies.reading import POLICY, Reader, describe, yaml_problem
from policies.reading import FieldError as FieldError  # re-exported: callers raise PolicyError
from policies.schema import (
    API_VERSION,
    KIND,
    POLICY_DATA_KEY,
    POLICY_LABEL,
    Behavior,
    Burst,
    DeletionCost,
    Forecast,
    ForecastMethod,
    Metric,
    OnMetricsUnavailable,
    ReplicaBounds,
    RuleType,
    ScalingPolicy,
    ScalingRule,
    ScalingRules,
    Select,
    TargetRef,
    default_scale_down,
    default_scale_up,
)

MAX_STABILIZATION_WINDOW = 3600.0
"""The HPA rejects stabilization windows above one hour; so do we."""
MAX_RULE_PERIOD = 1800.0
"""The HPA rejects rate-policy periods above 30 minutes; so do we."""
_METRIC_NAME = re.compile(r"[a-z]([-a-z0-9_]*[a-z0-9])?")


class PolicyError(ValueError):
    """A ConfigMap that claims to be a policy but is not a valid one."""

    def __init__(self, key: str, errors: tuple[FieldError, ...]) -> None:
        self.key = key
        self.errors = errors
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{self.key}: {e.path}: {e.message}" for e in self.errors)


class NotAPolicy(ValueError):
    """A document that is not a ScalingPolicy ConfigMap; the message says why."""


class PolicyFileError(ValueError):
    """A policy file that cannot be read or parsed; ``messages`` are ``file: ...`` lines."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("\n".join(messages))


def is_policy_configmap(obj: Mapping[str, Any]) -> bool:
    """True for a ConfigMap labelled ``gpuscale.io/scaling-policy: "true"``."""
    if obj.get("kind") != "ConfigMap":
        return False
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return isinstance(labels, Mapping) and labels.get(POLICY_LABEL) == "true"


def configmap_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` of a ConfigMap, with ``default`` where the namespace is left out."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = meta.get("namespace") or "default"
    return f"{namespace}/{meta.get('name') or '<unnamed>'}"


def parse_configmap(obj: Mapping[str, Any]) -> ScalingPolicy:
    """Build a policy from a ConfigMap object (as the API or a YAML file gives it)."""
    if not isinstance(obj, Mapping):
        raise NotAPolicy(f"expected a ConfigMap object, got {describe(obj)}")
    kind = obj.get("kind")
    if kind != "ConfigMap":
        raise NotAPolicy(
            f"not a ScalingPolicy: kind is {kind!r}, expected 'ConfigMap' "
            f"(or a bare {KIND} document, as in a policy.yaml file)"
        )
    key = configmap_key(obj)
    if not is_policy_configmap(obj):
        raise NotAPolicy(f'{key}: not a ScalingPolicy: missing label {POLICY_LABEL}: "true"')
    meta = obj["metadata"]
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError(key, (FieldError("metadata.name", "expected a non-empty string"),))
    namespace = meta.get("namespace") or "default"
    data = obj.get("data")
    text = data.get(POLICY_DATA_KEY) if isinstance(data, Mapping) else None
    if not isinstance(text, str):
        raise PolicyError(
            key, (FieldError(f"data.{POLICY_DATA_KEY}", "expected the policy as a YAML string"),)
        )
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        bad = yaml_problem(exc)
        where = f" at line {bad.line}, column {bad.column}" if bad.line is not None else ""
        raise PolicyError(
            key, (FieldError(f"data.{POLICY_DATA_KEY}", f"{bad.problem}{where}"),)
        ) from None
    return parse_policy_document(document, namespace=namespace, name=name)


def parse_policy_document(document: Any, *, namespace: str, name: str) -> ScalingPolicy:
    """Validate the ``policy.yaml`` document of ConfigMap ``namespace/name``."""
    reader = _Reader()
    policy = reader.policy(document, namespace, name)
    if reader.errors or policy is None:
        errors = reader.errors or [FieldError("(root)", "invalid policy")]
        raise PolicyError(f"{namespace}/{name}", tuple(errors))
    return policy


def policy_to_document(policy: ScalingPolicy) -> dict[str, Any]:
    """The ``policy.yaml`` document for ``policy``, every field spelled out."""
    metrics: list[dict[str, Any]] = []
    for m in policy.metrics:
        item: dict[str, Any] = {"name": m.name, "type": m.type, "query": m.query}
        item |= KINDS[m.type].to_document(m)
        metrics.append(item)
    forecast: dict[str, Any] = {"method": policy.forecast.method}
    if policy.forecast.method == "holt":
        forecast |= {"alpha": policy.forecast.alpha, "beta": policy.forecast.beta}
    unavailable: Any = (
        "hold"
        if policy.on_metrics_unavailable.hold
        else {"fallbackReplicas": policy.on_metrics_unavailable.fallback_replicas}
    )
    document: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "target": {
            "apiVersion": policy.target.api_version,
            "kind": policy.target.kind,
            "name": policy.target.name,
        },
        "replicas": {"min": policy.replicas.min, "max": policy.replicas.max},
        "interval": format_duration(policy.interval),
        "metrics": metrics,
        "behavior": {
            "scaleUp": _rules_to_document(policy.behavior.scale_up),
            "scaleDown": _rules_to_document(policy.behavior.scale_down),
        },
        "coldStart": format_duration(policy.cold_start),
        "forecast": forecast,
        "onMetricsUnavailable": unavailable,
    }
    if policy.burst is not None:
        document["burst"] = {
            "window": format_duration(policy.burst.window),
            "quantile": policy.burst.quantile,
        }
    if policy.deletion_cost is not None:
        document["deletionCost"] = {
            "query": policy.deletion_cost.query,
            "maxWritesPerTick": policy.deletion_cost.max_writes_per_tick,
        }
    return document


def policy_to_configmap(policy: ScalingPolicy) -> dict[str, Any]:
    """A ConfigMap object holding ``policy``, ready for ``kubectl apply`` or the API."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": policy.name,
            "namespace": policy.namespace,
            "labels": {POLICY_LABEL: "true"},
        },
        "data": {POLICY_DATA_KEY: yaml.safe_dump(policy_to_document(policy), sort_keys=False)},
    }


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One YAML document of a file: a policy, or why it is not a valid one."""

    index: int
    key: str | None
    policy: ScalingPolicy | None = None
    error: PolicyError | None = None
    not_a_policy: str | None = None
    bare: bool = False
    """A ``policy.yaml`` document without its ConfigMap: namespace and name were given or
    assumed, not read from the file, so a report must say which."""


DEFAULT_NAMESPACE = "default"


def bare_policy_name(path: str | Path) -> str:
    """The name a bare ``policy.yaml`` gets when none is given: its file's stem."""
    return Path(path).stem.lower() or "policy"


def is_bare_policy(doc: Any) -> bool:
    """A ScalingPolicy document on its own (``kind: ScalingPolicy``), not inside a ConfigMap."""
    return isinstance(doc, Mapping) and doc.get("kind") == KIND


def read_policy_file(
    path: str | Path, *, namespace: str | None = None, name: str | None = None
) -> list[FileEntry]:
    """Every document of a YAML file, parsed; file-level problems raise PolicyFileError.

    ConfigMaps carry their own namespace and name. Bare ScalingPolicy documents (the
    ``policy.yaml`` that ``configMapGenerator`` wraps) take ``namespace`` (default
    ``default``) and ``name`` (default: the file's stem), as ``kubectl apply -n`` would.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyFileError([f"{path}: cannot read: {reason}"]) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        bad = yaml_problem(exc)
        where = f":{bad.line}:{bad.column}" if bad.line is not None else ""
        raise PolicyFileError([f"{path}{where}: YAML syntax error: {bad.problem}"]) from None
    if not documents:
        raise PolicyFileError([f"{path}: no YAML documents in the file"])
    entries: list[FileEntry] = []
    for index, doc in enumerate(_expand_lists(documents)):
        if is_bare_policy(doc):
            ns, nm = namespace or DEFAULT_NAMESPACE, name or bare_policy_name(path)
            try:
                policy = parse_policy_document(doc, namespace=ns, name=nm)
                entries.append(FileEntry(index, f"{ns}/{nm}", policy=policy, bare=True))
            except PolicyError as exc:
                entries.append(FileEntry(index, exc.key, error=exc, bare=True))
            continue
        key = configmap_key(doc) if isinstance(doc, Mapping) else None
        try:
            entries.append(FileEntry(index, key, policy=parse_configmap(doc)))
        except PolicyError as exc:
            entries.append(FileEntry(index, exc.key, error=exc))
        except NotAPolicy as exc:
            entries.append(FileEntry(index, key, not_a_policy=str(exc)))
    return entries


def load_policy_file(
    path: str | Path, *, namespace: str | None = None, name: str | None = None
) -> list[ScalingPolicy]:
    """All policies of a file; any invalid or non-policy document raises PolicyFileError."""
    entries = read_policy_file(path, namespace=namespace, name=name)
    messages = list(entry_messages(path, entries))
    if messages:
        raise PolicyFileError(messages)
    return [e.policy for e in entries if e.policy is not None]


def entry_messages(path: str | Path, entries: list[FileEntry]) -> Iterator[str]:
    """``file: namespace/name: field: message`` for every problem in ``entries``."""
    for entry in entries:
        if entry.error is not None:
            for err in entry.error.errors:
                yield f"{path}: {entry.error.key}: {err.path}: {err.message}"
        elif entry.not_a_policy is not None:
            text = entry.not_a_policy
            if entry.key is None or not text.startswith(entry.key):
                text = f"document {entry.index + 1}: {text}"
            yield f"{path}: {text}"


def _expand_lists(documents: list[Any]) -> Iterator[Any]:
    """Unfold ``kind: List`` documents, as kubectl does."""
    for doc in documents:
        if isinstance(doc, Mapping) and doc.get("kind") == "List":
            items = doc.get("items")
            yield from items if isinstance(items, list) else [doc]
        else:
            yield doc


def _rules_to_document(rules: ScalingRules) -> dict[str, Any]:
    return {
        "stabilizationWindow": format_duration(rules.stabilization_window),
        "select": rules.select,
        "policies": [
            {"type": r.type, "value": r.value, "period": format_duration(r.period)}
            for r in rules.policies
        ],
    }


class _Reader(Reader):
    """The shared field readers plus the policy's sections; errors in the policy style."""

    def __init__(self) -> None:
        super().__init__(POLICY)

    # -- the policy, section by section ---------------------------------------------------

    def policy(self, document: Any, namespace: str, name: str) -> ScalingPolicy | None:
        doc = self.mapping(
            document,
            "(root)",
            required=("apiVersion", "kind", "target", "replicas", "metrics"),
            optional=(
                "interval",
                "behavior",
                "coldStart",
                "forecast",
                "burst",
                "onMetricsUnavailable",
                "deletionCost",
            ),
        )
        if doc is None:
            return None
        if "apiVersion" in doc and doc["apiVersion"] != API_VERSION:
            self.error("apiVersion", f"expected {API_VERSION}, got {describe(doc['apiVersion'])}")
        if "kind" in doc and doc["kind"] != KIND:
            self.error("kind", f"expected {KIND}, got {describe(doc['kind'])}")
        target = self.get(doc, "(root)", "target", self.target)
        replicas = self.get(doc, "(root)", "replicas", self.replicas)
        interval = self.get(
            doc, "(root)", "interval", lambda v, p: self.duration(v, p, positive=True), 15.0
        )
        metrics = self.get(doc, "(root)", "metrics", self.metrics)
        behavior = self.get(doc, "(root)", "behavior", self.behavior, Behavior())
        cold_start = self.get(doc, "(root)", "coldStart", self.duration, 120.0)
        forecast = self.get(doc, "(root)", "forecast", self.forecast, Forecast())
        burst = self.get(doc, "(root)", "burst", self.burst)
        deletion_cost = self.get(doc, "(root)", "deletionCost", self.deletion_cost)
        unavailable = self.get(
            doc, "(root)", "onMetricsUnavailable", self.on_unavailable, OnMetricsUnavailable()
        )
        wakes = metrics is not None and any(m.type in WAKE_TYPES for m in metrics)
        if replicas is not None and replicas.min == 0 and metrics is not None and not wakes:
            self.error(
                "replicas.min",
                "0 needs a metric that sees demand while nothing runs (queueDepth, arrivalRate"
                " or modelCapacity) to scale 0 → 1; latency and kvCacheUsage have no samples"
                " without replicas",
            )
        if replicas is not None and unavailable is not None and not unavailable.hold:
            fallback = unavailable.fallback_replicas
            assert fallback is not None
            if not replicas.min <= fallback <= replicas.max:
                self.error(
                    "onMetricsUnavailable.fallbackReplicas",
                    f"must lie within replicas.min..max ({replicas.min}..{replicas.max}), "
                    f"got {fallback}",
                )
        if (
            self.errors
            or target is None
            or replicas is None
            or interval is None
            or metrics is None
            or behavior is None
            or cold_start is None
            or forecast is None
            or ("burst" in doc and burst is None)
            or ("deletionCost" in doc and deletion_cost is None)
            or unavailable is None
        ):
            return None
        return ScalingPolicy(
            namespace=namespace,
            name=name,
            target=target,
            replicas=replicas,
            metrics=metrics,
            interval=interval,
            behavior=behavior,
            cold_start=cold_start,
            forecast=forecast,
            burst=burst,
            on_metrics_unavailable=unavailable,
            deletion_cost=deletion_cost,
        )

    def target(self, value: Any, path: str) -> TargetRef | None:
        obj = self.mapping(value, path, required=("apiVersion", "kind", "name"))
        if obj is None:
            return None
        api_version = self.get(obj, path, "apiVersion", self.string)
        kind = self.get(obj, path, "kind", self.string)
        name = self.get(obj, path, "name", self.string)
        if api_version is None or kind is None or name is None:
            return None
        return TargetRef(api_version, kind, name)

    def replicas(self, value: Any, path: str) -> ReplicaBounds | None:
        obj = self.mapping(value, path, required=("min", "max"))
        if obj is None:
            return None
        low = self.get(obj, path, "min", lambda v, p: self.integer(v, p, minimum=0))
        high = self.get(obj, path, "max", lambda v, p: self.integer(v, p, minimum=1))
        if low is None or high is None:
            return None
        if low > high:
            self.error(f"{path}.min", f"must not exceed replicas.max ({high}), got {low}")
            return None
        return ReplicaBounds(low, high)

    def metrics(self, value: Any, path: str) -> tuple[Metric, ...] | None:
        if not isinstance(value, list):
            self.error(path, f"expected a list of metrics, got {describe(value)}")
            return None
        if not value:
            self.error(path, "expected at least one metric")
            return None
        parsed: list[Metric] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            metric = self.metric(item, f"{path}[{i}]")
            if metric is None:
                continue
            if metric.name in seen:
                self.error(
                    f"{path}[{i}].name",
                    f"duplicate metric name {metric.name!r} (also metrics[{seen[metric.name]}])",
                )
                continue
            seen[metric.name] = i
            parsed.append(metric)
        return tuple(parsed) if len(parsed) == len(value) else None

    def metric(self, value: Any, path: str) -> Metric | None:
        kind = value.get("type") if isinstance(value, Mapping) else None
        if isinstance(value, Mapping) and (not isinstance(kind, str) or kind not in KINDS):
            self.error(
                f"{path}.type",
                f"expected one of {', '.join(KINDS)}, got {describe(kind)}"
                if "type" in value
                else "required field is missing",
            )
            return None
        assert kind is None or isinstance(kind, str)
        entry = KINDS[kind] if kind is not None else None
        obj = self.mapping(
            value,
            path,
            required=("name", "type", "query", *(entry.required if entry else ())),
            optional=entry.optional if entry else (),
        )
        if obj is None or entry is None:
            return None
        name = self.get(obj, path, "name", self.metric_name)
        query = self.get(obj, path, "query", self.string)
        metric: Metric | None = entry.parse(self, obj, path, name, query)
        return metric

    def metric_name(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        if text is not None and not _METRIC_NAME.fullmatch(text):
            self.error(
                path,
                f"expected lower-case letters, digits, '-' or '_', starting with a letter, "
                f"got {text!r}",
            )
            return None
        return text

    def behavior(self, value: Any, path: str) -> Behavior | None:
        obj = self.mapping(value, path, optional=("scaleUp", "scaleDown"))
        if obj is None:
            return None
        up = self.get(
            obj,
            path,
            "scaleUp",
            lambda v, p: self.rules(v, p, default_scale_up()),
            default_scale_up(),
        )
        down = self.get(
            obj,
            path,
            "scaleDown",
            lambda v, p: self.rules(v, p, default_scale_down()),
            default_scale_down(),
        )
        if up is None or down is None:
            return None
        return Behavior(up, down)

    def rules(self, value: Any, path: str, default: ScalingRules) -> ScalingRules | None:
        obj = self.mapping(value, path, optional=("stabilizationWindow", "select", "policies"))
        if obj is None:
            return None
        window = self.get(
            obj, path, "stabilizationWindow", self.window, default.stabilization_window
        )
        select = self.get(
            obj,
            path,
            "select",
            lambda v, p: self.choice(v, p, ("Max", "Min", "Disabled")),
            default.select,
        )
        policies = self.get(obj, path, "policies", self.rule_list, default.policies)
        if window is None or select is None or policies is None:
            return None
        return ScalingRules(window, cast(Select, select), policies)

    def window(self, value: Any, path: str) -> float | None:
        seconds = self.duration(value, path)
        if seconds is not None and seconds > MAX_STABILIZATION_WINDOW:
            self.error(path, f'must be at most 1h (as for the HPA), got "{value}"')
            return None
        return seconds

    def rule_list(self, value: Any, path: str) -> tuple[ScalingRule, ...] | None:
        if not isinstance(value, list) or not value:
            self.error(path, f"expected a non-empty list of rules, got {describe(value)}")
            return None
        rules = [self.rule(item, f"{path}[{i}]") for i, item in enumerate(value)]
        if any(r is None for r in rules):
            return None
        return tuple(r for r in rules if r is not None)

    def rule(self, value: Any, path: str) -> ScalingRule | None:
        obj = self.mapping(value, path, required=("type", "value", "period"))
        if obj is None:
            return None
        kind = self.get(obj, path, "type", lambda v, p: self.choice(v, p, ("Pods", "Percent")))
        amount = self.get(obj, path, "value", lambda v, p: self.integer(v, p, minimum=1))
        period = self.get(obj, path, "period", lambda v, p: self.duration(v, p, positive=True))
        if period is not None and period > MAX_RULE_PERIOD:
            self.error(
                f"{path}.period", f'must be at most 30m (as for the HPA), got "{obj["period"]}"'
            )
            return None
        if kind is None or amount is None or period is None:
            return None
        return ScalingRule(cast(RuleType, kind), amount, period)

    def forecast(self, value: Any, path: str) -> Forecast | None:
        obj = self.mapping(value, path, required=("method",), optional=("alpha", "beta"))
        if obj is None:
            return None
        method = self.get(obj, path, "method", lambda v, p: self.choice(v, p, ("none", "holt")))
        alpha = self.get(obj, path, "alpha", lambda v, p: self.fraction(v, p, closed_top=True), 0.5)
        beta = self.get(obj, path, "beta", lambda v, p: self.fraction(v, p, closed_top=True), 0.3)
        if method == "none" and ("alpha" in obj or "beta" in obj):
            self.error(path, "alpha and beta apply only to method: holt")
            return None
        if method is None or alpha is None or beta is None:
            return None
        return Forecast(cast(ForecastMethod, method), alpha, beta)

    def burst(self, value: Any, path: str) -> Burst | None:
        obj = self.mapping(value, path, required=("window",), optional=("quantile",))
        if obj is None:
            return None
        window = self.get(obj, path, "window", self.burst_window)
        quantile = self.get(
            obj, path, "quantile", lambda v, p: self.fraction(v, p, closed_top=True), 1.0
        )
        if window is None or quantile is None:
            return None
        return Burst(window, quantile)

    def deletion_cost(self, value: Any, path: str) -> DeletionCost | None:
        obj = self.mapping(value, path, required=("query",), optional=("maxWritesPerTick",))
        if obj is None:
            return None
        query = self.get(obj, path, "query", self.string)
        most = self.get(
            obj, path, "maxWritesPerTick", lambda v, p: self.integer(v, p, minimum=1), 10
        )
        if query is None or most is None:
            return None
        return DeletionCost(query, most)

    def burst_window(self, value: Any, path: str) -> float | None:
        seconds = self.duration(value, path, positive=True)
        if seconds is not None and seconds > MAX_STABILIZATION_WINDOW:
            self.error(path, f'must be at most 1h (as a stabilization window), got "{value}"')
            return None
        return seconds

    def on_unavailable(self, value: Any, path: str) -> OnMetricsUnavailable | None:
        if value == "hold":
            return OnMetricsUnavailable()
        if isinstance(value, Mapping):
            obj = self.mapping(value, path, required=("fallbackReplicas",))
            if obj is None:
                return None
            replicas = self.get(
                obj, path, "fallbackReplicas", lambda v, p: self.integer(v, p, minimum=1)
            )
            return None if replicas is None else OnMetricsUnavailable(replicas)
        self.error(path, f'expected "hold" or {{fallbackReplicas: N}}, got {describe(value)}')
        return None
