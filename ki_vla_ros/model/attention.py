"""The blockwise-causal attention rule of π0 / π0.5 (from big_vision's prefix-LM masks)."""

from __future__ import annotations

import torch


def make_attn_mask(pad_mask: torch.Tensor, ar_mask: torch.Tensor) -> torch.Tensor:
    """Which token may attend to which: bool [B, N, N], entry [b, i, j] = "i sees j".

    pad_mask: bool [B, N], True for real tokens, False for padding (never attended to).
    ar_mask:  bool [B, N] or [N], True where a new causal block starts: tokens before it
              cannot see it or anything after it. False: same block as the previous token.

    Rule: token i sees valid token j iff cumsum(ar)[j] <= cumsum(ar)[i].

    Examples (N = 6, all tokens valid; rows i, columns j):

      ar = [0 0 0 0 0 0]  one block, fully bidirectional (the prefix: images + prompt)

      ar = [1 1 1 1 1 1]  pure causal attention: i sees j iff j <= i

      ar = [0 0 0 1 1 1]  prefix-LM: 3 bidirectional prefix tokens, then 3 causal tokens
                          (FAST action tokens or text the backbone must predict):
                              1 1 1 0 0 0
                              1 1 1 0 0 0
                              1 1 1 0 0 0
                              1 1 1 1 0 0
                              1 1 1 1 1 0
                              1 1 1 1 1 1

      ar = [0 0 0 1 0 0]  prefix + one block of 3 that is bidirectional inside and sees the
                          prefix, which does not see it back (the expert's action tokens):
                              1 1 1 0 0 0
                              1 1 1 0 0 0
                              1 1 1 0 0 0
                              1 1 1 1 1 1
                              1 1 1 1 1 1
                              1 1 1 1 1 1

    A padded token is invisible to every token; its own row sees the valid tokens of its
    blocks so its (unused) output stays finite.
    """
    if pad_mask.ndim != 2:
        raise ValueError(f"pad_mask has shape {tuple(pad_mask.shape)}; expected [B, N]")
    ar_mask = torch.broadcast_to(ar_mask, pad_mask.shape)
    cumsum = torch.cumsum(ar_mask.to(torch.int64), dim=1)
    causal = cumsum[:, None, :] <= cumsum[:, :, None]
    return causal & pad_mask[:, None, :].bool()
