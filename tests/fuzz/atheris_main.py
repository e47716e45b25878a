"""Coverage-guided fuzzing with atheris (libFuzzer for Python).

    python -m tests.fuzz.atheris_main TARGET [libFuzzer flags…]

TARGET is one of :data:`tests.fuzz.targets.TARGETS`. The gpuscale modules are instrumented for
coverage; libFuzzer flags pass through (``-runs=N``, ``-seed=S``, ``-max_total_time=SECONDS``,
a corpus directory). With a corpus directory that is empty, the target's seeds are written into
it first. A crash leaves ``crash-<sha1>`` in the working directory (or ``-artifact_prefix``);
replay it with ``python -m tests.fuzz.atheris_main TARGET crash-…``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["extender", "policies"]):
    from tests.fuzz.targets import TARGETS, seeds


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags…]")
    name = argv[1]
    for arg in argv[2:]:
        corpus = Path(arg)
        if not arg.startswith("-") and corpus.is_dir() and not any(corpus.iterdir()):
            for i, seed in enumerate(seeds(name)):
                (corpus / f"seed-{i}").write_bytes(seed)
    target = TARGETS[name]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
