import torch

from maskkit import RandomMasker, SAMMasker

generator = torch.Generator().manual_seed(0)

# MAE: 75% of the 196 patches of a 224 px image (16 px patches) masked at random.
split = RandomMasker(0.75)(8, 196, generator=generator)
assert split.visible.shape == (8, 49) and split.masked.shape == (8, 147)

# SAM (MSMAE defaults): mask 45%, throw 30%, keep 25% visible, following weights.
weights = torch.rand(8, 14, 14)  # (B, gh, gw), e.g. cls-attention maps; higher = masked sooner
split = SAMMasker(mask_ratio=0.45, throw_ratio=0.30)(8, 196, weights, generator=generator)
print(split.visible.shape, split.masked.shape, split.thrown.shape)
assert split.visible.shape == (8, 49)  # K: what the encoder sees
assert split.masked.shape == (8, 88)  # M: what the decoder reconstructs
assert split.thrown.shape == (8, 59)  # T: dropped from encoder, decoder and loss

tokens = torch.randn(8, 196, 768)  # (B, L, D) patch tokens, after the position embedding
visible_tokens = split.gather_visible(tokens)  # (B, K, D), the encoder's input
loss_mask = split.loss_mask()  # (B, L) float, 1 on masked patches only (MAE's `mask`)
assert visible_tokens.shape == (8, 49, 768)
assert loss_mask.sum(dim=1).eq(88).all()
