"""Selector parsing and the three patch flavours, by example and by property."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.kube_patch import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)
from tests.support.kube_selectors import (
    SelectorError,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

KEYS = st.sampled_from(["app", "tier", "gpuscale.io/policy", "x"])
VALUES = st.sampled_from(["a", "b", "llama", "1"])
LABELS = st.dictionaries(KEYS, VALUES, max_size=4)


def _obj(labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"labels": labels}}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=a", {"app": "a"}, True),
        ("app==a", {"app": "b"}, False),
        ("app!=a", {}, True),  # != matches objects without the key
        ("app in (a, b),tier", {"app": "b", "tier": "x"}, True),
        ("app notin (a,b)", {}, True),
        ("app notin (a,b)", {"app": "a"}, False),
        ("!tier", {"tier": "x"}, False),
        ("app,!tier", {"app": "z"}, True),
        ("", {"anything": "x"}, True),
    ],
)
def test_label_selector_examples(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert labels_match(parse_label_selector(selector), _obj(labels)) is expected


@pytest.mark.parametrize("bad", ["app in (a", "a=b=c", "=x", "app in a", ",", "a=b,"])
def test_bad_label_selectors_raise(bad: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(bad)


def test_field_selector_whitelist_and_empty_value() -> None:
    (req,) = parse_field_selector("spec.nodeName=", "pods")
    assert req.matches({"spec": {}}) and not req.matches({"spec": {"nodeName": "n"}})
    with pytest.raises(SelectorError, match="not supported"):
        parse_field_selector("spec.nodeName=x", "configmaps")


@given(key=KEYS, values=st.sets(VALUES, min_size=1, max_size=3), labels=LABELS)
def test_in_and_notin_are_complements(key: str, values: set[str], labels: dict[str, str]) -> None:
    listed = ",".join(sorted(values))
    inside = labels_match(parse_label_selector(f"{key} in ({listed})"), _obj(labels))
    outside = labels_match(parse_label_selector(f"{key} notin ({listed})"), _obj(labels))
    assert inside != outside


@given(labels=LABELS, wanted=LABELS)
def test_equality_selector_matches_exactly_the_supersets(
    labels: dict[str, str], wanted: dict[str, str]
) -> None:
    selector = ",".join(f"{k}={v}" for k, v in wanted.items())
    expected = all(labels.get(k) == v for k, v in wanted.items())
    assert labels_match(parse_label_selector(selector), _obj(labels)) is expected


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)
DOCS = st.dictionaries(st.text(max_size=3), JSON, max_size=4)


@given(doc=DOCS, patch=DOCS)
def test_merge_patch_sets_every_non_null_key_and_drops_null_ones(
    doc: dict[str, Any], patch: dict[str, Any]
) -> None:
    out = apply_merge_patch(doc, patch)
    for k, v in patch.items():
        if v is None:
            assert k not in out
        elif not isinstance(v, dict):
            assert out[k] == v
    for k in doc.keys() - patch.keys():
        assert out[k] == doc[k]


@given(
    doc=DOCS, key=st.text(max_size=4).filter(lambda k: "/" not in k and "~" not in k), value=JSON
)
def test_json_patch_add_then_remove_restores_a_missing_key(
    doc: dict[str, Any], key: str, value: Any
) -> None:
    doc.pop(key, None)
    added = apply_json_patch(doc, [{"op": "add", "path": f"/{key}", "value": value}])
    assert added[key] == value
    assert apply_json_patch(added, [{"op": "remove", "path": f"/{key}"}]) == doc


def test_json_patch_pointer_escapes_lists_and_failures() -> None:
    doc = {"metadata": {"annotations": {"gpuscale.io/status": "old"}}, "items": [1, 2]}
    out = apply_json_patch(
        doc,
        [
            {"op": "replace", "path": "/metadata/annotations/gpuscale.io~1status", "value": "new"},
            {"op": "add", "path": "/items/-", "value": 3},
            {"op": "move", "from": "/items/0", "path": "/first"},
            {"op": "copy", "from": "/first", "path": "/again"},
        ],
    )
    assert out == {
        "metadata": {"annotations": {"gpuscale.io/status": "new"}},
        "items": [2, 3],
        "first": 1,
        "again": 1,
    }
    assert doc["items"] == [1, 2]
    for bad in (
        [{"op": "remove", "path": "/nope"}],
        [{"op": "replace", "path": "/nope", "value": 1}],
        [{"op": "test", "path": "/items/0", "value": 9}],
        [{"op": "add", "path": "/items/7", "value": 1}],
        [{"op": "frobnicate", "path": "/x"}],
        {"op": "add"},
    ):
        with pytest.raises(PatchError):
            apply_json_patch(doc, bad)


def test_strategic_merge_patch_merges_keyed_lists() -> None:
    pod = {
        "spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        "metadata": {"finalizers": ["x", "y"]},
    }
    out = apply_strategic_merge_patch(
        pod,
        {
            "spec": {
                "containers": [{"name": "b", "image": "2"}, {"name": "a", "$patch": "delete"}]
            },
            "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]},
            "metadata": {"finalizers": ["z"]},
        },
    )
    assert out["spec"]["containers"] == [{"name": "b", "image": "2"}]
    assert [c["type"] for c in out["status"]["conditions"]] == ["Ready", "PodScheduled"]
    assert out["metadata"]["finalizers"] == ["z"]  # not a keyed list: replaced
