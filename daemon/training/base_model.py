"""Builds the tiny Llama-architecture base model for the demo and the tests, with no download.

Trains a byte-level BPE tokenizer on the bundled corpus (data/base_corpus.txt), gives it special
tokens and a chat template whose end-of-turn token is the eos token, initialises a ~1M-parameter
Llama from the seed and pretrains it briefly on the corpus: plain paragraphs as documents, the
`Customer:`/`Agent:` dialogues rendered through the chat template. Deterministic for a seed on one
machine (float summation order can differ across CPU thread counts).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
    set_seed,
)

CORPUS_PATH = Path(__file__).parent / "data" / "base_corpus.txt"
SYSTEM_PROMPT = "You are a helpful customer support agent."
VOCAB_SIZE = 2048
DEFAULT_PRETRAIN_STEPS = 150
BLOCK_SIZE = 128
PRETRAIN_BATCH = 16
PRETRAIN_LR = 3e-3

BOS, EOS, PAD, UNK = "<s>", "<|end|>", "<pad>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# GPT-2's pre-tokenizer split, plus one rule: a placeholder such as " <CUSTOMER_FIRST_NAME>" stays whole.
PRE_TOKENIZER_SPLIT = (
    r" ?<[A-Z][A-Z0-9_]*>|'(?:s|t|re|ve|m|ll|d)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

log = logging.getLogger(__name__)


def make_base_model(out_dir: Path, seed: int = 0, steps: int = DEFAULT_PRETRAIN_STEPS) -> dict[str, Any]:
    """Writes model, tokenizer and ticketune_base.json into out_dir; returns the description."""
    started = time.perf_counter()
    set_seed(seed)
    corpus = CORPUS_PATH.read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in corpus.split("\n\n") if p.strip()]
    tokenizer = train_tokenizer(paragraphs)
    stream = torch.tensor(pretraining_stream(tokenizer, paragraphs), dtype=torch.long)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    final_loss = pretrain(model, stream, steps, seed)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    description = {
        "what": "tiny Llama-architecture causal LM made by `ticketune make-base-model` for demo and tests",
        "architecture": "LlamaForCausalLM",
        "parameters": sum(p.numel() for p in model.parameters()),
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "seed": seed,
        "pretrain_steps": steps,
        "pretrain_tokens": steps * PRETRAIN_BATCH * BLOCK_SIZE,
        "corpus_tokens": len(stream),
        "final_loss": final_loss,
        "seconds": round(time.perf_counter() - started, 2),
        "torch": torch.__version__,
    }
    (out_dir / "ticketune_base.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return description


def train_tokenizer(paragraphs: list[str]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRE_TOKENIZER_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=[UNK, BOS, EOS, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(paragraphs, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def pretraining_stream(tokenizer: PreTrainedTokenizerFast, paragraphs: list[str]) -> list[int]:
    """All documents as one token stream: dialogues through the chat template, prose between bos and eos."""
    stream: list[int] = []
    for paragraph in paragraphs:
        messages = dialogue_messages(paragraph)
        if messages:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        else:
            text = BOS + paragraph + EOS
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return stream


def dialogue_messages(paragraph: str) -> list[dict[str, str]]:
    """`Customer:`/`Agent:` lines as chat messages after the system prompt; [] for prose."""
    roles = {"Customer:": "user", "Agent:": "assistant"}
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for line in paragraph.splitlines():
        prefix = next((p for p in roles if line.startswith(p)), None)
        if prefix is None:
            return []
        messages.append({"role": roles[prefix], "content": line[len(prefix) :].strip()})
    return messages


def pretrain(model: LlamaForCausalLM, stream: torch.Tensor, steps: int, seed: int) -> float | None:
    """Next-token training on random windows of the stream; returns the mean loss of the last 10% of steps."""
    if steps == 0:
        return None
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=PRETRAIN_LR, weight_decay=0.01, betas=(0.9, 0.95), fused=True
    )
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    tail = max(1, steps // 10)
    recent: list[float] = []
    model.train()
    for step in range(1, steps + 1):
        starts = [rng.randrange(0, len(stream) - BLOCK_SIZE - 1) for _ in range(PRETRAIN_BATCH)]
        window = torch.stack([stream[s : s + BLOCK_SIZE + 1] for s in starts])
        logits = model(input_ids=window[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), window[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step > steps - tail:
            recent.append(loss.item())
        if step % max(1, steps // 10) == 0 or step == steps:
            log.info("pretrain step=%d/%d loss=%.4f", step, steps, loss.item())
    model.eval()
    return round(math.fsum(recent) / len(recent), 4)
