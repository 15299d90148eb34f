"""K/V sharing in a DiT's self-attention, through forward hooks: the edit's queries attend over its own keys
and values *and* the source branch's (one softmax over both), as published for Wan-based video editors
(ContextFlow), instead of taking the source's Q/K.

diffusers' `WanAttnProcessor` forms Q and K (`norm_q`, `norm_k`, per-token RMS norms), applies RoPE with
the tables it is called with, and attends; so with nothing but hooks on `attn1`:

- `norm_k` / `to_v` outputs [B, L, C] get the source's recorded ones appended: [B, 2L, C];
- `norm_q` is appended to itself ([B, 2L, C]: the second half are throw-away queries, so that one RoPE
  table serves queries and keys), and the RoPE tables passed to `attn1` are doubled along the tokens
  (a source token sits at the same grid position as the edit's token it was recorded beside);
- `to_out.0` keeps the first L tokens of the attention output.

Cost: attention over 2L queries and 2L keys where sharing needs L x 2L, i.e. twice the sharing's own
attention FLOPs, only at the steps that share. Nothing patches `forward`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class SharedKV:
    """with SharedKV(transformer, blocks) as kv:
    kv.record()   # the next call is the source branch alone: keep its K and V in these blocks
    transformer(source ...)
    kv.share(i)   # the next call's branches attend over their own K/V and the recorded ones
    transformer(edit ...)
    kv.off()
    """

    def __init__(self, transformer: torch.nn.Module, blocks: Sequence[int]):
        self.attns = [transformer.blocks[i].attn1 for i in blocks]
        self.mode = "off"
        self.recorded: dict[tuple[int, str], torch.Tensor] = {}
        self.step: int | None = None
        self.fired: set[int] = set()  # the steps at which an attention call shared, for checks
        self._handles: list = []

    def __enter__(self) -> SharedKV:
        for i, attn in enumerate(self.attns):
            self._handles += [
                attn.register_forward_pre_hook(self._double_rope),
                attn.norm_q.register_forward_hook(self._queries),
                attn.norm_k.register_forward_hook(self._tensor(i, "k")),
                attn.to_v.register_forward_hook(self._tensor(i, "v")),
                attn.to_out[0].register_forward_pre_hook(self._first_half),
            ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.recorded.clear()

    def record(self) -> None:
        self.mode = "record"
        self.recorded.clear()

    def share(self, step: int) -> None:
        self.mode, self.step = "share", step

    def off(self) -> None:
        self.mode = "off"

    # ---- hooks
    def _double_rope(self, module, args):
        if self.mode != "share":
            return None
        hidden, encoder, mask, rope = args[:4]
        cos, sin = rope  # [1, L, 1, D] each
        self.fired.add(self.step)
        return (hidden, encoder, mask, (torch.cat([cos, cos], 1), torch.cat([sin, sin], 1)), *args[4:])

    def _queries(self, module, args, output):
        return torch.cat([output, output], 1) if self.mode == "share" else output

    def _tensor(self, index: int, name: str):
        def hook(module, args, output):
            if self.mode == "record":
                self.recorded[index, name] = output.detach().clone()
            elif self.mode == "share":
                source = self.recorded[index, name]
                return torch.cat([output, source.expand(output.shape[0], -1, -1)], 1)
            return output

        return hook

    def _first_half(self, module, args):
        if self.mode != "share":
            return None
        hidden = args[0]
        return (hidden[:, : hidden.shape[1] // 2], *args[1:])
