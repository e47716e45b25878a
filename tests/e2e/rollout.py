"""Watching a controller rollout from outside: is the external metric served throughout, and
is there ever more than one leader?

:class:`RolloutWatch` polls, from two threads while ``helm upgrade`` runs, the external metric
through the aggregator (as the HPA reads it) and the leadership: the Lease's holder and every
Ready controller pod's own ``gpuscale_is_leader`` gauge (its ops port, read at the pod IP).
The judging is pure (:func:`outages`, :func:`holders`, :func:`double_claims`) so it is tested on
its own.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Answer:
    """One read of the external metric: when it was asked, when it ended, and whether it gave
    the expected value."""

    start: float
    end: float
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Outage:
    """A run of failed reads. ``observed``: from the first failed read's start to the next good
    read's start (what the poller saw failing); ``bound``: from the last good answer before to
    the first good answer after (no answer could be had for at most this long)."""

    observed: float
    bound: float
    failures: int
    detail: str


def outages(answers: Sequence[Answer]) -> list[Outage]:
    """The runs of failed reads in ``answers`` (in time order); one still failing at the end
    lasts until the last read ended."""
    out: list[Outage] = []
    run: list[Answer] = []
    last_ok_end: float | None = None
    for a in answers:
        if not a.ok:
            run.append(a)
            continue
        if run:
            before = last_ok_end if last_ok_end is not None else run[0].start
            out.append(Outage(a.start - run[0].start, a.end - before, len(run), run[0].detail))
            run = []
        last_ok_end = a.end
    if run:
        before = last_ok_end if last_ok_end is not None else run[0].start
        out.append(
            Outage(run[-1].end - run[0].start, run[-1].end - before, len(run), run[0].detail)
        )
    return out


@dataclass(frozen=True)
class Leadership:
    """One look at leadership: the Lease's holder (``""``: none) and the Ready controller pods
    whose ``gpuscale_is_leader`` was 1, read one after the other."""

    at: float
    holder: str
    claimants: frozenset[str]


def holders(looks: Sequence[Leadership]) -> list[str]:
    """The Lease holders in the order they held it (an empty holder, a released Lease, is no
    holder; consecutive repeats are one)."""
    out: list[str] = []
    for look in looks:
        if look.holder and (not out or out[-1] != look.holder):
            out.append(look.holder)
    return out


def double_claims(looks: Sequence[Leadership]) -> list[Leadership]:
    """Looks where two or more Ready pods claimed leadership."""
    return [look for look in looks if len(look.claimants) > 1]


def is_leader_gauge(text: str) -> bool:
    """Whether a controller's ``/metrics`` says it holds the Lease (``gpuscale_is_leader 1``)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gpuscale_is_leader":
                return sample.value == 1
    raise ValueError("no gpuscale_is_leader in the controller's /metrics")


ReadyPods = Callable[[], dict[str, str]]
"""Ready controller pods: name -> pod IP."""


@dataclass
class RolloutWatch:
    """Poll until :meth:`stop`; ``read_metric`` returns (ok, detail) for one read through the
    aggregator, ``read_holder`` the Lease's holder, ``ready_pods`` the Ready controller pods."""

    read_metric: Callable[[], tuple[bool, str]]
    read_holder: Callable[[], str]
    ready_pods: ReadyPods
    ops_port: int = 8080
    every: float = 0.1
    answers: list[Answer] = field(default_factory=list)
    looks: list[Leadership] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> RolloutWatch:
        for target in (self._poll_metric, self._poll_leadership):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _poll_metric(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                ok, detail = self.read_metric()
            except Exception as exc:  # any failure to read is a failed read, recorded
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            self.answers.append(Answer(start, time.monotonic(), ok, detail))
            self._stop.wait(self.every)

    def _claims(self, pods: dict[str, str]) -> frozenset[str]:
        claimants = set()
        for name, ip in pods.items():
            url = f"http://{ip}:{self.ops_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if is_leader_gauge(r.read().decode()):
                        claimants.add(name)
            except (OSError, ValueError):
                continue  # a pod stopping between the list and the read claims nothing
        return frozenset(claimants)

    def _poll_leadership(self) -> None:
        while not self._stop.is_set():
            try:
                holder = self.read_holder()
                pods = self.ready_pods()
                claimants = self._claims(pods)
                if len(claimants) > 1:
                    # Read one after the other, a handover between the reads looks like two
                    # leaders: ask again, and keep it only if both still claim.
                    claimants = claimants & self._claims({n: pods[n] for n in claimants})
            except Exception:  # the API server busy: look again
                self._stop.wait(self.every)
                continue
            self.looks.append(Leadership(time.monotonic(), holder, claimants))
            self._stop.wait(self.every)
