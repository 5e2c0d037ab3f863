"""A compiled decoder-only LM library at run time: the int8 KV cache held here (host memory) and passed to the
library's entry points (`prefill`, `decode` and the variants of compiler/frontend/llama.py STEPS) as state,
chunked prefill of any prompt up to the context, the logits' scale, the tokenizer the library carries; and on
top, the perplexity protocol and token generation.

Only the TVM runtime, NumPy and transformers' tokenizer are needed (no compiler imports beyond the runtime's and,
for a device over RPC, compiler/device.py's)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from compiler.errors import IntformerError
from compiler.llm.spec import LlmSpec, load_tokenizer


class LlmLibrary:
    """`lib.forward(ids, start) -> int32 logit codes (len, vocab)` for tokens at positions start.., writing
    their keys and values into the cache (`last_only=True`: the last token's logits only, (1, vocab), which is
    all generation needs); `lib.reset()` empties it."""

    def __init__(self, path: str, remote=None):
        """remote: a targets.remote.RemoteSpec to run on a device over TVM RPC (the library uploaded there)."""
        from compiler.device import load_model
        from compiler.runtime import CompiledModel

        first = load_model(path, remote)
        if first.manifest.llm is None:
            raise IntformerError(f"{path}: not a language-model library (it was compiled from "
                                 f"{'an encoder-decoder' if first.manifest.seq2seq else 'an ONNX model'}); "
                                 "compile a .gguf file or a LLaMA-family folder with `intformer compile`")
        self.path = path
        self.spec = LlmSpec.from_json(first.manifest.llm)
        # entry points by name (compiler/frontend/llama.py STEPS); libraries from before prefill_last and
        # prefill_first run the full prefill where those would serve
        names = [e.name for e in first.manifest.entries]
        if remote is None:  # one loaded module, a VM per entry point
            share = {"module": first.module, "manifest": first.manifest}
            self.entries = {n: CompiledModel(path, first.device, entry=n, **share) for n in names}
        else:  # one session and upload, a RemoteModel per entry point
            from compiler.device import RemoteModel

            self.entries = {n: first if first.entry == n else RemoteModel(path, remote, n, share=first) for n in names}
        missing = [n for n in ("prefill", "decode") if n not in self.entries]
        if missing:
            raise IntformerError(f"{path}: the library has no {' or '.join(missing)} entry point (it has {names}); "
                                 "recompile it with `intformer compile`")
        self.prefill, self.decode = self.entries["prefill"], self.entries["decode"]
        # keys transposed: (layers, kv heads, d, positions); values (layers, kv heads, positions, d)
        self.keys = self._cache("keys", self.spec.keys_shape())
        self.values = self._cache("values", self.spec.cache_shape())
        self.length = 0  # positions written
        self._tok = None
        self._small: dict = {}  # entry name -> {input: NumPy view of its device tensor} (None: upload each call)

    @staticmethod
    def _device_input(models: list, name: str, shape: tuple, dtype: str) -> np.ndarray | None:
        """A zeroed NumPy view of one device tensor that the `models` take as input `name` on every call
        (alias_input: written in place, never uploaded); None off the local CPU."""
        made = models[0].device_view(shape, dtype)
        if made is None:
            return None
        tensor, view = made
        for model in models:
            model.alias_input(name, view, tensor)
        return view

    def _cache(self, name: str, shape: tuple) -> np.ndarray:
        """A zeroed int8 cache. On the local CPU it is the memory of one device tensor, given to every entry
        point as is on every call (a step writes its keys in place: no upload of the whole cache per token)."""
        view = self._device_input(self._models(), name, shape, "int8")
        return np.zeros(shape, np.int8) if view is None else view

    def _models(self) -> list:
        return list(self.entries.values())

    def _small_inputs(self, model) -> dict | None:
        """Views of device tensors for an entry's ids, positions and row index, written in place every call as
        the cache is (on the local CPU; a fresh upload of two tiny arrays cost ~0.2 ms of a 4.5 ms decode
        step, measured against the bare VM call). None for a remote device."""
        if model.entry not in self._small:
            views = {s.name: self._device_input([model], s.name, s.shape, s.dtype) for s in model.inputs
                     if s.name in ("ids", "positions", "last")}
            self._small[model.entry] = None if any(v is None for v in views.values()) else views
        return self._small[model.entry]

    def _chunk_model(self, at_start: bool, last_only: bool):
        """The entry for a prompt chunk: at position 0 the one without a cache, one row's logits if asked."""
        wanted = {(True, True): ("prefill_first_last", "prefill_last", "prefill_first"),
                  (False, True): ("prefill_last",), (True, False): ("prefill_first",), (False, False): ()}
        return next((self.entries[n] for n in wanted[at_start, last_only] if n in self.entries), self.prefill)

    @property
    def tokenizer(self):
        if self._tok is None:
            from compiler.runtime import without_torch_if_runtime_only

            with tempfile.TemporaryDirectory(prefix="intformer-tok-") as tmp, without_torch_if_runtime_only():
                self._tok = load_tokenizer(self.spec, tmp, self.path)
        return self._tok

    def reset(self) -> None:
        self.length = 0

    def _run(self, model, ids: np.ndarray, start: int, n: int) -> np.ndarray:
        """One call on a (padded) chunk whose first n tokens are real: their logits (of the n-th alone on
        the entries with one row's logits); their keys and values go into the cache. Padding continues the
        positions, so no real query sees it (positions past the context stay inside the compiled rotary
        table)."""
        seq = model.inputs[0].shape[0]
        one = any(i.name == "last" for i in model.inputs)  # the logits of the last real token alone
        feed = self._small_inputs(model) or {"ids": np.zeros(seq, np.int32), "positions": np.zeros(seq, np.int32),
                                             **({"last": np.zeros(1, np.int32)} if one else {})}
        feed["ids"][:n] = ids
        feed["ids"][n:] = 0
        feed["positions"][:] = np.arange(start, start + seq, dtype=np.int32)
        if one:
            feed["last"][0] = n - 1
        logits, new_k, new_v = model({**feed, "keys": self.keys, "values": self.values})
        self.keys[..., start:start + n] = new_k[..., :n]
        self.values[:, :, start:start + n] = new_v[:, :, :n]
        return np.array(logits if one else logits[:n])

    def forward(self, ids, start: int | None = None, last_only: bool = False) -> np.ndarray:
        """int32 logit codes of tokens `ids` at positions start.. (default: after the cached ones); one token runs
        the decode entry, more run prefill chunks (the first, at position 0, without reading the cache).
        last_only: the last token's logits alone, (1, vocab) (the chunks' heads make one row)."""
        ids = np.asarray(ids, dtype=np.int32).reshape(-1)
        start = self.length if start is None else int(start)
        if not 0 <= start <= self.length:
            raise IntformerError(f"position {start} is past the {self.length} cached tokens")
        if start + len(ids) > self.spec.context:
            raise IntformerError(f"{start + len(ids)} tokens do not fit the library's context of "
                                 f"{self.spec.context}; recompile with a larger --context")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.spec.vocab):
            raise IntformerError(f"token ids must lie in [0, {self.spec.vocab})")
        if len(ids) == 1:
            out = self._run(self.decode, ids, start, 1)
        elif len(ids) == 0:
            out = np.zeros((0, self.spec.vocab), np.int32)
        else:
            c = self.spec.chunk
            out = np.concatenate([self._run(self._chunk_model(start + i == 0, last_only), ids[i:i + c], start + i,
                                            len(ids[i:i + c])) for i in range(0, len(ids), c)])
        self.length = start + len(ids)
        return out[-1:] if last_only else out

    def logits(self, codes: np.ndarray) -> np.ndarray:
        """The edge: int32 codes -> float64 logits (one multiply)."""
        return codes.astype(np.float64) * self.spec.logit_scale


def perplexity(lib: LlmLibrary, documents, max_len: int):
    """The issue's protocol (compiler/llm/perplexity.py) through the library: each document one causal pass."""
    from compiler.llm.perplexity import perplexity as _perplexity

    if max_len > lib.spec.context:
        raise IntformerError(f"--max-len {max_len} is longer than the library's context of {lib.spec.context}; "
                             "lower it or recompile with a larger --context")

    def logits_fn(ids):
        lib.reset()
        return lib.logits(lib.forward(ids, 0))

    return _perplexity(documents, lib.tokenizer, logits_fn, max_len)


@dataclass(frozen=True)
class Sampling:
    """temperature 0: greedy (argmax); else softmax(logits / temperature) cut to the top_k most likely (0: all)
    and to the smallest set whose probability reaches top_p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


def choose(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    if s.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / s.temperature
    order = np.argsort(-z, kind="stable")
    if s.top_k:
        order = order[: s.top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if s.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), s.top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


def prompt_tokens(lib: LlmLibrary, prompt: str, chat: bool) -> list[int]:
    tok = lib.tokenizer
    if chat:
        if not getattr(tok, "chat_template", None):
            raise IntformerError(f"{lib.path}: the model's tokenizer has no chat template; drop --chat")
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = list(tok.encode(prompt, add_special_tokens=False))
    if not ids:
        raise IntformerError("the prompt is empty: give --prompt some text")
    return ids


GREEDY = Sampling()


def generate_tokens(lib: LlmLibrary, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling = GREEDY
                    ) -> Iterator[int]:
    """Token ids as they are made: the prompt as prefill chunks, then one decode step per token, until
    max_new_tokens, the end-of-sequence token (not yielded) or the context is full."""
    if len(prompt_ids) >= lib.spec.context:
        raise IntformerError(f"the prompt has {len(prompt_ids)} tokens; the library's context is "
                             f"{lib.spec.context}: shorten it or recompile with a larger --context")
    rng = np.random.default_rng(sampling.seed)
    lib.reset()
    logits = lib.forward(prompt_ids, 0, last_only=True)[-1]
    for i in range(max_new_tokens):
        t = choose(lib.logits(logits), sampling, rng)
        if t == lib.spec.eos:
            return
        yield t
        if i + 1 == max_new_tokens or lib.length >= lib.spec.context:
            return
        logits = lib.forward([t])[-1]


def stream_text(lib: LlmLibrary, tokens: Iterator[int], write: Callable[[str], None]) -> list[int]:
    """Decode tokens to text as they come, writing only complete characters (a byte-level token may end inside
    a UTF-8 sequence)."""
    out: list[int] = []
    shown = ""
    for t in tokens:
        out.append(t)
        text = lib.tokenizer.decode(out, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            continue
        write(text[len(shown):])
        shown = text
    text = lib.tokenizer.decode(out, skip_special_tokens=True)
    if len(text) > len(shown):
        write(text[len(shown):])
    return out
