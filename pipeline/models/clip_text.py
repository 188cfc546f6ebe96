"""CLIP's text transformer run once per distinct token prefix (a trie), not once per padded position.

CLIP's text attention is causal, so a token's hidden state, at every layer, depends only on the tokens up to it:
prompts that share a prefix share those states exactly. The 79 prompt templates of a text direction share a lot
("a photo of the ...", "a photo of a ..."): for "a face with a beard", 714 distinct prefixes against 1264 padded
positions. So the prompts become one sequence of trie nodes (token, depth) in which a node attends to its root
path only (an ancestor mask in place of the causal one), computed with each block's own submodules and
parameters, as ``ResidualAttentionBlock`` does. The attention runs in blocks of consecutive nodes, each against
the few nodes it can see (``AttentionBlocks``), not as one [nodes x nodes] product that is almost all masked.
In the last block only the EOT nodes are read: every node gives its keys/values there, but the query, attention
output, MLP and ``ln_final`` are computed for the EOT nodes alone.

The result is ``encode_text``'s within float rounding (different matrix shapes sum in a different order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Nodes in one pass: past this many, prompts go into separate tries (a direction's 79 or 158 prompts, 714 or 880
# nodes, fit in one; 16 texts' 1264 prompts take a few). Bounds memory: the [nodes x nodes] ancestor mask.
MAX_TRIE_NODES = 4096
# Queries per attention block: each block scores its nodes against ~(its first node's depth + this many) keys.
QUERY_BLOCK = 64


@dataclass(frozen=True)
class PrefixTrie:
    """The distinct prefixes of some token sequences, each prompt read up to and including its EOT.

    ``tokens[i]``/``depths[i]``: node i's token id and position; ``parents[i]``: the node before it (-1 at the
    root, i.e. SOT); a parent always comes before its child. ``ends[p]``: prompt p's EOT node (identical prompts
    share it).
    """

    tokens: list[int]
    depths: list[int]
    parents: list[int]
    ends: list[int]

    @classmethod
    def build(cls, sequences: list[list[int]]) -> PrefixTrie:
        """The trie of ``sequences`` (each already cut after its EOT), its nodes in preorder (a node's subtree
        follows it, contiguous): the sequences are inserted in sorted order."""
        tokens: list[int] = []
        depths: list[int] = []
        parents: list[int] = []
        ends = [-1] * len(sequences)
        children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        for index in sorted(range(len(sequences)), key=sequences.__getitem__):
            node = -1
            for depth, token in enumerate(sequences[index]):
                child = children.get((node, token))
                if child is None:
                    child = children[(node, token)] = len(tokens)
                    tokens.append(token)
                    depths.append(depth)
                    parents.append(node)
                node = child
            ends[index] = node
        return cls(tokens, depths, parents, ends)

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestor_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[N, N]`` bool: ``mask[i, j]`` iff node j is on node i's root path (i itself included)."""
        n = len(self)
        mask = torch.zeros(n, n, dtype=torch.bool, device=device)
        parents = torch.tensor(self.parents + [-1], device=device)  # index -1 (above a root) stays -1
        rows = torch.arange(n, device=device)
        ancestor = rows
        for _ in range(max(self.depths, default=-1) + 1):  # one step up the root paths at a time
            mask[rows, ancestor] |= ancestor >= 0  # a path already past its root (-1) ORs False: no change
            ancestor = parents[ancestor]
        return mask


def cut_at_eot(tokens: torch.Tensor) -> list[list[int]]:
    """Each row of ``clip.tokenize``'s output up to and including its EOT, which has the largest id (as
    ``encode_text`` finds it)."""
    lengths = (tokens.argmax(dim=-1) + 1).tolist()
    return [row[:length] for row, length in zip(tokens.tolist(), lengths, strict=True)]


def trie_chunks(sequences: list[list[int]], max_nodes: int | None = None) -> Iterator[list[int]]:
    """Indices of ``sequences`` grouped so that each group's trie has at most ``max_nodes`` nodes (default
    ``MAX_TRIE_NODES``; a single sequence longer than that alone). Sequences are taken in sorted order, so prompts
    that share a prefix land in the same group: in that order a sequence adds (its length - its common prefix with
    the previous one) nodes."""
    max_nodes = MAX_TRIE_NODES if max_nodes is None else max_nodes
    order = sorted(range(len(sequences)), key=sequences.__getitem__)
    group: list[int] = []
    nodes = 0
    previous: list[int] = []
    for index in order:
        sequence = sequences[index]
        common = 0
        for a, b in zip(sequence, previous, strict=False):
            if a != b:
                break
            common += 1
        added = len(sequence) - common
        if group and nodes + added > max_nodes:
            yield group
            group, nodes, added = [], 0, len(sequence)
        group.append(index)
        nodes += added
        previous = sequence
    if group:
        yield group


@dataclass(frozen=True)
class AttentionBlocks:
    """Queries in blocks of consecutive nodes, each block with only the keys its nodes can see.

    Dense attention over the whole trie would score every node against every node, almost all of it masked
    (a node sees its depth + 1 ancestors of hundreds of nodes). In a trie built from sorted prompts (preorder)
    the nodes of a block ``[a, b)`` see only ``a``'s root path and the block itself, so a block of 64 scores
    ~80 keys, not all N. ``rows[g]``: block g's queries (positions in the query list; the last block padded
    by repeating its last query), ``keys[g]``: the nodes they see (padded with node 0), ``mask[g]``: additive
    ``[rows, keys]``, -inf where a key is not on the query's root path or is padding.
    """

    rows: torch.Tensor  # [blocks, rows] long
    keys: torch.Tensor  # [blocks, keys] long
    mask: torch.Tensor  # [blocks, 1, rows, keys] in the activations' dtype (broadcast over the heads)
    queries: int        # how many queries (rows past it are padding)

    @classmethod
    def build(cls, visible: torch.Tensor, queries: torch.Tensor, dtype: torch.dtype,
              size: int = QUERY_BLOCK) -> AttentionBlocks:
        """Blocks for the nodes ``queries`` (in that order) of a trie whose ancestor mask is ``visible``."""
        positions = torch.arange(len(queries), device=queries.device).split(size)
        keys = [visible[queries[block]].any(dim=0).nonzero()[:, 0] for block in positions]
        n_rows, n_keys = len(positions[0]), max(len(k) for k in keys)
        rows = torch.stack([torch.cat([b, b[-1:].expand(n_rows - len(b))]) for b in positions])
        padded_keys = torch.stack([torch.cat([k, k.new_zeros(n_keys - len(k))]) for k in keys])
        is_key = torch.stack([torch.arange(n_keys, device=k.device) < len(k) for k in keys])
        sees = visible[queries[rows][:, :, None], padded_keys[:, None, :]] & is_key[:, None, :]
        mask = torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill_(~sees, float("-inf"))
        return cls(rows, padded_keys, mask[:, None], len(queries))


def block_attention(attn: torch.nn.MultiheadAttention, queries: torch.Tensor, nodes: torch.Tensor,
                    blocks: AttentionBlocks) -> torch.Tensor:
    """What ``attn(queries, nodes, nodes, attn_mask=...)`` computes (``nn.MultiheadAttention`` as CLIP builds it:
    packed in_proj, heads, scaled dot product, out_proj; no bias_k/v, no zero attention) for ``[Q, width]``
    queries over ``[N, width]`` nodes, block by block."""
    width = nodes.shape[-1]
    q = F.linear(queries, attn.in_proj_weight[:width], attn.in_proj_bias[:width])
    k, v = F.linear(nodes, attn.in_proj_weight[width:], attn.in_proj_bias[width:]).chunk(2, dim=-1)

    def heads(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # [blocks, heads, rows or keys, head dim]
        return t[index].unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q, blocks.rows), heads(k, blocks.keys), heads(v, blocks.keys),
                                         attn_mask=blocks.mask)
    return attn.out_proj(out.transpose(1, 2).flatten(2).flatten(0, 1)[:blocks.queries])


def encode_trie(model: torch.nn.Module, trie: PrefixTrie) -> torch.Tensor:
    """``model.encode_text`` of the trie's prompts ``[len(trie.ends), embed_dim]`` in the model's dtype, with
    each distinct prefix through the transformer once. ``model`` is a ``clip.model.CLIP``."""
    dtype = model.dtype
    device = model.positional_embedding.device
    tokens = torch.tensor(trie.tokens, dtype=torch.long, device=device)
    depths = torch.tensor(trie.depths, dtype=torch.long, device=device)
    unique_ends, prompt_end = torch.tensor(trie.ends, device=device).unique(return_inverse=True)
    visible = trie.ancestor_mask(device)
    every_node = AttentionBlocks.build(visible, torch.arange(len(trie), device=device), dtype)
    end_nodes = AttentionBlocks.build(visible, unique_ends, dtype)

    x = model.token_embedding(tokens).type(dtype) + model.positional_embedding[depths].type(dtype)  # [N, width]
    *blocks, last = model.transformer.resblocks
    for block in blocks:
        h = block.ln_1(x)
        x = x + block_attention(block.attn, h, h, every_node)
        x = x + block.mlp(block.ln_2(x))
    # Last block: keys/values from every node, everything else for the EOT nodes only.
    h = last.ln_1(x)
    x = x[unique_ends]
    x = x + block_attention(last.attn, h[unique_ends], h, end_nodes)
    x = x + last.mlp(last.ln_2(x))
    x = model.ln_final(x).type(dtype) @ model.text_projection
    return x[prompt_end]
