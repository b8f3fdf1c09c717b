"""Family adapters: where the blocks, attention, FFN, norms and embeddings of a model are.

Methods never hard-code `model.model.layers`; they ask `adapter(model)` for the ordered
blocks and, per block, the linears grouped the way they run (attention inputs, attention
output, FFN inputs, FFN output) and the norm feeding each group. A model whose family is
not known gets the generic adapter: the largest stack of identical blocks, with every
linear of a block in one group; a module with no such stack is one block by itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from torch import nn

from tcompress.core.modules import is_linear

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """Module paths of one architecture family; block parts are relative to a block."""

    name: str
    model_types: tuple[str, ...]
    blocks: str  # suffix of the ModuleList's name, e.g. "layers" matches "model.layers"
    attn_in: tuple[str, ...]
    attn_out: tuple[str, ...]
    ffn_in: tuple[str, ...]
    ffn_out: tuple[str, ...]
    attn_norm: str | None  # None: post-norm, fed by the previous block's `out_norm`
    ffn_norm: str | None
    embeddings: tuple[str, ...]
    head: tuple[str, ...]  # candidate names of the output head, first found wins
    out_norm: str | None = None  # post-norm families: the norm a block ends with
    first_norm: str | None = None  # post-norm families: the embeddings' norm feeding block 0
    attention: str | None = None  # the attention module (its output shows the attention inputs' error)
    mlp: str | None = None  # the FFN module, where the family has one
    v_source: str | None = None  # the linear producing the values the attention output mixes
    ffn_out_source: str | None = None  # the linear whose output scales the FFN output's input linearly
    final_norm: str | None = None  # the norm between the last block and the LM head
    ffn_size: str | None = "intermediate_size"  # the config field of the FFN width
    head_config: bool = False  # the config can express fewer heads of the same size (head pruning saves plainly)
    norm_offset: float = 0.0  # the norms scale by (offset + weight): Gemma's RMSNorm multiplies by 1 + weight


LLAMA = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    blocks="layers",
    attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_out=("self_attn.o_proj",),
    ffn_in=("mlp.gate_proj", "mlp.up_proj"),
    ffn_out=("mlp.down_proj",),
    attn_norm="input_layernorm",
    ffn_norm="post_attention_layernorm",
    embeddings=("embed_tokens",),
    head=("lm_head",),
    attention="self_attn",
    mlp="mlp",
    v_source="self_attn.v_proj",
    ffn_out_source="mlp.up_proj",  # down(act(gate) * up): up's rows scale down's input
    final_norm="norm",
    head_config=True,  # num_attention_heads, num_key_value_heads and head_dim
)
GEMMA3 = replace(  # Gemma 3: Llama's linears, four norms a block (the FFN's input norm is pre_feedforward_layernorm)
    LLAMA,
    name="gemma3",
    model_types=("gemma3_text",),
    ffn_norm="pre_feedforward_layernorm",
    norm_offset=1.0,
)
OPT = Family(
    name="opt",
    model_types=("opt",),
    blocks="decoder.layers",
    attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_out=("self_attn.out_proj",),
    ffn_in=("fc1",),
    ffn_out=("fc2",),
    attn_norm="self_attn_layer_norm",
    ffn_norm="final_layer_norm",
    embeddings=("embed_tokens", "embed_positions"),
    head=("lm_head",),
    attention="self_attn",
    v_source="self_attn.v_proj",
    ffn_out_source="fc1",  # through ReLU, which commutes with positive scales (checked at use)
    final_norm="final_layer_norm",  # the shortest such name: the decoder's, not a block's
    ffn_size="ffn_dim",
)
GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    blocks="h",
    attn_in=("attn.c_attn",),  # fused q, k, v
    attn_out=("attn.c_proj",),
    ffn_in=("mlp.c_fc",),
    ffn_out=("mlp.c_proj",),
    attn_norm="ln_1",
    ffn_norm="ln_2",
    embeddings=("wte", "wpe"),
    head=("lm_head",),
    attention="attn",
    mlp="mlp",
    v_source="attn.c_attn",  # fused q, k, v: its last third
    final_norm="ln_f",
    ffn_size="n_inner",
)
BERT = Family(
    name="bert",
    model_types=("bert", "roberta"),
    blocks="encoder.layer",
    attn_in=("attention.self.query", "attention.self.key", "attention.self.value"),
    attn_out=("attention.output.dense",),
    ffn_in=("intermediate.dense",),
    ffn_out=("output.dense",),
    attn_norm=None,
    ffn_norm="attention.output.LayerNorm",
    embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings"),
    head=("classifier",),
    out_norm="output.LayerNorm",
    first_norm="embeddings.LayerNorm",
    attention="attention.self",
    v_source="attention.self.value",
)
VIT = Family(
    name="vit",
    model_types=("vit", "deit"),
    blocks="layers",
    attn_in=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    attn_out=("attention.o_proj",),
    ffn_in=("mlp.fc1",),
    ffn_out=("mlp.fc2",),
    attn_norm="layernorm_before",
    ffn_norm="layernorm_after",
    embeddings=("embeddings.patch_embeddings.projection",),
    head=("classifier", "cls_classifier"),
    attention="attention",
    mlp="mlp",
    v_source="attention.v_proj",
    head_config=True,  # num_attention_heads and head_dim
)
VIT_LEGACY = replace(  # the layout of transformers before 5
    VIT,
    blocks="encoder.layer",
    attn_in=("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    attn_out=("attention.output.dense",),
    ffn_in=("intermediate.dense",),
    ffn_out=("output.dense",),
    attention="attention.attention",
    mlp=None,
    v_source="attention.attention.value",
    head_config=False,
)
ARCHITECTURES = (LLAMA, GEMMA3, OPT, GPT2, BERT, VIT, VIT_LEGACY)


@dataclass
class Block:
    """One block of a model: its module and its linears grouped in execution order."""

    index: int
    name: str
    module: nn.Module
    attn_in: dict[str, nn.Module] = field(default_factory=dict)
    attn_out: dict[str, nn.Module] = field(default_factory=dict)
    ffn_in: dict[str, nn.Module] = field(default_factory=dict)
    ffn_out: dict[str, nn.Module] = field(default_factory=dict)
    other: dict[str, nn.Module] = field(default_factory=dict)  # generic adapter: not split
    attn_norm: nn.Module | None = None
    ffn_norm: nn.Module | None = None

    def groups(self) -> list[dict[str, nn.Module]]:
        """Linears in the order they run, as groups that see the same input."""
        parts = (self.attn_in, self.attn_out, self.ffn_in, self.ffn_out, self.other)
        return [group for group in parts if group]

    @property
    def linears(self) -> dict[str, nn.Module]:
        """Every linear of the block by its full name in the model."""
        return {name: module for group in self.groups() for name, module in group.items()}


@dataclass
class Adapter:
    """The parts of one model, found once from its family (or generically)."""

    model: nn.Module
    family: Family | None  # None: generic fallback
    blocks_name: str | None  # full name of the blocks' ModuleList; None: the model is one block

    @property
    def name(self) -> str:
        return self.family.name if self.family else "generic"

    def block_list(self) -> list[nn.Module]:
        if self.blocks_name is None:
            return [self.model]
        return list(self.model.get_submodule(self.blocks_name))

    def blocks(self) -> list[Block]:
        """The ordered blocks with their linears and norms resolved."""
        modules = self.block_list()
        return [self._block(i, module, modules) for i, module in enumerate(modules)]

    def _block(self, index: int, module: nn.Module, modules: list[nn.Module]) -> Block:
        prefix = f"{self.blocks_name}.{index}" if self.blocks_name else ""
        full = lambda path: f"{prefix}.{path}" if prefix else path  # noqa: E731
        if self.family is None:
            linears = {full(n): m for n, m in module.named_modules() if n and is_linear(m)}
            if not linears and is_linear(module):
                linears = {prefix or "": module}
            return Block(index, prefix, module, other=linears)
        f = self.family
        def pick(paths: tuple[str, ...]) -> dict[str, nn.Module]:
            """The float linears at `paths` (a part already packed is no longer one)."""
            parts = {full(p): module.get_submodule(p) for p in paths}
            return {name: part for name, part in parts.items() if is_linear(part)}

        return Block(
            index, prefix, module,
            attn_in=pick(f.attn_in), attn_out=pick(f.attn_out),
            ffn_in=pick(f.ffn_in), ffn_out=pick(f.ffn_out),
            attn_norm=self._attn_norm(index, module, modules),
            ffn_norm=module.get_submodule(f.ffn_norm) if f.ffn_norm else None,
        )

    def _attn_norm(self, index: int, module: nn.Module, modules: list[nn.Module]) -> nn.Module | None:
        f = self.family
        if f.attn_norm is not None:
            return module.get_submodule(f.attn_norm)
        if index > 0:
            return modules[index - 1].get_submodule(f.out_norm)
        return _find(self.model, f.first_norm)

    # --- shapes --------------------------------------------------------------------------
    @property
    def config(self):
        return getattr(self.model, "config", None)

    @property
    def hidden_size(self) -> int | None:
        return getattr(self.config, "hidden_size", None)

    @property
    def num_heads(self) -> int | None:
        return getattr(self.config, "num_attention_heads", None)

    @property
    def num_kv_heads(self) -> int | None:
        return getattr(self.config, "num_key_value_heads", None) or self.num_heads

    @property
    def head_dim(self) -> int | None:
        explicit = getattr(self.config, "head_dim", None)
        if explicit:
            return explicit
        return self.hidden_size // self.num_heads if self.hidden_size and self.num_heads else None

    # --- ends of the model ---------------------------------------------------------------
    def embeddings(self) -> dict[str, nn.Module]:
        """Embedding modules (token, position, patch) by full name."""
        if self.family is None:
            return {n: m for n, m in self.model.named_modules() if isinstance(m, nn.Embedding)}
        found = {path: _find_named(self.model, path) for path in self.family.embeddings}
        return dict(hit for hit in found.values() if hit is not None)

    def final_norm(self) -> nn.Module | None:
        """The norm that turns the last block's output into the LM head's input, if known."""
        return _find(self.model, self.family.final_norm) if self.family else None

    def head(self) -> tuple[str, nn.Module] | None:
        """The output head (LM head or classifier) and its name, if the model has one."""
        if self.family is None:
            return None
        hits = (_find_named(self.model, name) for name in self.family.head)
        return next((hit for hit in hits if hit is not None), None)


def _find_named(model: nn.Module, suffix: str) -> tuple[str, nn.Module] | None:
    """The module whose name is `suffix` or ends with `.suffix` (the shortest such name)."""
    hits = [(n, m) for n, m in model.named_modules() if n == suffix or n.endswith("." + suffix)]
    return min(hits, key=lambda hit: len(hit[0])) if hits else None


def _find(model: nn.Module, suffix: str | None) -> nn.Module | None:
    hit = _find_named(model, suffix) if suffix else None
    return hit[1] if hit else None


def _generic_blocks_name(model: nn.Module) -> str | None:
    """The largest ModuleList whose children are all of one class, by parameter count."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        children = list(module.children()) if isinstance(module, nn.ModuleList) else []
        if len(children) < 2 or len({type(c) for c in children}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = name, size
    return best


def _families_of(model: nn.Module) -> list[Family]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return [f for f in ARCHITECTURES if model_type in f.model_types]


def _fits(model: nn.Module, family: Family) -> str | None:
    """The full name of `family`'s blocks in `model` if its layout matches, else None."""
    hit = _find_named(model, family.blocks)
    if hit is None or not isinstance(hit[1], nn.ModuleList) or len(hit[1]) == 0:
        return None
    parts = (*family.attn_in, *family.attn_out, *family.ffn_in, *family.ffn_out)
    try:
        for path in parts:
            hit[1][0].get_submodule(path)
    except AttributeError:
        return None
    return hit[0]


def adapter(model: nn.Module) -> Adapter:
    """The adapter for `model`: its family's if known and present, else the generic one."""
    families = _families_of(model)
    for family in families:
        blocks_name = _fits(model, family)
        if blocks_name is not None:
            return Adapter(model, family, blocks_name)
    if families:
        log.warning("%s model in an unknown layout: using the generic adapter", families[0].name)
    return Adapter(model, None, _generic_blocks_name(model))
