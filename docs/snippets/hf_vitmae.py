import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from maskkit import RandomMasker, SAMMasker
from maskkit.integrations.hf import pretrain_forward

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
    mask_ratio=0.75,
)
model = ViTMAEForPreTraining(config)
pixel_values = torch.rand(2, 3, 32, 32)
num_patches = model.vit.embeddings.patch_embeddings.num_patches  # L = 16

# Uniform masking: the same draws as ViTMAE's own noise give ViTMAE's outputs bit for bit.
split = RandomMasker(config.mask_ratio)(2, num_patches, generator=torch.Generator().manual_seed(0))
noise = torch.rand(2, num_patches, generator=torch.Generator().manual_seed(0))
outputs = pretrain_forward(model, pixel_values, split)
theirs = model(pixel_values=pixel_values, noise=noise)
assert torch.equal(outputs.loss, theirs.loss) and torch.equal(outputs.logits, theirs.logits)

# SAM: ViTMAE keeps int(L * (1 - config.mask_ratio)) patches, so give it the masker's
# mask_ratio + throw_ratio; the loss then covers the masked patches only.
masker = SAMMasker(0.45, 0.30)
model.config.mask_ratio = masker.mask_ratio + masker.throw_ratio
weights = torch.rand(2, 4, 4)  # your masking weights, e.g. cls-attention maps
split = masker(2, num_patches, weights)  # 4 visible, 7 masked, 5 thrown
outputs = pretrain_forward(model, pixel_values, split)
outputs.loss.backward()
assert torch.equal(outputs.mask.bool(), ~split.is_visible())  # ViTMAE removed masked + thrown
per_patch = (outputs.logits - model.patchify(pixel_values)).pow(2).mean(dim=-1)
assert torch.allclose(outputs.loss, per_patch[split.is_masked()].mean())  # thrown: not in it

# A config that keeps another count is refused, rather than training on leaked patches.
model.config.mask_ratio = 0.45  # would keep 8 of the 16 patches, not the split's 4
try:
    pretrain_forward(model, pixel_values, split)
    raise AssertionError("expected a ValueError")
except ValueError as error:
    print(error)
