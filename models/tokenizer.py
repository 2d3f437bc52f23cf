"""Exact prompt token counts from a GGUF file's own chat template and vocabulary."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from models.types import ChatMessage

# A template-neutral system message used to measure what one message adds to a prompt.
_PROBE_SYSTEM = ChatMessage("system", "x")
_COST_CACHE_SIZE = 50_000
_FRAGMENT_CACHE_SIZE = 20_000
# Prompts the fragment path must tokenize exactly as llama.cpp does before it is trusted.
_SELF_CHECK = (
    "Hello there!\n\n  How are  you?\t",
    " leading space, trailing space ",
    "numbers 12345 and émoji 🙂, ünïcode\r\nline",
    "\n",
)
# Used when a GGUF carries no chat template (ChatML, as most small instruct models use).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplate:
    """Renders messages to prompt text with a Jinja chat template, as llama.cpp servers do."""

    def __init__(self, template: str, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        self._template = env.from_string(template)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for these messages."""
        return self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )


def _raise_template_error(message: str) -> None:
    raise ValueError(f"chat template error: {message}")


class GGUFTokenizer:
    """Tokenizer over a vocab-only llama.cpp model: cheap, and separate from the generating one."""

    def __init__(self, model_path: str) -> None:
        from llama_cpp import Llama  # heavy import, deferred until a model is opened

        self._vocab = Llama(model_path=model_path, vocab_only=True, verbose=False)
        meta: dict[str, Any] = self._vocab.metadata
        bos = self.piece(self._vocab.token_bos())
        eos = self.piece(self._vocab.token_eos())
        self.template = ChatTemplate(
            meta.get("tokenizer.chat_template") or CHATML_TEMPLATE, bos, eos
        )
        self._lock = threading.Lock()
        self._costs: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._fragments = _Fragments(self._vocab)
        self._probe_base = len(
            self.encode(self.template.render([_PROBE_SYSTEM], add_generation_prompt=False))
        )

    def piece(self, token: int) -> str:
        """The text of one token (special tokens included)."""
        if token < 0:
            return ""
        return self._vocab.detokenize([token], special=True).decode("utf-8", errors="replace")

    def encode(self, prompt: str) -> list[int]:
        """Tokens of rendered prompt text; special tokens in it are parsed as such."""
        add_bos = not (self.template.bos_token and prompt.startswith(self.template.bos_token))
        with self._lock:
            return self._fragments.tokenize(prompt, add_bos=add_bos)

    def prompt_tokens(
        self, messages: list[ChatMessage], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """The exact tokens the model is fed for these messages."""
        return self.encode(
            self.template.render(messages, add_generation_prompt=add_generation_prompt)
        )

    def count(self, messages: list[ChatMessage], *, add_generation_prompt: bool = True) -> int:
        """Tokens of the whole prompt these messages render to."""
        return len(self.prompt_tokens(messages, add_generation_prompt=add_generation_prompt))

    def message_cost(self, message: ChatMessage) -> int:
        """Tokens one message adds to a prompt (cached: packing asks for the same turns often)."""
        key = (message.role, message.content)
        with self._lock:
            cached = self._costs.get(key)
            if cached is not None:
                self._costs.move_to_end(key)
                return cached
        rendered = self.template.render([_PROBE_SYSTEM, message], add_generation_prompt=False)
        cost = len(self.encode(rendered)) - self._probe_base
        with self._lock:
            self._costs[key] = cost
            if len(self._costs) > _COST_CACHE_SIZE:
                self._costs.popitem(last=False)
        return cost


class _Fragments:
    """Tokenizes prompts piece by piece, remembering the pieces.

    llama.cpp splits a prompt at its special tokens and tokenizes the text between them on
    its own (byte-level BPE vocabularies), so a prompt's tokens are its pieces' tokens in
    order; a conversation's prompts share most pieces (one per message), so each turn pays
    only for the new ones. Used only for vocabularies where a self-check at load agrees with
    tokenizing whole prompts; other vocabularies are always tokenized whole.
    """

    def __init__(self, vocab: Any) -> None:
        import llama_cpp

        self._ll = llama_cpp
        self._vocab = vocab._model.vocab
        self._bos = vocab.token_bos() if llama_cpp.llama_vocab_get_add_bos(self._vocab) else -1
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._specials: dict[str, int] = {}
        self._split: re.Pattern[str] | None = None
        if llama_cpp.llama_vocab_type(self._vocab) == llama_cpp.LLAMA_VOCAB_TYPE_BPE:
            self._specials = _special_tokens(vocab)
        if self._specials:
            by_length = sorted(self._specials, key=len, reverse=True)
            self._split = re.compile("(" + "|".join(map(re.escape, by_length)) + ")")
            if not self._agrees():
                self._split = None

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """The tokens of prompt text, special tokens parsed."""
        if self._split is None:
            return self.whole(text, add_bos=add_bos)
        out = [self._bos] if add_bos and self._bos >= 0 else []
        for i, piece in enumerate(self._split.split(text)):
            if i % 2:
                out.append(self._specials[piece])
            elif piece:
                out.extend(self._piece(piece))
        return out

    def whole(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        """llama.cpp's own tokenization of the whole text."""
        data = text.encode("utf-8")
        room = len(data) + 2  # never more tokens than bytes, plus BOS/EOS
        buf = (self._ll.llama_token * room)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, room, add_bos, special)
        if n < 0:
            raise ValueError(f"cannot tokenize a text of {len(data)} bytes")
        return list(buf[:n])

    def _piece(self, text: str) -> tuple[int, ...]:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        tokens = tuple(self.whole(text, add_bos=False, special=False))
        self._cache[text] = tokens
        if len(self._cache) > _FRAGMENT_CACHE_SIZE:
            self._cache.popitem(last=False)
        return tokens

    def _agrees(self) -> bool:
        specials = list(self._specials)[:4]
        for i, sample in enumerate(_SELF_CHECK):
            text = sample + specials[i % len(specials)] + sample + specials[-1] + "\n" + sample
            for add_bos in (True, False):
                if self.tokenize(text, add_bos=add_bos) != self.whole(text, add_bos=add_bos):
                    return False
        self._cache.clear()
        return True


def _special_tokens(vocab: Any) -> dict[str, int]:
    """The tokens llama.cpp parses out of prompt text, by their text; empty when any of them
    strips the whitespace around it (the pieces would then not be independent)."""
    import llama_cpp as ll

    handle = vocab._model.vocab
    special = ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_USER_DEFINED
    special |= ll.LLAMA_TOKEN_ATTR_UNKNOWN
    strips = ll.LLAMA_TOKEN_ATTR_LSTRIP | ll.LLAMA_TOKEN_ATTR_RSTRIP
    out: dict[str, int] = {}
    for token in range(ll.llama_vocab_n_tokens(handle)):
        attr = ll.llama_vocab_get_attr(handle, token)
        if not attr & special:
            continue
        if attr & strips:
            return {}
        text = vocab.detokenize([token], special=True).decode("utf-8", errors="replace")
        if text:
            out.setdefault(text, token)
    return out
