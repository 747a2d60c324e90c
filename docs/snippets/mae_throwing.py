import torch
from torch import nn

from maskkit import SAMMasker, gather_tokens, patchify

# With throwing (AMT, SAM) the decoder gets tokens for visible and masked patches only.
# Rather than un-shuffling with ids_restore, give every token the position embedding of
# its own patch: attention does not depend on the order of the tokens.
B, L, p, dim = 2, 64, 8, 16
images = torch.rand(B, 3, 64, 64)
split = SAMMasker(0.45, 0.30)(B, L, torch.rand(B, L))
K, M = split.visible.shape[1], split.masked.shape[1]  # 16 visible, 28 masked, 20 thrown

latent = torch.randn(B, K, dim)  # the encoder's output for the visible patches (no cls)
mask_token = nn.Parameter(torch.zeros(1, 1, dim))
decoder_pos_embed = torch.randn(1, L, dim)  # one row per patch
tokens = torch.cat([latent, mask_token.expand(B, M, -1)], dim=1)  # (B, K + M, dim)
positions = torch.cat([split.visible, split.masked], dim=1)  # their patch indices
tokens = tokens + gather_tokens(decoder_pos_embed.expand(B, -1, -1), positions)
decoder_pred = nn.Linear(dim, p * p * 3)
pred = decoder_pred(tokens)[:, K:]  # (B, M, p*p*3): predictions of the masked patches

# Loss over the masked patches only: thrown patches are neither inputs nor targets.
target = split.gather_masked(patchify(images, p))  # (B, M, p*p*3), in split.masked order
loss = (pred - target).pow(2).mean()
assert pred.shape == target.shape == (B, 28, 192) and loss.ndim == 0
