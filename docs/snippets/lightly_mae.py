import timm
import torch
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
from torch import nn

from maskkit import AttentionExtractor, RandomMasker, SAMMasker
from maskkit.integrations.lightly import decode_masked, to_lightly


class MAE(nn.Module):
    """lightly's MAE example (examples/pytorch/mae.py), small, with SAM masking."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        decoder_dim = 32
        self.masker = SAMMasker(0.45, 0.30)  # was: self.mask_ratio = 0.75
        self.patch_size = vit.patch_embed.patch_size[0]
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches, embed_dim=decoder_dim, depth=1, num_heads=4
        )
        self.prediction_head = nn.Linear(decoder_dim, self.patch_size**2 * 3)

    def forward(self, images: torch.Tensor, weights: torch.Tensor):
        batch_size = images.shape[0]
        split = self.masker(batch_size, self.sequence_length - 1, weights)
        idx_keep, idx_mask = to_lightly(split, allow_thrown=True)
        x_encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        x_decoded = decode_masked(self.decoder, self.decoder_embed(x_encoded), split)
        x_pred = self.prediction_head(x_decoded)
        patches = utils.patchify(images, self.patch_size)
        target = utils.get_at_index(patches, idx_mask - 1)  # the masked patches only
        return x_pred, target


vit = timm.create_model(
    "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4
)
model = MAE(vit)
extractor = AttentionExtractor(model.backbone)  # cls attention over all patches, unmasked
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
criterion = nn.MSELoss()
images = torch.rand(4, 3, 32, 32)
for step in range(3):
    weights = extractor(images)  # (B, 4, 4); MSMAE keeps them per image in a MaskWeightBank
    predictions, targets = model(images, weights)
    loss = criterion(predictions, targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    print(f"step {step}: loss {loss.item():.4f}")

# Uniform masking is the same swap, with random_token_mask's counts and cls token.
idx_keep, idx_mask = to_lightly(RandomMasker(0.75)(4, 16))
lightly_keep, lightly_mask = utils.random_token_mask((4, 17), mask_ratio=0.75)
assert idx_keep.shape == lightly_keep.shape == (4, 1 + 4) and idx_mask.shape == (4, 12)
assert (idx_keep[:, 0] == 0).all()  # the cls token, always kept
