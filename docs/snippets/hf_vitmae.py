import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from maskkit import SAMMasker

# A small ViTMAE, randomly initialised: 32 px images, 8 px patches, a 4 x 4 grid.
config = ViTMAEConfig(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=64,
    mask_ratio=0.75,  # HF keeps int(L * (1 - mask_ratio)) = 4 of the 16 patches
)
model = ViTMAEForPreTraining(config).eval()
images = torch.rand(2, 3, 32, 32)
weights = torch.rand(2, 4, 4)  # your masking weights, e.g. cls-attention maps

# ViTMAE keeps the patches with the lowest `noise`. A split's ids_restore is each
# patch's position in ids_shuffle (visible first), so as noise it makes ViTMAE keep
# exactly the split's visible patches, in the split's order.
split = SAMMasker(mask_ratio=0.75, throw_ratio=0.0)(2, 16, weights)
with torch.no_grad():
    out = model(pixel_values=images, noise=split.ids_restore.float())
assert torch.equal(out.ids_restore, split.ids_restore)
assert torch.equal(out.mask, split.mask())  # 1 on the 12 masked patches

# ViTMAE cannot throw: it only keeps or removes. For a masking-and-throwing split, set
# config.mask_ratio = mask_ratio + throw_ratio (here 0.45 + 0.30) so that it keeps the
# split's visible patches; it then removes masked and thrown ones alike, and its loss
# covers both. Recompute the loss over the masked patches only, as AMT and MSMAE do.
split = SAMMasker(mask_ratio=0.45, throw_ratio=0.30)(2, 16, weights)
with torch.no_grad():
    out = model(pixel_values=images, noise=split.ids_restore.float())
assert torch.equal(out.mask.bool(), ~split.is_visible())  # masked or thrown

per_patch = (out.logits - model.patchify(images)).pow(2).mean(dim=-1)  # (B, L)
mask = split.mask()  # 1 on the masked patches only, 0 on visible and thrown ones
loss = (per_patch * mask).sum() / mask.sum()
hf_loss = (per_patch * out.mask).sum() / out.mask.sum()  # what out.loss computes
assert torch.allclose(hf_loss, out.loss)
print(f"masked-only loss {loss.item():.4f}, HF's loss with thrown patches {hf_loss.item():.4f}")
