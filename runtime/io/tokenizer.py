"""Tokenizer: `tokenizer.json` through the `tokenizers` package, or token ids only.

Token ids are always accepted directly (`to_ids`), so a checkpoint without tokenizer files still
runs; encoding text then raises a ValueError saying why. Streaming detokenization
(`Tokenizer.stream()`) decodes the growing id list and emits only the new *stable* suffix: text
that ends in an incomplete UTF-8 sequence (a multi-byte character split across byte-level
tokens decodes to U+FFFD) is held back until the character completes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

__all__ = ["Tokenizer", "StreamDecoder", "QWEN_SPECIAL_TOKENS"]

# The special tokens of the Qwen2.5-Omni vocabulary, in id order (151643 + index in the 7B).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
)

_NO_TEXT = (
    "this checkpoint has no tokenizer.json, so text cannot be {what}; pass token ids instead "
    "(or add the tokenizer files to the checkpoint directory)"
)


class Tokenizer:
    """Wraps a `tokenizers.Tokenizer` (or nothing: ids-only mode)."""

    def __init__(self, backend=None, *, path: Optional[Path] = None, vocab_size: Optional[int] = None):
        self._tok = backend
        self.path = path
        self._vocab_size = vocab_size

    @classmethod
    def from_file(cls, path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"tokenizer file not found: {path}")
        try:
            from tokenizers import Tokenizer as _HFTokenizer

            backend = _HFTokenizer.from_file(str(path))
        except ImportError as e:
            raise ValueError(f"reading {path} needs the `tokenizers` package: {e}") from None
        except Exception as e:  # tokenizers raises its own Exception type on bad JSON
            raise ValueError(f"{path} is not a valid tokenizer.json: {e}") from None
        return cls(backend, path=path)

    @classmethod
    def from_dir(cls, directory, vocab_size: Optional[int] = None) -> "Tokenizer":
        """`directory/tokenizer.json` when present, else an ids-only tokenizer."""
        path = Path(directory) / "tokenizer.json"
        if path.is_file():
            return cls.from_file(path)
        return cls(None, vocab_size=vocab_size)

    @classmethod
    def ids_only(cls, vocab_size: Optional[int] = None) -> "Tokenizer":
        return cls(None, vocab_size=vocab_size)

    # ---- properties -------------------------------------------------------------------------
    @property
    def has_text(self) -> bool:
        return self._tok is not None

    @property
    def backend(self):
        return self._tok

    @property
    def vocab_size(self) -> Optional[int]:
        """Tokenizer vocabulary incl. added tokens (the model's embedding table may be larger)."""
        if self._tok is not None:
            return self._tok.get_vocab_size(with_added_tokens=True)
        return self._vocab_size

    def token_to_id(self, token: str) -> Optional[int]:
        return None if self._tok is None else self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> Optional[str]:
        return None if self._tok is None else self._tok.id_to_token(int(token_id))

    def special_token_id(self, token: str) -> int:
        """The id of a token that must exist (e.g. "<|AUDIO|>"); ValueError when it does not."""
        if self._tok is None:
            raise ValueError(_NO_TEXT.format(what=f"looked up ({token!r})"))
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"the tokenizer has no token {token!r}")
        return token_id

    @property
    def special_ids(self) -> set[int]:
        """Ids of the added special tokens (<|im_end|>, <|AUDIO|>, ...)."""
        if self._tok is None:
            return set()
        return {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    # ---- encode / decode --------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Text (special tokens such as <|im_start|> in it are recognised) -> ids."""
        if not isinstance(text, str):
            raise ValueError(f"encode needs a str, got {type(text).__name__}")
        if self._tok is None:
            raise ValueError(_NO_TEXT.format(what="encoded"))
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        if self._tok is None:
            raise ValueError(_NO_TEXT.format(what="decoded"))
        ids = self.check_ids(ids)
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def check_ids(self, ids: Iterable[int], vocab_size: Optional[int] = None, what: str = "token ids") -> list[int]:
        """Validate a sequence of token ids (ints, >= 0, < vocab_size when known)."""
        if isinstance(ids, (str, bytes)):
            raise ValueError(f"{what} must be a sequence of ints, got {type(ids).__name__}")
        try:
            ids = list(ids)
        except TypeError:
            raise ValueError(f"{what} must be a sequence of ints, got {type(ids).__name__}") from None
        out = []
        for i, t in enumerate(ids):
            if hasattr(t, "item") and not isinstance(t, (int, bool)):
                t = t.item()  # numpy / torch scalars
            if isinstance(t, bool) or not isinstance(t, int):
                raise ValueError(f"{what}[{i}] must be an int, got {type(t).__name__} {t!r:.40}")
            out.append(t)
        limit = vocab_size if vocab_size is not None else self.vocab_size
        bad = [t for t in out if t < 0 or (limit is not None and t >= limit)]
        if bad:
            raise ValueError(f"{what} out of range [0, {limit}): {bad[:10]}{' ...' if len(bad) > 10 else ''}")
        return out

    def to_ids(self, prompt: Union[str, Sequence[int]], vocab_size: Optional[int] = None) -> list[int]:
        """A prompt given as text (needs tokenizer.json) or as token ids (always accepted)."""
        if isinstance(prompt, str):
            return self.encode(prompt)
        ids = self.check_ids(prompt, vocab_size=vocab_size, what="prompt ids")
        if not ids:
            raise ValueError("prompt ids are empty")
        return ids

    def stream(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        if self._tok is None:
            raise ValueError(_NO_TEXT.format(what="streamed"))
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)


class StreamDecoder:
    """Incremental detokenizer. `push(ids)` returns the newly stable text (possibly "");
    `finish()` returns whatever was held back. The concatenation of all returned pieces equals
    `decode(all ids)` whenever that decode ends in a complete character.

    It keeps two offsets into the id list (as vLLM does): text up to `_read` has been emitted;
    decoding restarts from `_prefix` (a character boundary) so the cost per token stays small.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def _decode(self, ids) -> str:
        return self._tokenizer._tok.decode(ids, skip_special_tokens=self._skip)

    def push(self, ids: Union[int, Iterable[int]]) -> str:
        if isinstance(ids, int) or hasattr(ids, "item") and getattr(ids, "ndim", 1) == 0:
            ids = [ids]
        # Ids the tokenizer has no token for (embedding rows above its vocabulary: the 7B has
        # 152064 rows for 151665 tokens; a model can sample them) decode to no text, as
        # `tokenizers` / transformers' decode skip them; only non-ints and negatives are errors.
        self._ids.extend(self._tokenizer.check_ids(ids, vocab_size=1 << 62))
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        # U+FFFD at the end means the last character's bytes are not all here yet.
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            self.text += delta
            return delta
        return ""

    def finish(self) -> str:
        """Flush held-back text (an incomplete trailing character shows as U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        delta = new_text[len(prefix_text) :]
        self._prefix = self._read = len(self._ids)
        self.text += delta
        return delta
