"""Structured pruning: fewer attention heads, a narrower FFN and fewer blocks, chosen on
calibration data, so the result is an ordinary smaller model that plain `transformers`
loads and that runs faster everywhere.

Give `target_params` (the share of the model's parameters to keep) and the `parts` that may
shrink. Which heads, channels and blocks go is decided by their scores (`importance.py`:
the energy each adds to the residual stream; blocks by their angular distance, as
ShortGPT does); how much each part gives up is decided by trying the candidate splits of
the target (a share of blocks, each way to cut heads, channels making up the rest) on a
few calibration samples and keeping the one whose outputs stay closest to the unpruned
model's. Or set the amounts per part yourself. Heads and channels go in the same number
from every block, which ones by that block's own scores.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tcompress.core.modules import linear_weight
from tcompress.engine.inputs import batches_of, no_kv_cache
from tcompress.engine.method import ModelMethod, option, register
from tcompress.models.adapters import Adapter, Block, adapter
from tcompress.prune import importance as importance_
from tcompress.prune.shrink import drop_blocks, keep_channels, keep_heads

PARTS = ("heads", "channels", "blocks")


@dataclass(frozen=True)
class HeadCut:
    """Remove `per_group` query heads from every KV group, or `groups` whole KV groups."""

    per_group: int = 0
    groups: int = 0

    def kept(self, energy: Tensor, heads: int, kv_heads: int) -> list[int]:
        """The query heads a block keeps, given its heads' energies `[heads]`."""
        per = heads // kv_heads
        by_group = energy.view(kv_heads, per)
        if self.groups:
            dropped = set(torch.argsort(by_group.sum(1))[: self.groups].tolist())
            return [h for h in range(heads) if h // per not in dropped]
        kept = torch.argsort(by_group, dim=1)[:, self.per_group :]  # the lowest of each group go
        return sorted(g * per + j for g in range(kv_heads) for j in kept[g].tolist())


@dataclass(frozen=True)
class Plan:
    blocks: tuple[int, ...] = ()
    heads: HeadCut = HeadCut()
    channels: int = 0
    removed: int = 0  # parameters
    damage: float = 0.0  # relative energy removed


@register
@dataclass(frozen=True)
class Structured(ModelMethod):
    """Structured pruning: heads, FFN channels and blocks removed, so the model really shrinks.
    To `target_params` of the parameters with the `parts` allowed, or by explicit amounts
    (`remove_heads` query heads and `remove_channels` FFN channels per block, `remove_blocks`
    blocks)."""

    name = "structured"
    kind = "prune"
    target_params: float | None = option(None, "share of the model's parameters to keep, in (0, 1)")
    parts: tuple[str, ...] = option(("heads", "channels"), "which parts may shrink, joined by +: heads, channels, "
                                    "blocks", choices=PARTS)
    remove_heads: int = option(0, "query heads removed from every block, instead of a target")
    remove_channels: int = option(0, "FFN channels removed from every block, instead of a target")
    remove_blocks: int = option(0, "whole blocks removed, instead of a target")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise ValueError(f"parts must be a non-empty selection of {PARTS}, got {self.parts!r}")
        explicit = self.remove_heads or self.remove_channels or self.remove_blocks
        if self.target_params is None and not explicit:
            raise ValueError("give target_params (share of parameters to keep) or remove_heads / remove_channels / "
                             "remove_blocks")
        if self.target_params is not None and explicit:
            raise ValueError("give target_params or explicit remove_* amounts, not both")
        if self.target_params is not None and not 0 < self.target_params < 1:
            raise ValueError(f"target_params must be a fraction in (0, 1) of the parameters to keep, "
                             f"got {self.target_params!r}")
        for key in ("remove_heads", "remove_channels", "remove_blocks"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {value!r}")

    def headline(self) -> list[str]:
        if self.target_params is None:
            return []
        return [f"{self.target_params:.0%} params, {'+'.join(self.parts)}"]

    def headline_fields(self) -> tuple[str, ...]:
        return ("target_params", "parts")

    @property
    def wants_heads(self) -> bool:
        return self.remove_heads > 0 or (self.target_params is not None and "heads" in self.parts)

    def check(self, model: nn.Module) -> None:
        parts = adapter(model)
        if parts.family is None:
            raise ValueError(f"{self.name}: needs a known architecture family (llama, opt, gpt2, bert, vit)")
        if self.wants_heads and not parts.family.head_config:
            raise ValueError(f"{self.name}: removing heads of a {parts.name} model would need per-layer head sizes "
                             f"its config cannot hold; use parts=('channels', 'blocks') (heads: llama and vit families)")
        blocks = parts.blocks()
        width = _ffn_width(blocks[0])
        if self.remove_blocks >= len(blocks):
            raise ValueError(f"remove_blocks={self.remove_blocks} would remove every one of the {len(blocks)} blocks")
        if self.remove_channels >= width:
            raise ValueError(f"remove_channels={self.remove_channels} would remove every FFN channel (width {width})")
        if self.remove_heads:
            _head_cut(self.remove_heads, parts.num_heads, parts.num_kv_heads)  # raises if not a valid cut

    def apply_model(self, model: nn.Module, calib: Any, progress: bool = True) -> None:
        parts = adapter(model)
        scores = importance_.measure(model, parts, calib, heads=self.wants_heads, progress=progress)
        plans = self.plans(model, parts, scores)
        plan = plans[0] if len(plans) == 1 else least_harmful(model, plans, scores, calib, progress)
        shrink(model, parts, plan, scores)
        model.tc_structure = plan

    def plans(self, model: nn.Module, parts: Adapter, scores: importance_.Importance) -> list[Plan]:
        """The candidate plans: the explicit one, or those meeting the target."""
        if self.target_params is None:
            cut = _head_cut(self.remove_heads, parts.num_heads, parts.num_kv_heads) if self.remove_heads else HeadCut()
            blocks = _lowest(scores.influence, self.remove_blocks)
            return [_costed(parts, scores, blocks, cut, self.remove_channels)]
        total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        return candidate_plans(parts, scores, self.parts, total - int(self.target_params * total))


def candidate_plans(parts: Adapter, scores: importance_.Importance, allowed: tuple[str, ...], budget: int
                    ) -> list[Plan]:
    """Plans removing at least `budget` parameters: for each split of the budget between
    blocks (none, a quarter, half, three quarters, all of it) and each way to cut heads,
    FFN channels make up the rest where allowed."""
    blocks = parts.blocks()
    width = _ffn_width(blocks[0])
    per_block = _block_params(blocks[0])
    counts = [0]
    if "blocks" in allowed:
        whole = -(-budget // per_block)
        counts = sorted({min(whole, round(whole * share)) for share in (0, 0.25, 0.5, 0.75, 1.0)}
                        if {"heads", "channels"} & set(allowed) else {whole})
        counts = [c for c in counts if c < len(blocks)]
    cuts = [HeadCut()] + (_head_cuts(parts.num_heads, parts.num_kv_heads) if "heads" in allowed else [])
    plans = []
    for count, cut in itertools.product(counts, cuts):
        dropped = _lowest(scores.influence, count)
        plan = _costed(parts, scores, dropped, cut, 0)
        if plan.removed < budget and "channels" in allowed:
            per_channel = _channel_params(blocks[0]) * (len(blocks) - count)
            needed = -(-(budget - plan.removed) // per_channel) if per_channel else width
            if needed >= width:
                continue
            plan = _costed(parts, scores, dropped, cut, needed)
        if plan.removed >= budget:
            plans.append(plan)
    if not plans:
        raise ValueError(f"no way to remove {budget:,} parameters with parts {allowed}: allow more parts or keep more")
    return plans


def least_harmful(model: nn.Module, plans: list[Plan], scores: importance_.Importance, calib: Any,
                  progress: bool = True, samples: int = 4, tokens: int = 256) -> Plan:
    """The plan whose pruned model's final hidden states stay closest (mean 1 - cos over
    tokens) to the unpruned model's, on the first `samples` calibration batches (the first
    `tokens` tokens of each)."""
    batches = [_first_tokens(b if isinstance(b, dict) else {model.main_input_name: b}, tokens)
               for b in batches_of(calib)[:samples]]

    def final_states(m: nn.Module) -> list[Tensor]:
        with torch.no_grad(), no_kv_cache(m):
            return [m(**batch, output_hidden_states=True).hidden_states[-1] for batch in batches]

    reference = final_states(model)
    best, best_distance = plans[0], float("inf")
    for plan in tqdm(plans, desc="structured plans", disable=not progress):
        candidate = copy.deepcopy(model)
        shrink(candidate, adapter(candidate), plan, scores)
        distance = sum((1 - nn.functional.cosine_similarity(a, b, dim=-1)).mean().item()
                       for a, b in zip(final_states(candidate), reference)) / len(batches)
        del candidate
        if distance < best_distance:
            best, best_distance = plan, distance
    return best


TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def _first_tokens(batch: dict[str, Any], tokens: int) -> dict[str, Any]:
    return {k: v[:, :tokens] if k in TOKEN_INPUTS and isinstance(v, Tensor) else v for k, v in batch.items()}


def _costed(parts: Adapter, scores: importance_.Importance, dropped: tuple[int, ...], cut: HeadCut,
            channels: int) -> Plan:
    blocks = parts.blocks()
    kept = [i for i in range(len(blocks)) if i not in dropped]
    removed = sum(_block_params(blocks[i]) for i in dropped)
    damage = float(sum(scores.blocks[i] for i in dropped))
    if cut != HeadCut():
        removed += len(kept) * _head_params(parts, blocks[0], cut)
        for i in kept:
            heads = set(cut.kept(scores.heads[i], parts.num_heads, parts.num_kv_heads))
            damage += float(sum(scores.heads[i][h] for h in range(parts.num_heads) if h not in heads))
    if channels:
        removed += len(kept) * channels * _channel_params(blocks[0])
        damage += float(sum(torch.sort(scores.channels[i]).values[:channels].sum() for i in kept))
    return Plan(dropped, cut, channels, removed, damage)


def shrink(model: nn.Module, parts: Adapter, plan: Plan, scores: importance_.Importance) -> None:
    """Apply `plan`: narrow every kept block, then drop the blocks, then fix the config."""
    blocks = parts.blocks()
    config = model.config
    for block in blocks:
        if block.index in plan.blocks:
            continue
        if plan.channels:
            keep = torch.sort(torch.argsort(scores.channels[block.index], descending=True)[: -plan.channels]).values
            keep_channels(model, block, keep)
        if plan.heads != HeadCut():
            keep_heads(model, parts, block, plan.heads.kept(scores.heads[block.index], parts.num_heads,
                                                            parts.num_kv_heads))
    if plan.channels:
        setattr(config, parts.family.ffn_size, _ffn_width(blocks[0]) - plan.channels)
    if plan.heads != HeadCut():
        head_dim, per = parts.head_dim, parts.num_heads // parts.num_kv_heads
        kv = parts.num_kv_heads - plan.heads.groups
        config.head_dim = head_dim
        config.num_attention_heads = kv * (per - plan.heads.per_group)
        if hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = kv
    if plan.blocks:
        drop_blocks(model, parts, list(plan.blocks))


def _lowest(values: Tensor, count: int) -> tuple[int, ...]:
    return tuple(sorted(torch.argsort(values)[:count].tolist()))


def _head_cuts(heads: int, kv_heads: int) -> list[HeadCut]:
    per = heads // kv_heads
    return ([HeadCut(per_group=r) for r in range(1, per)] + [HeadCut(groups=g) for g in range(1, kv_heads)])


def _head_cut(count: int, heads: int, kv_heads: int) -> HeadCut:
    """The cut removing `count` query heads per block, or a clear error."""
    if count >= heads:
        raise ValueError(f"remove_heads={count} would remove every one of the {heads} heads of a block")
    for cut in _head_cuts(heads, kv_heads):
        if cut.per_group * kv_heads + cut.groups * (heads // kv_heads) == count:
            return cut
    per = heads // kv_heads
    raise ValueError(f"remove_heads={count}: with {heads} query heads sharing {kv_heads} KV heads, remove a multiple "
                     f"of {kv_heads} below {heads} (the same number from every KV group) or a multiple of {per} "
                     f"(whole KV groups)")


def _ffn_width(block: Block) -> int:
    (down,) = block.ffn_out.values()
    return linear_weight(down).shape[1]


def _block_params(block: Block) -> int:
    return sum(p.numel() for p in block.module.parameters())


def _channel_params(block: Block) -> int:
    """Parameters one FFN channel costs in one block."""
    rows = sum(linear_weight(m).shape[1] + (m.bias is not None) for m in block.ffn_in.values())
    return rows + sum(linear_weight(m).shape[0] for m in block.ffn_out.values())


def _head_params(parts: Adapter, block: Block, cut: HeadCut) -> int:
    """Parameters `cut` removes from one block."""
    d, per = parts.head_dim, parts.num_heads // parts.num_kv_heads
    q, k, v = block.attn_in.values()
    (o,) = block.attn_out.values()
    q_row = linear_weight(q).shape[1] + (q.bias is not None)
    kv_row = linear_weight(k).shape[1] + (k.bias is not None) + linear_weight(v).shape[1] + (v.bias is not None)
    o_col = linear_weight(o).shape[0]
    query_heads = cut.per_group * parts.num_kv_heads + cut.groups * per
    return query_heads * d * (q_row + o_col) + cut.groups * d * kv_row
