"""CLIP's text transformer run once per distinct token prefix (a trie), not once per padded position.

CLIP's text attention is causal, so a token's hidden state, at every layer, depends only on the tokens up to it:
prompts that share a prefix share those states exactly. The 79 prompt templates of a text direction share a lot
("a photo of the ...", "a photo of a ..."): for "a face with a beard", 714 distinct prefixes against 1264 padded
positions. So the prompts become one sequence of trie nodes (token, depth) in which a node attends to its root
path only (an ancestor mask), computed with each block's own submodules, as ``ResidualAttentionBlock`` does.
In the last block only the EOT nodes are read: every node gives its keys/values there, but the query, attention
output, MLP and ``ln_final`` are computed for the EOT nodes alone.

The result is ``encode_text``'s within float rounding (different matrix shapes sum in a different order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

# Nodes in one pass. Attention over a trie is dense [nodes x nodes] (masked), so its cost grows with the square
# of the node count while the rest grows linearly; past this many nodes, prompts go into separate tries (one
# direction's 79 or 158 prompts fit in one). Also bounds memory: the scores are heads x nodes² floats.
MAX_TRIE_NODES = 1024


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
        """The trie of ``sequences`` (each already cut after its EOT)."""
        tokens: list[int] = []
        depths: list[int] = []
        parents: list[int] = []
        ends: list[int] = []
        children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        for sequence in sequences:
            node = -1
            for depth, token in enumerate(sequence):
                child = children.get((node, token))
                if child is None:
                    child = children[(node, token)] = len(tokens)
                    tokens.append(token)
                    depths.append(depth)
                    parents.append(node)
                node = child
            ends.append(node)
        return cls(tokens, depths, parents, ends)

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestor_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[N, N]`` bool: ``mask[i, j]`` iff node j is on node i's root path (i itself included)."""
        n = len(self)
        mask = torch.eye(n, dtype=torch.bool)
        for node, parent in enumerate(self.parents):  # parents come first: their rows are complete
            if parent >= 0:
                mask[node] |= mask[parent]
        return mask.to(device)


def cut_at_eot(tokens: torch.Tensor) -> list[list[int]]:
    """Each row of ``clip.tokenize``'s output up to and including its EOT, which has the largest id (as
    ``encode_text`` finds it)."""
    lengths = (tokens.argmax(dim=-1) + 1).tolist()
    return [row[:length] for row, length in zip(tokens.tolist(), lengths, strict=True)]


def trie_chunks(sequences: list[list[int]], max_nodes: int = MAX_TRIE_NODES) -> Iterator[list[int]]:
    """Indices of ``sequences`` grouped so that each group's trie has at most ``max_nodes`` nodes (a single
    sequence longer than that alone). Sequences are taken in sorted order, so prompts that share a prefix land in
    the same group: in that order a sequence adds (its length - its common prefix with the previous one) nodes."""
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


def encode_trie(model: torch.nn.Module, trie: PrefixTrie) -> torch.Tensor:
    """``model.encode_text`` of the trie's prompts ``[len(trie.ends), embed_dim]`` in the model's dtype, with
    each distinct prefix through the transformer once. ``model`` is a ``clip.model.CLIP``."""
    dtype = model.dtype
    device = model.positional_embedding.device
    tokens = torch.tensor(trie.tokens, dtype=torch.long, device=device)
    depths = torch.tensor(trie.depths, dtype=torch.long, device=device)
    unique_ends, prompt_end = torch.tensor(trie.ends, device=device).unique(return_inverse=True)
    # additive, in the activations' dtype, as ResidualAttentionBlock passes CLIP's causal mask
    mask = torch.zeros(len(trie), len(trie), dtype=dtype, device=device)
    mask.masked_fill_(~trie.ancestor_mask(device), float("-inf"))

    # [nodes, batch 1, width]: the sequence-first layout nn.MultiheadAttention is built with (batch_first=False)
    x = (model.token_embedding(tokens).type(dtype) + model.positional_embedding[depths].type(dtype))[:, None]
    *blocks, last = model.transformer.resblocks
    for block in blocks:
        h = block.ln_1(x)
        x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    # Last block: keys/values from every node, everything else for the EOT nodes only.
    h = last.ln_1(x)
    x = x[unique_ends]
    x = x + last.attn(h[unique_ends], h, h, need_weights=False, attn_mask=mask[unique_ends])[0]
    x = x + last.mlp(last.ln_2(x))
    x = model.ln_final(x[:, 0]).type(dtype) @ model.text_projection
    return x[prompt_end]
