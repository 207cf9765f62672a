"""The pipeline's stages (`python -m pipeline.<stage>`) and the pure functions they share."""
import gc
import sys

# A stage runs as `python -m pipeline.<stage>`, and while Python imports the packages of such a
# module argv[0] holds "-m". The stage's imports (torch, transformers' Llama path, sympy under
# them) build about 380,000 objects that the cyclic garbage collector tracks, and it walks them
# again and again while they load, then once more as the interpreter shuts down: about 2-3 s of
# every job on a 2-core EPYC (BENCHMARKS.md, issue 17). So a stage process imports with the
# collector off, and `imports_done` (called by every stage's logging set-up) freezes what the
# imports built, which lives as long as the process anyway, and turns the collector back on for
# the stage's own work. The reference cycles the imports leave as garbage (about 220,000 objects,
# 9 MB) are frozen with the rest rather than collected: a full collection to free them would cost
# 0.3 s a job. A process that only imports the package (pytest, the Snakefile, a notebook) keeps
# its collector as it is.
_collector_held = sys.argv[:1] == ["-m"] and gc.isenabled()
if _collector_held:
    gc.disable()


def imports_done() -> None:
    """End a stage process's import phase: the objects alive now go to the collector's permanent
    generation (never scanned again) and collection resumes. A no-op in any other process."""
    global _collector_held
    if _collector_held:
        _collector_held = False
        gc.freeze()
        gc.enable()
