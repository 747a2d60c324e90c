import sys
from pathlib import Path

import torch

from maskkit import SAMMasker
from maskkit.integrations.mae import MAEAdapter

# facebookresearch/mae is not on PyPI: here the test suite's structural replica of its
# models_mae.py stands in for it. In your MAE checkout: `import models_mae`.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import mae_replica as models_mae

mae = models_mae.mae_vit_tiny(img_size=32, patch_size=8, norm_pix_loss=True)  # 4 x 4 patches
model = MAEAdapter(mae)  # shares the MAE's modules; model.state_dict() is the MAE's
imgs = torch.randn(2, 3, 32, 32)

# Uniform masking: MAE's own call, MAE's own draws, MAE's loss and predictions bit for bit.
torch.manual_seed(0)
loss, pred, mask = mae(imgs, mask_ratio=0.75)
torch.manual_seed(0)
ours_loss, ours_pred, split = model(imgs, mask_ratio=0.75)
assert torch.equal(ours_loss, loss) and torch.equal(ours_pred, pred)
assert torch.equal(split.loss_mask(), mask)

# SAM: mask 0.45 and throw 0.30 of the patches by weights, e.g. attention maps (B, 4, 4).
weights = torch.rand(2, 4, 4)
split = SAMMasker(0.45, 0.30)(2, model.num_patches, weights)  # 4 visible, 7 masked, 5 thrown
loss, pred, split = model(imgs, split)
assert pred.shape == (2, 16, 8 * 8 * 3)  # MAE's layout: every patch, in patch order
assert torch.equal(pred[split.is_thrown()], torch.zeros(10, 192))  # thrown: no token, fill 0

# MAE's visualisation: unpatchify the predictions, paste the visible patches over them.
y = mae.unpatchify(pred)
visible = model.unpatchify(split.is_visible().float()[..., None].expand(-1, -1, 192))
masked = model.unpatchify(split.is_masked().float()[..., None].expand(-1, -1, 192))
im_paste = imgs * visible + y * masked  # thrown patches stay blank
print(f"SAM loss {loss.item():.4f} over {int(split.is_masked().sum())} masked patches")
