import torch
from torch import Tensor

from maskkit import RandomMasker, sample_split


# MAE's MaskedAutoencoderViT.random_masking(x, mask_ratio), with the same contract:
# x (B, L, D) patch tokens with positions added -> (x_visible, mask, ids_restore).
def random_masking(x: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    split = sample_split(x.shape[0], x.shape[1], mask_ratio=mask_ratio, device=x.device)
    return split.gather_visible(x), split.mask(x.dtype), split.ids_restore


x = torch.randn(2, 196, 32)
x_visible, mask, ids_restore = random_masking(x, 0.75)
assert x_visible.shape == (2, 49, 32) and mask.sum(dim=1).eq(147).all()

# Same draws as MAE: noise = rand(B, L); ids_shuffle = argsort(noise); keep the first 49.
split = RandomMasker(0.75)(2, 196, generator=torch.Generator().manual_seed(0))
noise = torch.rand(2, 196, generator=torch.Generator().manual_seed(0))
assert torch.equal(split.ids_shuffle, noise.argsort(dim=1))
assert torch.equal(split.visible, noise.argsort(dim=1)[:, :49])
