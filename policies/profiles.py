"""Named hardware profiles: step-time coefficients per model × GPU × tensor parallelism.

The profiles shipped with gpuscale live in ``policies/profiles/NAME.yaml``, each with its
source; ``gpuscale simulate calibrate`` writes new ones in the same format. A scenario or a
``modelCapacity`` metric names a profile (a shipped name, or a path to a file)::

    name: llama-3.1-8b-h100-tp1
    model: meta-llama/Llama-3.1-8B-Instruct
    gpu: NVIDIA-H100-80GB
    tensorParallelism: 1
    stepTime: {beta0: 5.753ms, beta1: 17.25us, beta2: 6us, beta3: 0s}
    alpha: {perRequest: 232.5us, perInputToken: 1.752us, perOutputToken: 3.357ms}  # optional
    gpuMemory: 80Gi          # one GPU; bytes as a number, or a quantity (Gi, G, Mi, …)
    weights: 16060522496     # bytes of weights on each GPU
    kvBytesPerToken: 131072  # KV bytes per token on each GPU
    source: where the numbers come from

``alpha`` holds BLIS's overheads outside the engine step (see :mod:`policies.stepmodel`): before a
request is queued, ``perRequest + perInputToken × prompt tokens``; on every emitted token,
``perOutputToken``. Left out, they are 0.

Errors name the file and the field (``p.yaml: stepTime.beta1: expected a duration …``).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from policies.durations import DurationError, format_duration, parse_duration
from policies.stepmodel import StepProfile

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9._]*[a-z0-9])?")
_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T)?B?")
_FACTORS = {
    None: 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}
_ALPHAS = ("perRequest", "perInputToken", "perOutputToken")
"""``alpha`` keys, in BLIS's ``alpha_coeffs`` order."""
_FIELDS = (
    "name",
    "model",
    "gpu",
    "tensorParallelism",
    "stepTime",
    "alpha",
    "gpuMemory",
    "weights",
    "kvBytesPerToken",
    "source",
)


class ProfileError(ValueError):
    """A profile that cannot be used; ``messages`` are ``file: field: problem`` lines."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("\n".join(messages))


def shipped_profiles() -> list[str]:
    """Names of the profiles that come with gpuscale."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve(ref: str, base_dir: Path | None = None) -> Path:
    """The file a profile reference means: a shipped name, or a path (relative to ``base_dir``)."""
    if NAME_PATTERN.fullmatch(ref) and _is_file(PROFILE_DIR / f"{ref}.yaml"):
        return PROFILE_DIR / f"{ref}.yaml"
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if _is_file(path):
        return path
    known = ", ".join(shipped_profiles())
    raise ProfileError([f"{ref}: no such profile (shipped: {known}; or give a file path)"])


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but a name the OS refuses (too long, …) is simply no file."""
    try:
        return path.is_file()
    except OSError:
        return False


def load_profile(ref: str, base_dir: Path | None = None) -> StepProfile:
    """Read the profile ``ref`` names (see :func:`resolve`)."""
    return _load(resolve(ref, base_dir))


@lru_cache(maxsize=64)
def _load(path: Path) -> StepProfile:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ProfileError([f"{path}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return parse_profile(document, str(path))


def parse_profile(document: Any, file: str) -> StepProfile:
    """Validate a profile document; every problem is reported at once."""
    errors: list[str] = []

    def err(field: str, message: str) -> None:
        errors.append(f"{file}: {field}: {message}")

    if not isinstance(document, dict):
        raise ProfileError([f"{file}: expected a mapping, got {type(document).__name__}"])
    for key in document:
        if key not in _FIELDS:
            err(str(key), f"unknown field (expected one of: {', '.join(_FIELDS)})")
    name = document.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        err("name", f"expected lower-case letters, digits, '-', '.' or '_', got {name!r}")
    betas = [0.0, 0.0, 0.0, 0.0]
    step = document.get("stepTime")
    if not isinstance(step, dict):
        err("stepTime", "required: {beta0, beta1, beta2[, beta3]} as durations")
    else:
        for key in step:
            if key not in ("beta0", "beta1", "beta2", "beta3"):
                err(f"stepTime.{key}", "unknown field (expected beta0, beta1, beta2, beta3)")
        for k in range(4):
            key = f"beta{k}"
            if key not in step:
                if k < 3:
                    err(f"stepTime.{key}", "required")
                continue
            seconds = _seconds(step[key])
            if seconds is None:
                err(
                    f"stepTime.{key}",
                    f'expected a duration like "6us" or seconds, got {step[key]!r}',
                )
            else:
                betas[k] = seconds
        if betas[0] <= 0 and "beta0" in step and not errors:
            err("stepTime.beta0", "must be greater than 0")
    alphas = [0.0, 0.0, 0.0]
    alpha = document.get("alpha")
    if alpha is not None and not isinstance(alpha, dict):
        err("alpha", f"expected {{{', '.join(_ALPHAS)}}} as durations, got {alpha!r}")
    elif alpha is not None:
        for key in alpha:
            if key not in _ALPHAS:
                err(f"alpha.{key}", f"unknown field (expected {', '.join(_ALPHAS)})")
        for k, key in enumerate(_ALPHAS):
            if key not in alpha:
                continue
            seconds = _seconds(alpha[key])
            if seconds is None:
                err(
                    f"alpha.{key}",
                    f'expected a duration like "3.4ms" or seconds, got {alpha[key]!r}',
                )
            else:
                alphas[k] = seconds
    tp = document.get("tensorParallelism", 1)
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        err("tensorParallelism", f"expected an integer of at least 1, got {tp!r}")
        tp = 1
    sizes: dict[str, float] = {}
    for key in ("gpuMemory", "weights", "kvBytesPerToken"):
        if key not in document:
            sizes[key] = 0.0
            continue
        value = parse_bytes(document[key])
        if value is None:
            err(key, f'expected bytes as a number or a quantity like "80Gi", got {document[key]!r}')
            value = 0.0
        sizes[key] = value
    text: dict[str, str] = {}
    for key in ("model", "gpu", "source"):
        raw = document.get(key, "")
        if not isinstance(raw, str):
            err(key, f"expected a string, got {raw!r}")
            raw = ""
        text[key] = raw.strip()
    if errors:
        raise ProfileError(errors)
    assert isinstance(name, str)
    return StepProfile(
        name=name,
        beta0=betas[0],
        beta1=betas[1],
        beta2=betas[2],
        beta3=betas[3],
        model=text["model"],
        gpu=text["gpu"],
        tensor_parallelism=tp,
        weights_bytes=sizes["weights"],
        kv_bytes_per_token=sizes["kvBytesPerToken"],
        gpu_memory_bytes=sizes["gpuMemory"],
        source=text["source"],
        alpha0=alphas[0],
        alpha1=alphas[1],
        alpha2=alphas[2],
    )


def profile_document(profile: StepProfile) -> dict[str, Any]:
    """The YAML document for ``profile`` (what ``calibrate`` writes)."""
    doc: dict[str, Any] = {"name": profile.name}
    if profile.model:
        doc["model"] = profile.model
    if profile.gpu:
        doc["gpu"] = profile.gpu
    doc["tensorParallelism"] = profile.tensor_parallelism
    doc["stepTime"] = {
        f"beta{k}": _spell(v)
        for k, v in enumerate((profile.beta0, profile.beta1, profile.beta2, profile.beta3))
    }
    if profile.alpha0 or profile.alpha1 or profile.alpha2:
        doc["alpha"] = {
            key: _spell(v)
            for key, v in zip(
                _ALPHAS, (profile.alpha0, profile.alpha1, profile.alpha2), strict=True
            )
        }
    if profile.gpu_memory_bytes:
        doc["gpuMemory"] = int(profile.gpu_memory_bytes)
    if profile.weights_bytes:
        doc["weights"] = int(profile.weights_bytes)
    if profile.kv_bytes_per_token:
        doc["kvBytesPerToken"] = int(profile.kv_bytes_per_token)
    if profile.source:
        doc["source"] = profile.source
    return doc


def _spell(seconds: float) -> str:
    """A duration string with microsecond resolution (``17.25us``), or ``format_duration``."""
    if seconds > 0 and seconds < 1e-3:
        if seconds < 1e-12:
            return "0s"  # below a picosecond is fitting noise, and %g would write an exponent
        return f"{seconds * 1e6:.6f}".rstrip("0").rstrip(".") + "us"
    return format_duration(max(seconds, 0.0))


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except DurationError:
            return None
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_bytes(value: Any) -> float | None:
    """Bytes from a number or a quantity (``80Gi``, ``16G``); ``None`` if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) and value > 0 else None
    if isinstance(value, str):
        m = _BYTES.fullmatch(value.strip())
        if m:
            return float(m.group(1)) * _FACTORS[m.group(2)]
    return None
