"""Exact prompt token counts from a GGUF file's own chat template and vocabulary."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from models.types import ChatMessage

# A template-neutral system message used to measure what one message adds to a prompt.
_PROBE_SYSTEM = ChatMessage("system", "x")
_COST_CACHE_SIZE = 50_000
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
            tokens: list[int] = self._vocab.tokenize(
                prompt.encode("utf-8"), add_bos=add_bos, special=True
            )
        return tokens

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
