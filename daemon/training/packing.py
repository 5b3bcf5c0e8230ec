"""Examples → rows: best-fit packing of example indices, and the batches the loss functions take.

A packed batch concatenates its examples into one row with no padding; `cu_seq_lens` marks where each
starts, and attention.py keeps them from seeing each other. A padded batch is the classic [B, W] layout.
Both carry next-token targets shifted within each example, so losses.py treats them alike.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace

import torch

from daemon.training.chat_examples import IGNORE_INDEX, TokenizedExample


@dataclass(frozen=True)
class PackedBatch:
    """One batch, packed ([1, T], attention_mask None) or padded ([B, W]).

    input_ids, position_ids, targets: [B, W]. targets[t] is the label of token t+1 of the same example,
    IGNORE_INDEX at each example's last token and on padding. segment_ids, flat [B*W]: each token's
    example slot 0..n-1, -1 on padding. supervised_positions: the flat indices of the tokens with a
    target. cu_seq_lens ([n+1], int32): example starts in the row, packed batches only.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    segment_ids: torch.Tensor
    supervised_positions: torch.Tensor
    attention_mask: torch.Tensor | None
    cu_seq_lens: torch.Tensor | None
    lengths: tuple[int, ...]

    @property
    def num_examples(self) -> int:
        return len(self.lengths)

    @property
    def max_length(self) -> int:
        return max(self.lengths)

    @property
    def packed(self) -> bool:
        return self.cu_seq_lens is not None

    def to(self, device: torch.device | str) -> PackedBatch:
        """On CUDA through pinned memory without blocking: the host runs ahead instead of waiting for the copy."""
        to_cuda = torch.device(device).type == "cuda"

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None:
                return None
            if to_cuda and tensor.device.type == "cpu":
                return tensor.pin_memory().to(device, non_blocking=True)
            return tensor.to(device)

        return replace(
            self,
            input_ids=move(self.input_ids),
            position_ids=move(self.position_ids),
            targets=move(self.targets),
            segment_ids=move(self.segment_ids),
            supervised_positions=move(self.supervised_positions),
            attention_mask=move(self.attention_mask),
            cu_seq_lens=move(self.cu_seq_lens),
        )


def best_fit_rows(lengths: list[int], row_tokens: int, order: list[int] | None = None) -> list[list[int]]:
    """Best-fit-decreasing packing of example indices into rows of at most row_tokens tokens.

    Longest first; each example goes to the open row it leaves least room in. Among equal lengths the
    earlier in `order` (default: index order) goes first, so a reshuffled order gives other rows. An
    example longer than row_tokens gets a row of its own. Rows come out longest-first: shuffle them.
    """
    order = list(range(len(lengths))) if order is None else order
    if sorted(order) != list(range(len(lengths))):
        raise ValueError("order must be a permutation of the example indices")
    rank = {index: position for position, index in enumerate(order)}
    rows: list[list[int]] = []
    open_rows: list[tuple[int, int]] = []  # (room left, row number), sorted
    for index in sorted(order, key=lambda i: (-lengths[i], rank[i])):
        length = lengths[index]
        slot = bisect.bisect_left(open_rows, (length, -1))
        if slot < len(open_rows):
            room, row = open_rows.pop(slot)
            rows[row].append(index)
        else:
            room, row = row_tokens, len(rows)
            rows.append([index])
        if room - length > 0:
            bisect.insort(open_rows, (room - length, row))
    return rows


def collate_packed(examples: list[TokenizedExample]) -> PackedBatch:
    """All examples in one [1, T] row, positions restarting at 0 for each."""
    input_ids, position_ids, targets, segment_ids = [], [], [], []
    for slot, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids.extend(example.input_ids)
        position_ids.extend(range(size))
        targets.extend(_shifted(example.labels))
        segment_ids.extend([slot] * size)
    lengths = tuple(len(example.input_ids) for example in examples)
    cu_seq_lens = torch.zeros(len(examples) + 1, dtype=torch.int32)
    cu_seq_lens[1:] = torch.cumsum(torch.tensor(lengths), 0)
    target_tensor = torch.tensor([targets])
    return PackedBatch(
        input_ids=torch.tensor([input_ids]),
        position_ids=torch.tensor([position_ids]),
        targets=target_tensor,
        segment_ids=torch.tensor(segment_ids),
        supervised_positions=(target_tensor.view(-1) != IGNORE_INDEX).nonzero().view(-1),
        attention_mask=None,
        cu_seq_lens=cu_seq_lens,
        lengths=lengths,
    )


def collate_padded(examples: list[TokenizedExample], pad_token_id: int) -> PackedBatch:
    """One right-padded row per example, [B, W], with an attention mask."""
    lengths = tuple(len(example.input_ids) for example in examples)
    width = max(lengths)
    shape = (len(examples), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    targets = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    segment_ids = torch.full(shape, -1, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    for row, example in enumerate(examples):
        size = lengths[row]
        input_ids[row, :size] = torch.tensor(example.input_ids)
        targets[row, :size] = torch.tensor(_shifted(example.labels))
        segment_ids[row, :size] = row
        attention_mask[row, :size] = 1
    return PackedBatch(
        input_ids=input_ids,
        position_ids=torch.arange(width).expand(shape).contiguous(),
        targets=targets,
        segment_ids=segment_ids.view(-1),
        supervised_positions=(targets.view(-1) != IGNORE_INDEX).nonzero().view(-1),
        attention_mask=attention_mask,
        cu_seq_lens=None,
        lengths=lengths,
    )


def supervised_tokens(batch: PackedBatch) -> int:
    """Tokens that carry a target; no device sync."""
    return batch.supervised_positions.numel()


def real_tokens(batch: PackedBatch) -> int:
    """Tokens that are not padding; no device sync."""
    return sum(batch.lengths)


def _shifted(labels: list[int]) -> list[int]:
    return [*labels[1:], IGNORE_INDEX]
