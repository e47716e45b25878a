"""Fragmentation-aware placement: put a pod where it strands the least GPU capacity.

The idea is that of fragmentation gradient descent (Weng et al., "Beware of Fragmentation",
USENIX ATC 2023), written from the paper's description and extended:

* The *workload* is the distribution of pod shapes the cluster sees (GPU count, per-GPU need,
  CPU, memory), each weighted by how often it arrives (:meth:`Workload.estimate`).
* A node's *expected stranded capacity* (:func:`unusable`) is its free GPU capacity that the
  workload could not use, in GPU equivalents (free MiB / device MiB, so half of a 16 GiB card and
  half of an 80 GiB card count the same, as in the paper's GPU-share accounting). Two views are
  averaged: the paper's "does the next pod of this shape fit, and which devices are too small for
  it", and "how many more pods of this shape fit before devices, idle GPUs, CPU or memory run
  out", which sees a host's CPU running out before its GPUs do.
* A pod goes where its placement (node and devices) raises that the least. Devices are chosen
  greedily, one GPU at a time; ties go to the tighter fit. Pods without GPUs are scored too:
  their CPU and memory can strand a node's free GPUs.

The extender hands host-aware strategies the node's free CPU and memory and the pod's requests
(:func:`host_context`); without them only the GPUs count. Results are memoised on node state,
which many nodes share and which changes only when a pod lands or leaves.

Where each part is: the workload model in :mod:`.workload`, host resources beside the GPUs in
:mod:`.host`, stranded capacity and the one-state placer in :mod:`.stranding`, its array form in
:mod:`.arrays` (bit-for-bit equal, property-tested), the scoring strategy in :mod:`.strategy`.
"""

from extender.fragmentation.arrays import place_many, scores_arrays
from extender.fragmentation.host import NO_GPU, HostGpus, HostNeed, host_context, with_host
from extender.fragmentation.stranding import NEXT_POD_WEIGHT, place, score_of, unusable
from extender.fragmentation.strategy import ARRAY_BATCH, Fragmentation, clear_caches, learn
from extender.fragmentation.workload import Shape, Workload, per_gpu_need

__all__ = [
    "ARRAY_BATCH",
    "NEXT_POD_WEIGHT",
    "NO_GPU",
    "Fragmentation",
    "HostGpus",
    "HostNeed",
    "Shape",
    "Workload",
    "clear_caches",
    "host_context",
    "learn",
    "per_gpu_need",
    "place",
    "place_many",
    "score_of",
    "scores_arrays",
    "unusable",
    "with_host",
]
