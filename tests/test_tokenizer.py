"""The tokenizer's piece-by-piece path agrees with llama.cpp tokenizing whole prompts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from models.tokenizer import GGUFTokenizer
from models.types import ChatMessage

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>"]
PIECES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(SPECIALS),
    st.sampled_from([" ", "\n", "\n\n", "  x", "user\n", "é🙂", "\r\n"]),
)


def test_pieces_are_used_for_this_model(tokenizer: GGUFTokenizer) -> None:
    fragments = tokenizer._fragments
    assert fragments._split is not None and "<|im_start|>" in fragments._specials


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=12), st.booleans())
def test_any_text_tokenizes_as_llama_cpp_does_whole(
    tokenizer: GGUFTokenizer, parts: list[str], add_bos: bool
) -> None:
    text = "".join(parts)
    fragments = tokenizer._fragments
    assert fragments.tokenize(text, add_bos=add_bos) == fragments.whole(text, add_bos=add_bos)


def test_a_prompt_counts_the_same_when_its_pieces_are_cached(tokenizer: GGUFTokenizer) -> None:
    turns = [ChatMessage("user" if i % 2 else "assistant", f"turn {i}: café 🙂") for i in range(9)]
    messages = [ChatMessage("system", "Be brief."), *turns]
    first = tokenizer.prompt_tokens(messages)
    again = tokenizer.prompt_tokens([*messages, ChatMessage("user", "and then?")])
    rendered = tokenizer.template.render([*messages, ChatMessage("user", "and then?")])
    assert again == tokenizer._fragments.whole(rendered, add_bos=True)
    assert again[: len(first) - 3] == first[:-3]  # same prefix up to the generation prompt
