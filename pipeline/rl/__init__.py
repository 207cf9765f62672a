"""Online RL: one iteration loop (`train.py`, the stage `python -m pipeline.rl`) and one module
per method behind the `Method` interface of `base.py`; `losses.py` holds the pieces every method
shares. Which methods exist is `pipeline.registry.RL_METHODS`. Nothing is imported here, so the
workflow can read the registry without torch."""

# metrics.jsonl keys that are measured times, so two identical runs differ in them (and only them)
TIMING_KEYS = ("wall_s", "iter_s", "sample_s", "batch_s", "logprob_s", "train_s")
