"""The sampler: one interface, two backends. Every stage that generates text (seed rollouts,
RL, evaluation, later MC labelling and beam search) goes through `Sampler.generate`, which
returns token ids and text per sample and accumulates tokens and FLOPs in `self.compute`.

- `HFSampler`: transformers `generate`, CPU or GPU, batched, seeded.
- `VLLMSampler`: vLLM on GPU (imported lazily, so CPU installs never need it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from .flops import Compute, count_params
from .modeling import param_count_from_config


@dataclass
class Generation:
    text: str              # decoded response, special tokens removed
    token_ids: list[int]   # response tokens, EOS included when the model produced it
    finished: bool         # ended with EOS (False: cut at max_new_tokens)


class Sampler:
    """Interface. `generate(prompts, n)` returns, for each prompt, a list of n Generations."""

    compute: Compute

    def generate(self, prompts: list[str], n: int = 1, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, seed: int = 0, greedy: bool = False,
                 desc: str = "sampling") -> list[list[Generation]]:
        raise NotImplementedError

    def generate_from_prefixes(self, prefixes: list[list[int]], n: int = 1, *, temperature: float = 1.0,
                               top_p: float = 1.0, max_new_tokens: int = 64, seed: int = 0, share_prefix: bool = True,
                               desc: str = "completions") -> list[list[Generation]]:
        """n continuations of each token-id prefix; the prefix's computation is shared."""
        raise NotImplementedError


class HFSampler(Sampler):
    def __init__(self, model, tokenizer, batch_size: int = 256, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.progress = progress
        self.n_params = count_params(model)
        self.compute = Compute()

    @torch.no_grad()
    def generate(self, prompts, n=1, *, temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0,
                 greedy=False, desc="sampling"):
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


    @torch.no_grad()
    def generate_from_prefixes(self, prefixes: list[list[int]], n: int = 1, *, temperature: float = 1.0,
                               top_p: float = 1.0, max_new_tokens: int = 64, seed: int = 0, share_prefix: bool = True,
                               desc: str = "completions") -> list[list[Generation]]:
        """n continuations of each token-id prefix (MC partial rollouts, VinePPO values).

        With `share_prefix` the prefix is encoded once and its KV cache is copied n times, so
        prefill costs len(prefix) instead of n * len(prefix) tokens; `share_prefix=False` is the
        naive way (n copies encoded), kept for the benchmark. Decoding is a plain loop over the
        cache: sample from softmax(logits / T) with optional nucleus filtering, stop at EOS.
        """
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        eos, pad = tok.eos_token_id, tok.pad_token_id
        per_batch = max(1, self.batch_size // max(1, n))
        out: list[list[Generation]] = []
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            for b_idx, start in enumerate(tqdm(range(0, len(prefixes), per_batch), desc=desc,
                                               disable=not self.progress, leave=False)):
                torch.manual_seed(seed * 1_000_003 + b_idx)
                chunk = prefixes[start:start + per_batch]
                L = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), L), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), L), dtype=torch.long)
                for i, p in enumerate(chunk):  # left padding: every row's next token is at column L
                    ids[i, L - len(p):] = torch.tensor(p)
                    mask[i, L - len(p):] = 1
                ids, mask = ids.to(device), mask.to(device)
                if share_prefix:
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
                rows = logits.shape[0]
                tokens: list[list[int]] = [[] for _ in range(rows)]
                done = torch.zeros(rows, dtype=torch.bool, device=device)
                for _ in range(max_new_tokens):
                    nxt = sample_next(logits, temperature, top_p)
                    for r in torch.nonzero(~done).flatten().tolist():
                        tokens[r].append(int(nxt[r]))
                    done |= nxt == eos
                    if bool(done.all()):
                        break
                    nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                    mask = torch.cat([mask, (~done).long().unsqueeze(1)], dim=1)
                    fwd = model(input_ids=nxt.unsqueeze(1), attention_mask=mask, past_key_values=cache, use_cache=True)
                    cache, logits = fwd.past_key_values, fwd.logits[:, -1]
                gens = [Generation(tok.decode(t, skip_special_tokens=True), t, bool(t) and t[-1] == eos) for t in tokens]
                out.extend(gens[i * n:(i + 1) * n] for i in range(len(chunk)))
                self.compute.add_sampling(self.n_params, prefill, sum(len(t) for t in tokens), rows)
        if was_training:
            model.train()
        return out


def sample_next(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row from softmax(logits / T), restricted to the top-p nucleus; argmax at T=0."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1).squeeze(-1)


def _strip_after_eos(ids: list[int], eos_id: int, pad_id: int) -> list[int]:
    """Response tokens up to and including the first EOS. `generate` pads a row only after
    its EOS, so a row without EOS holds no padding: every token in it was sampled (even one
    whose id happens to be the pad id) and must be kept and counted."""
    if eos_id in ids:
        return ids[: ids.index(eos_id) + 1]
    return ids


class VLLMSampler(Sampler):
    """vLLM backend (GPU only). Imported lazily: CPU installs and CI never import vllm."""

    def __init__(self, model_path: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 dtype: str = "bfloat16", enable_prefix_caching: bool = True, n_params: int | None = None):
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the GPU extra
            raise ImportError("sampling.backend=vllm needs the GPU extra: pip install -e '.[gpu]'") from e
        self.llm = LLM(model=model_path, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=enable_prefix_caching,
                       trust_remote_code=False)
        self.tokenizer = self.llm.get_tokenizer()
        self.n_params = n_params or param_count_from_config(model_path)
        self.compute = Compute()

    def generate(self, prompts, n=1, *, temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0,
                 greedy=False, desc="sampling"):
        return self._run(list(prompts), n, 0.0 if greedy else temperature, 1.0 if greedy else top_p,
                         max_new_tokens, seed)

    def generate_from_prefixes(self, prefixes, n=1, *, temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0,
                               share_prefix=True, desc="completions"):
        # vLLM's automatic prefix caching (enable_prefix_caching) shares the prefix computation
        return self._run([{"prompt_token_ids": list(p)} for p in prefixes], n, temperature, top_p,
                         max_new_tokens, seed)

    def _run(self, prompts, n, temperature, top_p, max_new_tokens, seed):
        from vllm import SamplingParams

        # one seed per prompt: a shared seed would give every prompt the same random stream
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 seed=seed * 1_000_003 + i) for i in range(len(prompts))]
        results = self.llm.generate(prompts, params, use_tqdm=True)
        out = []
        for res in results:
            gens = []
            n_prompt = len(res.prompt_token_ids)
            n_gen = 0
            for o in res.outputs:
                ids = list(o.token_ids)
                n_gen += len(ids)
                gens.append(Generation(o.text, ids, o.finish_reason == "stop"))
            self.compute.add_sampling(self.n_params, n_prompt * len(gens), n_gen, len(gens))
            out.append(gens)
        return out


def make_sampler(sampling_cfg: dict, model=None, tokenizer=None, model_path: str | None = None) -> Sampler:
    """Build the configured backend. The HF backend wraps an in-memory model (so RL samples
    from the weights it is training); vLLM loads `model_path`."""
    backend = sampling_cfg.get("backend", "hf")
    if backend == "hf":
        if model is None:
            from .modeling import load_policy
            model, tokenizer = load_policy(model_path)
        return HFSampler(model, tokenizer, batch_size=sampling_cfg.get("batch_size", 256),
                         progress=sampling_cfg.get("progress", True))
    if backend == "vllm":
        return VLLMSampler(model_path, tensor_parallel_size=sampling_cfg.get("tensor_parallel_size", 1),
                           gpu_memory_utilization=sampling_cfg.get("gpu_memory_utilization", 0.85))
    raise ValueError(f"sampling.backend must be 'hf' or 'vllm', got {backend!r}")
