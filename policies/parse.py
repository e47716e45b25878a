"""Read, validate and write ScalingPolicy ConfigMaps (DESIGN §2).

Validation collects every error of a policy, each naming the ConfigMap, the field path and what
was expected, so an SRE fixes a file in one pass. Unknown fields are errors: a typo such as
``targetPerReplcia`` must not silently fall back to a default.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml

from policies.declare import (
    NON_EMPTY,
    Choice,
    Const,
    Custom,
    Duration,
    Field,
    Fraction,
    Integer,
    ListOf,
    Number,
    Positive,
    Section,
    Tagged,
    Text,
)
from policies.durations import format_duration
from policies.metrics import KINDS, WAKE_TYPES
from policies.metrics.model_capacity import ENGINE, engine_limits, read_profile
from policies.profiles import profile_document
from policies.reading import POLICY, ROOT, Reader, describe, yaml_problem
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
    OnMetricsUnavailable,
    ReplicaBounds,
    RuleType,
    ScalingPolicy,
    ScalingRule,
    ScalingRules,
    Select,
    TargetRef,
    Variants,
    VariantTarget,
    default_scale_down,
    default_scale_up,
)

MAX_STABILIZATION_WINDOW = 3600.0
"""The HPA rejects stabilization windows above one hour; so do we."""
MAX_RULE_PERIOD = 1800.0
"""The HPA rejects rate-policy periods above 30 minutes; so do we."""


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
    reader = Reader(POLICY)
    values = POLICY_DOCUMENT.read(reader, document, ROOT)
    if reader.errors or values is None:
        errors = reader.errors or [FieldError(ROOT, "invalid policy")]
        raise PolicyError(f"{namespace}/{name}", tuple(errors))
    return ScalingPolicy(namespace=namespace, name=name, **values)


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
    document: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND}
    if policy.variants is None:
        document["target"] = _target_document(policy.target)
        document["replicas"] = {"min": policy.replicas.min, "max": policy.replicas.max}
    document |= {
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
    if policy.variants is not None:
        window = policy.behavior.scale_down.stabilization_window
        document["behavior"] = {"scaleDown": {"stabilizationWindow": format_duration(window)}}
        del document["forecast"]  # not applied to a mix (refused)
        document["variants"] = _variants_document(policy.variants)
    return document


def _target_document(t: TargetRef) -> dict[str, Any]:
    return {"apiVersion": t.api_version, "kind": t.kind, "name": t.name}


def _variants_document(v: Variants) -> dict[str, Any]:
    targets = []
    for t in v.targets:
        item: dict[str, Any] = {
            "name": t.name,
            "target": _target_document(t.target),
            "replicas": {"min": t.replicas.min, "max": t.replicas.max},
        }
        if t.price is not None:
            item["price"] = t.price
        else:
            item |= {"pricePerGpuHour": t.price_per_gpu_hour, "gpus": t.gpus}
        if t.profile is not None and t.limits is not None:
            ref = t.profile_ref
            item["profile"] = ref if ref != "inline" else profile_document(t.profile)
            item["engine"] = {
                "maxNumSeqs": t.limits.max_num_seqs,
                "maxNumBatchedTokens": t.limits.max_num_batched_tokens,
                "kvCacheTokens": t.limits.kv_tokens,
            }
        targets.append(item)
    document: dict[str, Any] = {"targets": targets}
    if v.metric is not None:
        document["metric"] = v.metric
    if v.prefer:
        document["prefer"] = list(v.prefer)
    document["preferWithin"] = v.prefer_within
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


# -- the document, declared once (policies.jsonschema publishes the same declaration) ---------


def _rules(direction: str, default: ScalingRules) -> Section[ScalingRules]:
    return Section(
        (
            Field(
                "stabilizationWindow",
                Duration(at_most=(MAX_STABILIZATION_WINDOW, "1h (as for the HPA)")),
                default=default.stabilization_window,
                description=f"Window over which {direction} recommendations are combined"
                " (at most 1h).",
            ),
            Field("select", Choice(get_args(Select)), default=default.select),
            Field(
                "policies",
                ListOf(
                    Section(
                        (
                            Field("type", Choice(get_args(RuleType)), required=True),
                            Field("value", Integer(1), required=True),
                            Field(
                                "period",
                                Duration(
                                    positive=True, at_most=(MAX_RULE_PERIOD, "30m (as for the HPA)")
                                ),
                                required=True,
                                description="At most 30m.",
                            ),
                        ),
                        ScalingRule,
                    ),
                    "a non-empty list of rules",
                ),
                default=default.policies,
            ),
        ),
        ScalingRules,
        description=f"As the HPA's behavior.{direction}.",
    )


def _replicas_in_order(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    low, high = values["min"], values["max"]
    if low is not None and high is not None and low > high:
        r.error(f"{path}.min", f"must not exceed replicas.max ({high}), got {low}")
        return None
    return values


def _holt_only(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    if values["method"] == "none" and ("alpha" in obj or "beta" in obj):
        r.error(path, "alpha and beta apply only to method: holt")
        return None
    return values


_FALLBACK = Section((Field("fallbackReplicas", Integer(1), required=True),), OnMetricsUnavailable)


def _read_unavailable(r: Reader, value: Any, path: str) -> OnMetricsUnavailable | None:
    if value == "hold":
        return OnMetricsUnavailable()
    if isinstance(value, Mapping):
        return _FALLBACK.read(r, value, path)
    r.error(path, f'expected "hold" or {{fallbackReplicas: N}}, got {describe(value)}')
    return None


def _target_or_variants(r: Reader, obj: Mapping[str, Any], values: dict[str, Any]) -> bool:
    """``target`` and ``replicas``, or ``variants``; with variants, ``target`` becomes the most
    preferred variant's and ``replicas`` the sum of their bounds."""
    if "variants" not in obj:
        for key in ("target", "replicas"):
            if key not in obj:
                r.error(key, "required field is missing")
        return "target" in obj and "replicas" in obj
    ok = True
    for key in ("target", "replicas"):
        if key in obj:
            r.error(key, "leave out with variants: each variant names its own")
            ok = False
    variants: Variants | None = values["variants"]
    if variants is None:
        return False
    names = [t.name for t in variants.targets]
    for i, name in enumerate(variants.prefer):
        if name not in names:
            r.error(f"variants.prefer[{i}]", f"unknown variant {name!r} (known: {names})")
            ok = False
        elif name in variants.prefer[:i]:
            r.error(f"variants.prefer[{i}]", f"{name!r} is listed twice")
            ok = False
    refs: dict[tuple[str, str], int] = {}
    for i, t in enumerate(variants.targets):
        ref = (t.target.kind, t.target.name)
        if ref in refs:
            r.error(
                f"variants.targets[{i}].target",
                f"{t.target.kind}/{t.target.name} is also variants.targets[{refs[ref]}]'s target",
            )
            ok = False
        refs.setdefault(ref, i)
    ok = _variants_metric(r, variants, values["metrics"]) and ok
    for key, why in (
        ("deletionCost", "it follows one target"),
        ("forecast", "the mix is sized for the rate observed"),
        ("burst", "the mix is sized for the rate observed"),
    ):
        if key in obj:
            r.error(key, f"not supported with variants yet ({why})")
            ok = False
    behavior = obj.get("behavior")
    if isinstance(behavior, Mapping):
        down = behavior.get("scaleDown")
        rest = {k for k in behavior if k != "scaleDown"}
        rest |= {f"scaleDown.{k}" for k in (down if isinstance(down, Mapping) else ())}
        rest.discard("scaleDown.stabilizationWindow")
        for key in sorted(rest):
            r.error(
                f"behavior.{key}",
                "not supported with variants yet (only scaleDown.stabilizationWindow applies,"
                " to each variant's count)",
            )
            ok = False
    unavailable = obj.get("onMetricsUnavailable")
    if unavailable is not None and unavailable != "hold":
        r.error(
            "onMetricsUnavailable",
            "a variants policy holds every variant while its metric is missing; fallbackReplicas"
            " is not supported with variants yet",
        )
        ok = False
    if not ok:
        return False
    first = names.index(variants.prefer[0]) if variants.prefer else 0
    values["target"] = variants.targets[first].target
    values["replicas"] = ReplicaBounds(
        sum(t.replicas.min for t in variants.targets),
        sum(t.replicas.max for t in variants.targets),
    )
    return True


def _variants_metric(r: Reader, variants: Variants, metrics: Any) -> bool:
    """The modelCapacity metric the variants share: the one named, or the only one."""
    if metrics is None:
        return False
    capacity = [m.name for m in metrics if m.type == "modelCapacity"]
    others = [
        i
        for i, m in enumerate(metrics)
        if m.name != (variants.metric or m.name) or m.type != "modelCapacity"
    ]
    for i in others:
        r.error(
            f"metrics[{i}]",
            "a variants policy is sized by its modelCapacity metric alone; other metrics are"
            " not used with variants yet, so leave them out",
        )
    if variants.metric is not None:
        if variants.metric not in capacity:
            r.error(
                "variants.metric",
                f"expected the name of a modelCapacity metric ({capacity or 'none'}),"
                f" got {variants.metric!r}",
            )
            return False
        return not others
    if len(capacity) != 1:
        r.error(
            "variants.metric",
            "required field is missing: the policy has"
            f" {len(capacity)} modelCapacity metrics ({capacity}); name the one the variants"
            " share"
            if capacity
            else "variants need a modelCapacity metric (its request rate, token mix and SLO)",
        )
        return False
    return not others


def _across_sections(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    """Scaled to zero only a demand metric wakes the target; the fallback lies within bounds;
    a variants policy names its targets in ``variants`` only, and sizes by a modelCapacity
    metric."""
    if not _target_or_variants(r, obj, values):
        return None
    replicas, metrics = values["replicas"], values["metrics"]
    unavailable = values["on_metrics_unavailable"]
    wakes = metrics is not None and any(m.type in WAKE_TYPES for m in metrics)
    if replicas is not None and replicas.min == 0 and metrics is not None and not wakes:
        r.error(
            "replicas.min",
            "0 needs a metric that sees demand while nothing runs (queueDepth, arrivalRate"
            " or modelCapacity) to scale 0 → 1; latency and kvCacheUsage have no samples"
            " without replicas",
        )
    if replicas is not None and unavailable is not None and not unavailable.hold:
        fallback = unavailable.fallback_replicas
        if not replicas.min <= fallback <= replicas.max:
            r.error(
                "onMetricsUnavailable.fallbackReplicas",
                f"must lie within replicas.min..max ({replicas.min}..{replicas.max}), "
                f"got {fallback}",
            )
    return values


_TARGET = Section(
    (
        Field("apiVersion", Text(), required=True, description="e.g. apps/v1"),
        Field("kind", Text(), required=True, description="e.g. Deployment"),
        Field("name", Text(), required=True, description="In the ConfigMap's namespace."),
    ),
    TargetRef,
)

_REPLICAS = Section(
    (
        Field(
            "min",
            Integer(0),
            required=True,
            description="0 scales to zero (Kubernetes 1.37+, or HPAScaleToZero"
            " on): needs a queueDepth, arrivalRate or modelCapacity metric.",
        ),
        Field("max", Integer(1), required=True),
    ),
    ReplicaBounds,
    check=_replicas_in_order,
)


def _variant_check(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    """A price per replica-hour or per GPU-hour × GPUs; engine limits only with a profile."""
    ok = True
    per_gpu = "pricePerGpuHour" in obj or "gpus" in obj
    if ("price" in obj) == per_gpu:
        r.error(f"{path}.price", "give exactly one of price and pricePerGpuHour with gpus")
        ok = False
    elif per_gpu and ("pricePerGpuHour" not in obj or "gpus" not in obj):
        missing = "gpus" if "gpus" not in obj else "pricePerGpuHour"
        r.error(f"{path}.{missing}", "pricePerGpuHour and gpus go together")
        ok = False
    profile = values.pop("profile")
    engine = values.pop("engine")
    if "engine" in obj and "profile" not in obj:
        r.error(f"{path}.engine", "give profile too (without one the metric's engine applies)")
        return None
    limits = None
    if profile is not None:
        given = engine if engine is not None else {f.key: f.default for f in ENGINE.fields}
        limits = engine_limits(r, given, f"{path}.engine", profile)
        if limits is None:
            return None
    if not ok:
        return None
    if profile is None:
        return values
    return values | {"profile": profile[0], "profile_ref": profile[1], "limits": limits}


_VARIANT = Section(
    (
        Field(
            "name",
            Text(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", says="a DNS label, e.g. h100"),
            required=True,
            description="Names the variant's HPA (gpuscale-<policy>-<name>) and its count.",
        ),
        Field("target", _TARGET, required=True, description="The variant's workload."),
        Field("replicas", _REPLICAS, required=True),
        Field("price", Positive(), description="Price of one replica per hour (any currency)."),
        Field("pricePerGpuHour", Positive(), description="With gpus: price per GPU-hour."),
        Field("gpus", Integer(1), description="GPUs per replica (with pricePerGpuHour)."),
        Field(
            "profile",
            Custom(
                read_profile,
                lambda _: {"anyOf": [{"type": "string", "pattern": NON_EMPTY}, {"type": "object"}]},
            ),
            description="This GPU type's step-time profile (default: the metric's, with its"
            " engine).",
        ),
        Field("engine", ENGINE, description="vLLM engine limits with profile (default: vLLM's)."),
    ),
    VariantTarget,
    check=_variant_check,
    extra={
        "oneOf": [
            {
                "required": ["price"],
                "not": {"anyOf": [{"required": ["pricePerGpuHour"]}, {"required": ["gpus"]}]},
            },
            {"required": ["pricePerGpuHour", "gpus"], "not": {"required": ["price"]}},
        ],
        "dependentRequired": {"engine": ["profile"]},
    },
)

VARIANTS = Section(
    (
        Field(
            "targets",
            ListOf(_VARIANT, "a list of variants", unique=("name", "variant name")),
            required=True,
            description="The Deployments serving the model, one per GPU type.",
        ),
        Field(
            "metric",
            Text(),
            description="The modelCapacity metric whose request rate, token mix and SLO the"
            " variants share (default: the policy's only one).",
        ),
        Field(
            "prefer",
            ListOf(Text(), "a list of variant names", allow_empty=True),
            default=(),
            description="Most preferred first: filled up to its max or its free GPUs before"
            " the next, within preferWithin of the cheapest mix.",
        ),
        Field(
            "preferWithin",
            Number(minimum=0.0),
            default=0.0,
            description="A more preferred mix may cost this fraction more than the cheapest"
            " (default 0: the cheapest wins, preference breaks ties).",
        ),
    ),
    Variants,
    description="Several Deployments serving one model on different GPU types, sized together:"
    " the cheapest replica mix meeting the modelCapacity metric's SLO.",
)

METRIC = Tagged("type", lambda: {t: k.section for t, k in KINDS.items()}, "{}Metric")
"""One metric: its ``type`` picks the registry entry whose fields are read."""

POLICY_DOCUMENT: Section[dict[str, Any]] = Section(
    (
        Field("apiVersion", Const(API_VERSION), required=True, attr=""),
        Field("kind", Const(KIND), required=True, attr=""),
        Field("target", _TARGET, description="The workload to scale (leave out with variants)."),
        Field("replicas", _REPLICAS, description="Bounds (leave out with variants)."),
        Field(
            "interval",
            Duration(positive=True),
            default=15.0,
            description="Decision period (default 15s).",
        ),
        Field(
            "metrics",
            ListOf(
                METRIC,
                "a list of metrics",
                empty="expected at least one metric",
                unique=("name", "metric name"),
            ),
            required=True,
            description="Each metric proposes a replica count; the largest wins.",
        ),
        Field(
            "behavior",
            Section(
                (
                    Field(
                        "scaleUp", _rules("scaleUp", default_scale_up()), default=default_scale_up()
                    ),
                    Field(
                        "scaleDown",
                        _rules("scaleDown", default_scale_down()),
                        default=default_scale_down(),
                    ),
                ),
                Behavior,
            ),
            default=Behavior(),
        ),
        Field(
            "coldStart",
            Duration(),
            default=120.0,
            description="Time a new replica needs to become Ready (default 120s).",
        ),
        Field(
            "forecast",
            Section(
                (
                    Field("method", Choice(get_args(ForecastMethod)), required=True),
                    Field("alpha", Fraction(), default=0.5),
                    Field("beta", Fraction(), default=0.3),
                ),
                Forecast,
                check=_holt_only,
                extra={
                    "if": {"properties": {"method": {"const": "none"}}},
                    "then": {"properties": {"alpha": False, "beta": False}},
                },
            ),
            default=Forecast(),
            description="holt: Holt's linear trend (alpha: level, beta: trend smoothing,"
            " in (0, 1]).",
        ),
        Field(
            "burst",
            Section(
                (
                    Field(
                        "window",
                        Duration(
                            positive=True,
                            at_most=(MAX_STABILIZATION_WINDOW, "1h (as a stabilization window)"),
                        ),
                        required=True,
                        description="Look-back window of the burst envelope (at most 1h; at"
                        " least coldStart is advised).",
                    ),
                    Field(
                        "quantile",
                        Fraction(),
                        default=1.0,
                        description="Of the demand metrics' sizes over the window (default"
                        " 1: the maximum).",
                    ),
                ),
                Burst,
            ),
            description="Size arrivalRate and modelCapacity metrics for the quantile of their"
            " sizes over the last window (default: off).",
        ),
        Field(
            "deletionCost",
            Section(
                (
                    Field(
                        "query",
                        Text(),
                        required=True,
                        description="Requests in flight per pod, one series per pod label, e.g."
                        " sum by (pod) (vllm:num_requests_running + vllm:num_requests_waiting).",
                    ),
                    Field(
                        "maxWritesPerTick",
                        Integer(1),
                        default=10,
                        description="Pod patches per tick at most (default 10).",
                    ),
                ),
                DeletionCost,
            ),
            description="Keep controller.kubernetes.io/pod-deletion-cost on the target's pods so"
            " that idle replicas are removed first (default: off; needs RBAC to patch pods).",
        ),
        Field(
            "variants",
            VARIANTS,
            description="Several Deployments on different GPU types serving one model, each"
            " with its own count and HPA (default: off; then target and replicas are required).",
        ),
        Field(
            "onMetricsUnavailable",
            Custom(
                _read_unavailable,
                lambda ctx: {"oneOf": [{"const": "hold"}, _FALLBACK.schema(ctx)]},
            ),
            default=OnMetricsUnavailable(),
            description="hold (never scale down on missing data) or {fallbackReplicas: N}.",
        ),
    ),
    dict,
    check=_across_sections,
    extra={
        "oneOf": [
            {"required": ["target", "replicas"], "not": {"required": ["variants"]}},
            {"required": ["variants"], "properties": {"target": False, "replicas": False}},
        ]
    },
)
"""The ``policy.yaml`` document: read into the fields of a :class:`ScalingPolicy` (all but its
namespace and name, which the ConfigMap gives)."""
