"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) in plain torch.

A baseline for ``scripts/bench_retrieval.py``, not part of the package. It follows
RecBole 1.2's ``SASRec`` with its default hyperparameters and ``loss_type: CE``:

* item embeddings (tied with the output layer) + learned absolute position embeddings,
  LayerNorm, dropout; ``blocks`` post-LN Transformer blocks with causal self-attention
  (2 blocks, 2 heads, hidden 64, feed-forward 256, GELU, dropout 0.5 on attention and
  hidden states, LayerNorm eps 1e-12, weights ~ N(0, 0.02));
* the last ``max_len`` items of a history (50 for both data sets: MovieLens histories are
  longer, Amazon Games-6k ones are at most 49); 2,048 next-item targets per batch;
* cross-entropy over the full item catalog (softmax over every item, as RecBole's CE
  loss), Adam lr 1e-3, no weight decay; ``negatives=K`` switches to a sampled softmax
  (the target against K items drawn uniformly per batch) where the full softmax is too
  slow on a CPU — the bench uses it for Amazon Games (16,859 items) and says so;
* early stopping on validation NDCG@10 (default patience 10 epochs, as RecBole's
  ``stopping_step``; the bench uses 5 for ML-100K and 3 for Games to fit its time budget);
  the best epoch's weights are kept.

One difference in training-sample construction, for CPU speed: RecBole makes one sample
per prefix of every history and scores only its last position; here each history is cut
into non-overlapping windows of ``max_len`` and every position is a target (Kang &
McAuley's original all-position objective): each next item is still a target exactly once
per epoch, but the first items of an older window see less context than a RecBole prefix
would give them. Batches group windows of similar length so little time goes to padding.

Why not RecBole itself: ``recbole==1.2.1`` pins ``ray<=2.6.3`` (the project needs
ray>=2.40) and, installed without its dependencies, fails at start-up on NumPy 2
(``np.float = np.float_`` in ``Config.compatibility_settings``).

Protocol (the bench's): the model is trained on the *validation* histories (MovieLens:
each user's ratings without the last two; Amazon: ``Games-6k.valid.inter`` histories),
early-stopped on the validation targets, then ranks the full catalog for each test user
from that user's training-split history, with the history's items excluded. Test targets
are never seen.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

log = logging.getLogger(__name__)

Ranker = Callable[[Sequence[str]], list[list[str]]]  # users -> top-N item ids per user (bench_retrieval)


@dataclass(frozen=True)
class SASRecConfig:
    """Hyperparameters (defaults: RecBole 1.2 ``SASRec`` defaults, ``loss_type: CE``)."""

    max_len: int = 50
    hidden: int = 64
    blocks: int = 2
    heads: int = 2
    inner: int = 256
    dropout: float = 0.5
    lr: float = 1e-3
    batch_targets: int = 2048  # next-item targets per batch (RecBole's train_batch_size)
    # None: softmax over the full catalog (RecBole's CE). A number: sampled softmax over the
    # target and that many items drawn uniformly per batch (shared by its targets), for
    # catalogs where the full softmax is too slow on CPU.
    negatives: int | None = None
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation NDCG@10
    seed: int = 42
    threads: int = 2
    top: int = 100


class SASRec(nn.Module):
    """Causal self-attention over an item sequence; position t predicts item t+1."""

    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items + 1, config.hidden, padding_idx=0)  # 0 = padding
        self.positions = nn.Embedding(config.max_len, config.hidden)
        self.norm = nn.LayerNorm(config.hidden, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            config.hidden,
            config.heads,
            config.inner,
            config.dropout,
            activation="gelu",
            layer_norm_eps=1e-12,
            batch_first=True,
            norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` (batch, length) of item indices, left-aligned, 0-padded -> (batch, length, hidden).

        Padding sits after the real items, so the causal mask alone keeps it out of every
        real position's attention.
        """
        length = seq.shape[1]
        x = self.items(seq) + self.positions(torch.arange(length, device=seq.device))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seq.device), 1)
        return self.encoder(self.dropout(self.norm(x)), mask=causal, is_causal=True)

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """(n, hidden) -> (n, n_items + 1) logits over the catalog (index 0 = padding)."""
        return hidden @ self.items.weight.T


# --------------------------------------------------------------------------- data


def sequences(events: pd.DataFrame, index: dict[str, int]) -> dict[str, list[int]]:
    """Each user's item indices, oldest first (stable on equal timestamps); unknown items dropped."""
    frame = events[["user_id", "item_id", "timestamp"]].copy()
    frame["_order"] = np.arange(len(frame))
    frame = frame.sort_values(["user_id", "timestamp", "_order"], kind="stable")
    codes = frame["item_id"].map(index).to_numpy()
    users = frame["user_id"].to_numpy()
    out: dict[str, list[int]] = {}
    for user, code in zip(users, codes, strict=True):
        if not (isinstance(code, float) and math.isnan(code)):
            out.setdefault(str(user), []).append(int(code))
    return out


def windows(histories: Sequence[list[int]], max_len: int) -> list[tuple[list[int], list[int]]]:
    """Non-overlapping (inputs, targets) windows of at most ``max_len``, cut from each history's end.

    Every next item of a history is a target exactly once; ``targets[t]`` is the item after
    ``inputs[t]``.
    """
    out = []
    for seq in histories:
        inputs, targets = seq[:-1], seq[1:]
        for end in range(len(inputs), 0, -max_len):
            start = max(0, end - max_len)
            out.append((list(inputs[start:end]), list(targets[start:end])))
    return out


def _pad(rows: Sequence[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)


def _batches(samples: list, batch_targets: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of sample indices holding about ``batch_targets`` targets each.

    Within a shuffled pool of ~50 batches, windows of similar length go together, so little
    time goes to padding.
    """
    order = rng.permutation(len(samples))
    mean = max(1.0, sum(len(s[1]) for s in samples) / max(1, len(samples)))
    pool = int(50 * batch_targets / mean) + 1
    batches: list[list[int]] = []
    for lo in range(0, len(order), pool):
        batch: list[int] = []
        count = 0
        for i in sorted(order[lo : lo + pool], key=lambda i: len(samples[i][0])):
            batch.append(int(i))
            count += len(samples[i][1])
            if count >= batch_targets:
                batches.append(batch)
                batch, count = [], 0
        if batch:
            batches.append(batch)
    return [batches[i] for i in rng.permutation(len(batches))]


# --------------------------------------------------------------------------- model use


def top_items(
    model: SASRec, histories: Sequence[list[int]], max_len: int, top: int, batch_size: int = 512
) -> np.ndarray:
    """(users, top) item indices (1-based) ranked over the full catalog, each history's items excluded.

    0 fills the row's tail when the history leaves fewer than ``top`` items to rank.
    """
    model.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(histories), batch_size):
            chunk = histories[lo : lo + batch_size]
            inputs = [h[-max_len:] or [0] for h in chunk]
            hidden = model(_pad(inputs))
            last = torch.tensor([len(h) - 1 for h in inputs])
            scores = model.scores(hidden[torch.arange(len(chunk)), last])
            scores[:, 0] = -torch.inf
            for row, h in enumerate(chunk):
                if h:
                    scores[row, torch.tensor(h)] = -torch.inf
                else:  # no history: the padding vector's output carries no signal; keep the order stable
                    scores[row, 1:] = 0.0
            best = torch.topk(scores, min(top, scores.shape[1] - 1), dim=1)
            out.append(best.indices.masked_fill(best.values == -torch.inf, 0).numpy())
    return np.concatenate(out) if out else np.zeros((0, top), dtype=np.int64)


def ndcg10(model: SASRec, histories: Sequence[list[int]], targets: np.ndarray, max_len: int) -> float:
    """Mean binary NDCG@10 of the held-out next item (full catalog, history excluded)."""
    ranked = top_items(model, histories, max_len, 10)
    hit = ranked == targets[:, None]
    gains = (hit / np.log2(np.arange(2, 12))[None, : ranked.shape[1]]).sum(axis=1)
    return float(gains.mean())


def _loss(
    model: SASRec, hidden: torch.Tensor, targets: torch.Tensor, n_items: int, negatives: int | None
) -> torch.Tensor:
    """Mean cross-entropy of the targets: full catalog, or target + shared uniform negatives."""
    if negatives is None:
        return nn.functional.cross_entropy(model.scores(hidden), targets)
    sampled = torch.randint(1, n_items + 1, (negatives,))
    positive = (hidden * model.items(targets)).sum(dim=1, keepdim=True)
    negative = hidden @ model.items(sampled).T
    negative = negative.masked_fill(sampled[None, :] == targets[:, None], -torch.inf)  # accidental hits
    logits = torch.cat([positive, negative], dim=1)
    return nn.functional.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))


@dataclass
class TrainResult:
    model: SASRec
    epochs: int  # epochs run (best + patience, or max_epochs)
    best_epoch: int
    best_ndcg10: float  # validation
    seconds: float  # training + validation wall clock

    @property
    def notes(self) -> str:
        return (
            f"SASRec: {self.epochs} epochs (best {self.best_epoch}, valid NDCG@10 "
            f"{self.best_ndcg10:.4f}), {self.seconds:.0f} s training on CPU ({torch.get_num_threads()} threads)"
        )


def train(
    histories: Sequence[list[int]],
    valid_histories: Sequence[list[int]],
    valid_targets: np.ndarray,
    n_items: int,
    config: SASRecConfig = SASRecConfig(),
) -> TrainResult:
    """Train on ``histories`` (every next item is a target); early-stop on the validation NDCG@10."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    model = SASRec(n_items, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    samples = windows([h for h in histories if len(h) > 1], config.max_len)
    best, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        total, count = 0.0, 0
        for batch in _batches(samples, config.batch_targets, rng):
            inputs = _pad([samples[i][0] for i in batch])
            targets = _pad([samples[i][1] for i in batch])
            hidden = model(inputs)
            mask = targets > 0
            loss = _loss(model, hidden[mask], targets[mask], n_items, config.negatives)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * int(mask.sum())
            count += int(mask.sum())
        score = ndcg10(model, valid_histories, valid_targets, config.max_len)
        log.info("epoch %d: train CE %.4f, valid NDCG@10 %.4f", epoch, total / max(1, count), score)
        if score > best:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, epoch, best_epoch, best, time.perf_counter() - started)


def sasrec_ranker(
    events: pd.DataFrame,
    items: pd.DataFrame,
    valid_events: pd.DataFrame,
    valid_targets: dict[str, str],
    config: SASRecConfig = SASRecConfig(),
) -> Ranker:
    """Train on ``valid_events`` (early-stopped on ``valid_targets``); rank from ``events`` histories.

    The returned ranker maps users to their top ``config.top`` catalog item ids, the items
    of their ``events`` history excluded; it has a ``notes`` attribute (epochs, seconds).
    """
    catalog = [str(i) for i in items["item_id"]]
    index = {item: k for k, item in enumerate(catalog, 1)}
    train_histories = sequences(valid_events, index)
    pairs = [(u, index[t]) for u, t in valid_targets.items() if t in index]
    valid_histories = [train_histories.get(u, []) for u, _ in pairs]
    result = train(
        list(train_histories.values()),
        valid_histories,
        np.array([t for _, t in pairs]),
        len(catalog),
        config,
    )
    test_histories = sequences(events, index)
    ids = np.array(["", *catalog], dtype=object)

    def rank(users: Sequence[str]) -> list[list[str]]:
        top = top_items(result.model, [test_histories.get(u, []) for u in users], config.max_len, config.top)
        return [[str(ids[j]) for j in row if j > 0] for row in top]

    loss = (
        "full-catalog CE" if config.negatives is None else f"sampled softmax ({config.negatives} negatives)"
    )
    capped = result.epochs == config.max_epochs and result.epochs - result.best_epoch < config.patience
    capped_text = " — stopped by the epoch cap, not by early stopping" if capped else ""
    notes = f"{result.notes}; {loss}, max {config.max_epochs} epochs, patience {config.patience}{capped_text}"
    rank.notes = notes  # type: ignore[attr-defined]
    log.info(notes)
    return rank
