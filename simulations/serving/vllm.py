"""A vLLM V1 engine at iteration level: continuous batching, chunked prefill, a paged KV cache,
recompute preemption, and the engine's Prometheus metrics.

Scheduling follows vLLM V1's ``Scheduler.schedule()``: each step first walks the *running*
requests in order, giving each the tokens it still needs (one for a decoding sequence, the rest of
its prompt, capped by what is left of ``maxNumBatchedTokens``, for one being prefilled) and the
KV blocks those tokens need; when no block is free, the newest running request is preempted (its
blocks freed and its progress lost, to be recomputed) and put back at the front of the *waiting*
queue, until the request fits or is itself the one preempted. Then, if no request was preempted in
this step, waiting requests are admitted in FCFS order while the token budget, ``maxNumSeqs`` and
the free blocks allow; a prompt longer than the budget left is chunked. The step that finishes a
prompt also emits the request's first token; each later step emits one more, until the request
has its ``generated`` tokens. A resumed request recomputes its prompt and the tokens it already
had, in one prefill.

The profile's alpha terms fall outside the steps, as in BLIS: a request reaches the waiting queue
:func:`policies.stepmodel.arrival_overhead` after it reaches the replica (it counts as
outstanding meanwhile), and each token it emits leaves ``alpha2`` later than the one before would
have, so TTFT, every inter-token latency and e2e include them as vLLM's histograms do, while the
engine's steps never wait for them.

Step time is :func:`policies.stepmodel.step_time` of the batch. Runs of decode-only steps in
which nothing can change the batch (no admission possible, no request finishing before the last
step, no block allocation that could fail) are advanced in one event, with the same times
(summed step by step, so they round alike), tokens and metrics as stepping one by one. An
arrival that could be admitted cuts such a run at the end of the step in progress; a scrape first
brings the counters up to the last completed step.

Requests are indices into the run's :class:`ServingLog` (struct of lists), as in
:mod:`simulations.serving.replicas`, so the hot path allocates little per request.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from policies.stepmodel import (
    EngineLimits,
    StepProfile,
    arrival_overhead,
    step_time,
)
from simulations.serving.clock import Engine

TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
"""vLLM V1 ``vllm:time_to_first_token_seconds`` buckets (``vllm/v1/metrics/loggers.py``)."""
ITL_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
"""vLLM V1 ``vllm:inter_token_latency_seconds`` buckets (those of the former
``time_per_output_token_seconds``)."""
E2E_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
"""vLLM V1 ``vllm:e2e_request_latency_seconds`` buckets."""

MAX_RUN = 64
"""Most decode steps advanced in one event (bounds the work an interrupted run throws away)."""


class Histogram:
    """A Prometheus histogram's state: per-bucket counts (not cumulative, ``+Inf`` last)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, x: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, x)] += times
        self.sum += x * times
        self.count += times

    def cumulative(self) -> list[float]:
        acc = 0.0
        out = []
        for c in self.counts:
            acc += c
            out.append(acc)
        return out


class ServingLog:
    """What happened to every request of a run, by request index (struct of lists).

    ``prompt``/``generated`` are token counts (at least 1); ``start`` is when a request was first
    scheduled, ``first_token`` its TTFT instant, ``finish`` when its last token came out (both
    with the profile's ``alpha2`` per token emitted); ``last_token`` is the end of the step that
    made its latest token.
    """

    __slots__ = (
        "arrival",
        "blocks",
        "computed",
        "decoding",
        "finish",
        "first_token",
        "generated",
        "last_token",
        "length",
        "n",
        "out",
        "preempted",
        "prompt",
        "start",
    )

    def __init__(self, arrival: np.ndarray, prompt: np.ndarray, generated: np.ndarray) -> None:
        self.n = n = len(arrival)
        self.arrival: list[float] = np.asarray(arrival, dtype=np.float64).tolist()
        self.prompt: list[int] = np.maximum(np.rint(prompt), 1).astype(np.int64).tolist()
        self.generated: list[int] = np.maximum(np.rint(generated), 1).astype(np.int64).tolist()
        nan = math.nan
        self.start: list[float] = [nan] * n
        self.first_token: list[float] = [nan] * n
        self.finish: list[float] = [nan] * n
        self.last_token: list[float] = [nan] * n
        self.preempted: list[int] = [0] * n
        # engine state of requests in flight
        self.length: list[int] = list(self.prompt)
        """Tokens known: prompt plus tokens generated so far."""
        self.computed: list[int] = [0] * n
        """Tokens whose KV is in the cache."""
        self.out: list[int] = [0] * n
        self.blocks: list[int] = [0] * n
        self.decoding: list[bool] = [False] * n


def blocks_for(tokens: int, block_size: int) -> int:
    """KV blocks that hold ``tokens`` tokens: a block partly filled is taken whole."""
    return -(-tokens // block_size)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """One replica's engine: its step-time profile and scheduler budgets."""

    profile: StepProfile
    limits: EngineLimits


class BatchingReplica:
    """One vLLM engine. Router-facing attributes match :class:`~.replicas.Replica`: ``queue``
    (waiting), ``running`` (how many run), ``max_batch`` (``maxNumSeqs``), ``backlog``,
    ``on_idle``, ``admit()``, ``outstanding``."""

    __slots__ = (
        "_complete",
        "_drop",
        "_engine",
        "_log",
        "_push",
        "alpha0",
        "alpha1",
        "alpha2",
        "arrived",
        "backlog",
        "batch",
        "block",
        "blocks_total",
        "budget",
        "busy",
        "completed",
        "e2e",
        "epoch",
        "free",
        "generation_tokens",
        "id",
        "incoming",
        "itl",
        "max_batch",
        "on_idle",
        "pending",
        "preemptions",
        "preprocess",
        "profile",
        "prompt_tokens",
        "queue",
        "run_c0",
        "run_done",
        "run_ends",
        "run_k",
        "running",
        "steps",
        "ttft",
    )

    def __init__(
        self,
        replica_id: int,
        engine: Engine,
        log: ServingLog,
        config: EngineConfig,
        on_complete: Callable[[int], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
        e2e_buckets: Sequence[float] = E2E_BUCKETS,
    ) -> None:
        self.id = replica_id
        self._engine = engine
        self._push = engine.push
        self._log = log
        self.profile = config.profile
        self.alpha0 = config.profile.alpha0
        self.alpha1 = config.profile.alpha1
        """:func:`policies.stepmodel.arrival_overhead`'s terms, inlined in the hot path (the
        closed-form tests pin the two together)."""
        self.alpha2 = config.profile.alpha2
        self.preprocess = config.profile.alpha0 > 0 or config.profile.alpha1 > 0
        self.incoming: dict[int, None] = {}
        """Requests on their way to the waiting queue (``alpha0 + alpha1 × prompt``)."""
        self.pending = 0
        """``len(incoming)``, as a plain attribute for the router's hot loop."""
        limits = config.limits
        self.max_batch = limits.max_num_seqs
        self.budget = limits.max_num_batched_tokens
        self.block = limits.block_size
        self.blocks_total = limits.kv_blocks
        self.free = limits.kv_blocks
        self.queue: deque[int] = deque()
        self.batch: list[int] = []
        self.running = 0
        self.backlog: deque[int] | None = None
        self.on_idle: Callable[[BatchingReplica], None] | None = None
        self._complete = on_complete
        self._drop = on_drop
        self.busy = False
        self.epoch = 0
        self.run_k = 0
        self.run_done = 0
        self.run_ends: list[float] = []
        """``run_ends[m]``: when step ``m`` of the current decode run ends (``[0]``: its start)."""
        self.run_c0 = 0
        # metrics (vLLM names in parentheses)
        self.arrived = 0
        self.completed = 0  # request_success_total
        self.prompt_tokens = 0  # prompt_tokens_total
        self.generation_tokens = 0  # generation_tokens_total
        self.preemptions = 0  # num_preemptions_total
        self.steps = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(e2e_buckets)

    # ------------------------------------------------------------------ router side

    @property
    def outstanding(self) -> int:
        return self.running + len(self.queue) + self.pending

    @property
    def kv_usage(self) -> float:
        """``vllm:kv_cache_usage_perc``: share of KV blocks in use (0..1)."""
        return (self.blocks_total - self.free) / self.blocks_total

    def admit(self, i: int) -> None:
        """Request ``i`` reaches this replica; it is queued after the arrival overhead."""
        self.arrived += 1
        log = self._log
        if blocks_for(log.prompt[i] + log.generated[i] - 1, self.block) > self.blocks_total:
            # vLLM rejects a request that could never fit in the cache
            if self._drop is not None:
                self._drop(i)
            return
        if self.preprocess:
            self.incoming[i] = None
            self.pending += 1
            self._push(
                self._engine.now + (self.alpha0 + self.alpha1 * log.prompt[i]), self._enqueue, i
            )
            return
        self._enqueue(i)

    def _enqueue(self, i: int) -> None:
        """Request ``i`` joins the engine's waiting queue."""
        if self.preprocess:
            if i not in self.incoming:
                return  # the pod was killed meanwhile
            del self.incoming[i]
            self.pending -= 1
        self.queue.append(i)
        if not self.busy:
            # start after every request of this instant has arrived, as one batch
            self.busy = True
            self.epoch += 1
            self._push(self._engine.now, self._wake, self.epoch)
        elif self.run_k - self.run_done > 1 and len(self.queue) == 1:
            self._cut_run()

    def take_queue(self) -> list[int]:
        """Remove and return the requests still waiting (for a replica that goes away)."""
        items = list(self.queue)
        self.queue.clear()
        return items

    def evict(self) -> list[int]:
        """The pod is killed: every request it still holds is lost; the engine stops."""
        self.sync()
        self.epoch += 1
        self.busy = False
        items = list(self.incoming) + list(self.queue) + self.batch
        self.incoming.clear()
        self.pending = 0
        self.queue.clear()
        log = self._log
        for i in self.batch:
            self.free += log.blocks[i]
            log.blocks[i] = 0
        self.batch = []
        self.running = 0
        self.run_k = self.run_done = 0
        return items

    # ------------------------------------------------------------------ scheduling

    def _pull_backlog(self) -> None:
        backlog = self.backlog
        if backlog:
            room = self.max_batch - self.outstanding
            while room > 0 and backlog:
                i = backlog.popleft()
                self.arrived += 1
                room -= 1
                if self.preprocess:
                    self.incoming[i] = None
                    self.pending += 1
                    self._push(
                        self._engine.now + arrival_overhead(self.profile, self._log.prompt[i]),
                        self._enqueue,
                        i,
                    )
                else:
                    self.queue.append(i)

    def _next(self) -> None:
        """Plan the next step (or run of decode steps) from now, or go idle."""
        if self.backlog:
            self._pull_backlog()
        if not self.batch and not self.queue:
            self.busy = False
            self.run_k = self.run_done = 0
            if self.on_idle is not None and not self.incoming:
                self.on_idle(self)
            return
        self.busy = True
        now = self._engine.now
        k = self._run_length()
        if k >= 2:
            self.run_k = k
            self.run_done = 0
            self.run_ends = self._run_ends(now, k)
            self.epoch += 1
            self._push(self.run_ends[k], self._run_end, self.epoch)
            return
        self.run_k = self.run_done = 0
        dt, served, tokens = self._schedule()
        self.epoch += 1
        self._push(now + dt, self._step_end, (self.epoch, served, tokens))

    def _run_length(self) -> int:
        """Decode steps that can be advanced at once from now (0 or 1: take a single step)."""
        batch = self.batch
        n = len(batch)
        if n == 0 or n > self.budget:
            return 0
        log = self._log
        decoding = log.decoding
        out = log.out
        gen = log.generated
        left = MAX_RUN
        context = 0
        computed = log.computed
        for i in batch:
            if not decoding[i]:
                return 0
            g = gen[i] - out[i]
            if g < left:
                left = g
            context += computed[i]
        if left < 2:
            return 0
        need = self._blocks_needed(left)
        free = self.free
        if need > free:
            lo, hi = 0, left  # need(lo) <= free < need(hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._blocks_needed(mid) <= free:
                    lo = mid
                else:
                    hi = mid
            left = lo
            if left < 2:
                return 0
        queue = self.queue
        if queue and n < self.max_batch and n < self.budget:
            head = queue[0]
            first = min(log.length[head] - computed[head], self.budget - n)
            if blocks_for(first, self.block) <= free - self._blocks_needed(1):
                return 0  # the head could be admitted at the next step
        self.run_c0 = context
        return left

    def _blocks_needed(self, steps: int) -> int:
        """Blocks the running sequences allocate over ``steps`` decode steps."""
        bs = self.block
        log = self._log
        computed = log.computed
        blocks = log.blocks
        total = 0
        for i in self.batch:
            more = blocks_for(computed[i] + steps, bs) - blocks[i]
            if more > 0:
                total += more
        return total

    def _run_ends(self, start: float, steps: int) -> list[float]:
        """End times of a run's steps, summed one step at a time as single steps would be: a
        closed form rounds differently, and an arrival that ties with a step's end must fall
        on the same side of it either way."""
        n = len(self.batch)
        profile = self.profile
        if profile.beta3 == 0.0:
            taus = [step_time(profile, 0, n, 0)] * steps
        else:
            c0 = self.run_c0
            taus = [step_time(profile, 0, n, c0 + n * s) for s in range(steps)]
        return list(accumulate(taus, initial=start))

    def _schedule(self) -> tuple[float, list[int], list[int]]:
        """vLLM V1's ``schedule()`` for one step: its duration, the requests it serves and how
        many tokens each gets."""
        log = self._log
        length = log.length
        computed = log.computed
        blocks = log.blocks
        decoding = log.decoding
        bs = self.block
        budget = self.budget
        free = self.free
        batch = self.batch
        queue = self.queue
        sched: list[int] = []
        sched_n: list[int] = []
        prefill = 0
        ndec = 0
        context = 0
        preempted = False
        k = 0
        while k < len(batch) and budget > 0:
            i = batch[k]
            n = length[i] - computed[i]
            if n > budget:
                n = budget
            need = blocks_for(computed[i] + n, bs) - blocks[i]
            if need > free:
                lost_self = False
                while need > free:
                    v = batch.pop()
                    free += blocks[v]
                    blocks[v] = 0
                    computed[v] = 0
                    decoding[v] = False
                    log.preempted[v] += 1
                    self.preemptions += 1
                    queue.appendleft(v)
                    preempted = True
                    if v == i:
                        lost_self = True
                        break
                if lost_self:
                    break
            if need > 0:
                free -= need
                blocks[i] += need
            sched.append(i)
            sched_n.append(n)
            if decoding[i]:
                ndec += 1
                context += computed[i]
            else:
                prefill += n
            budget -= n
            k += 1
        if not preempted:
            max_seqs = self.max_batch
            now = self._engine.now
            start = log.start
            while queue and budget > 0 and len(batch) < max_seqs:
                i = queue[0]
                n = length[i] - computed[i]
                if n > budget:
                    n = budget
                need = blocks_for(n, bs)
                if need > free:
                    break
                queue.popleft()
                batch.append(i)
                free -= need
                blocks[i] = need
                sched.append(i)
                sched_n.append(n)
                prefill += n
                budget -= n
                if start[i] != start[i]:
                    start[i] = now
        self.free = free
        self.running = len(batch)
        self.steps += 1
        return step_time(self.profile, prefill, ndec, context), sched, sched_n

    # ------------------------------------------------------------------ step ends

    def _wake(self, epoch: int) -> None:
        if epoch == self.epoch:
            self._next()

    def _step_end(self, step: tuple[int, list[int], list[int]]) -> None:
        epoch, served, scheduled = step
        if epoch != self.epoch:
            return
        log = self._log
        now = self._engine.now
        length = log.length
        computed = log.computed
        out = log.out
        gen = log.generated
        first = log.first_token
        last = log.last_token
        finished = False
        ttft = self.ttft
        decoding = log.decoding
        a2 = self.alpha2
        gaps: dict[float, int] = {}
        """Inter-token gaps of this step; most sequences share one (the step time)."""
        tokens = 0
        for i, n in zip(served, scheduled, strict=True):
            c = computed[i] + n
            computed[i] = c
            if c < length[i]:
                continue  # a prompt chunk
            o = out[i] + 1
            out[i] = o
            tokens += 1
            if first[i] != first[i]:
                first[i] = now + a2
                ttft.observe(now + a2 - log.arrival[i])
                self.prompt_tokens += log.prompt[i]
            else:
                gap = now - last[i]
                gaps[gap] = gaps.get(gap, 0) + 1
            last[i] = now
            if o >= gen[i]:
                finished = True
                decoding[i] = False
            else:
                length[i] += 1
                decoding[i] = True
        self.generation_tokens += tokens
        itl = self.itl
        for gap, count in gaps.items():
            itl.observe(gap + a2, count)
        if finished:
            self._retire()
        self._next()

    def _retire(self) -> None:
        """Free the requests that have all their tokens."""
        log = self._log
        out = log.out
        gen = log.generated
        now = self._engine.now
        keep: list[int] = []
        done: list[int] = []
        for i in self.batch:
            (done if out[i] >= gen[i] else keep).append(i)
        self.batch = keep
        self.running = len(keep)
        blocks = log.blocks
        e2e = self.e2e
        a2 = self.alpha2
        for i in done:
            self.free += blocks[i]
            blocks[i] = 0
            t = now + gen[i] * a2
            log.finish[i] = t
            e2e.observe(t - log.arrival[i])
            self.completed += 1
        if self._complete is not None:
            for i in done:
                self._complete(i)

    def _elapsed_steps(self, now: float) -> int:
        """Steps of the current run that have ended by ``now``."""
        ends = self.run_ends
        return max(bisect_right(ends, now, 0, self.run_k + 1) - 1, self.run_done)

    def _advance(self, upto: int) -> None:
        """Apply steps ``run_done+1 .. upto`` of the current decode run."""
        m = upto - self.run_done
        if m <= 0:
            return
        log = self._log
        computed = log.computed
        length = log.length
        out = log.out
        blocks = log.blocks
        last = log.last_token
        bs = self.block
        done = self.run_done
        n = len(self.batch)
        end = self.run_ends[upto]
        free = self.free
        profile = self.profile
        itl = self.itl
        a2 = self.alpha2
        skip = 0
        if done == 0:
            # the first step's gap is the step time only for sequences that got a token in the
            # step before the run; one left out of it (token budget) waited longer
            first_end = self.run_ends[1]
            tau1 = step_time(profile, 0, n, self.run_c0)
            for i in self.batch:
                gap = first_end - last[i]
                if abs(gap - tau1) > 1e-12:
                    itl.observe(gap + a2)
                    skip += 1
        for i in self.batch:
            c = computed[i] + m
            computed[i] = c
            length[i] += m
            out[i] += m
            b = blocks_for(c, bs)
            free -= b - blocks[i]
            blocks[i] = b
            last[i] = end
        self.free = free
        self.generation_tokens += n * m
        self.steps += m
        if profile.beta3 == 0.0:
            itl.observe(step_time(profile, 0, n, 0) + a2, n * m - skip)
        else:
            for s in range(done, upto):
                itl.observe(
                    step_time(profile, 0, n, self.run_c0 + n * s) + a2,
                    n - (skip if s == 0 else 0),
                )
        self.run_done = upto

    def _run_end(self, epoch: int) -> None:
        if epoch != self.epoch:
            return
        self._advance(self.run_k)
        log = self._log
        out = log.out
        gen = log.generated
        finished = False
        for i in self.batch:
            if out[i] >= gen[i]:
                finished = True
                log.decoding[i] = False
        if finished:
            self._retire()
        self.run_k = self.run_done = 0
        self._next()

    def _cut_run(self) -> None:
        """An admissible request arrived: end the run after the step in progress."""
        now = self._engine.now
        m = self._elapsed_steps(now)
        cut = m if m >= 1 and self.run_ends[m] >= now else m + 1
        if cut >= self.run_k:
            return
        self.run_k = cut
        self.epoch += 1
        self._push(self.run_ends[cut], self._run_end, self.epoch)

    def sample(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[list[float], ...]]:
        """What the engine's ``/metrics`` shows now (:class:`~.metrics.Scrapable`)."""
        self.sync()
        gauges = (float(len(self.queue)), float(self.running), self.kv_usage)
        counters = (
            float(self.completed),
            float(self.arrived),
            float(self.prompt_tokens),
            float(self.generation_tokens),
            float(self.preemptions),
        )
        hists = tuple([*h.cumulative(), h.sum] for h in (self.e2e, self.ttft, self.itl))
        return gauges, counters, hists

    def sync(self) -> None:
        """Bring counters and request state up to the last step ended (before a scrape)."""
        if self.run_k:
            self._advance(self._elapsed_steps(self._engine.now))
