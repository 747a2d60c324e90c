import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

# The readers belong to the recipes (examples/), not to maskkit: run from the repository root.
sys.path.insert(0, "examples")
from msmae_util.images import CsvImageDataset, UnreadableImageError, image_folder

root = Path(tempfile.mkdtemp())


def write_image(path: Path, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 120, 110)).save(path)


# Layout 1, class folders: ROOT/<split>/<class>/<any sub-folders>/<image>, read with
# torchvision's ImageFolder.
for split, count in (("train", 3), ("val", 1)):
    for name in ("benign", "malignant", "normal"):
        for k in range(count):
            write_image(root / "busi" / split / name / f"{name}_{k}.png")
train = image_folder(root / "busi" / "train")
val = image_folder(root / "busi" / "val", train.classes)  # the training split's classes
assert train.classes == ["benign", "malignant", "normal"]  # sorted folder names
assert len(train) == 9 and len(val) == 3
image, target = train[4]  # a PIL RGB image and its class index
assert image.size == (40, 30) and target == 1

# Layout 2, a table of image ids and labels (HAM10000: image_id, dx), images in one or
# more folders; ".jpg" is appended to ids without an image extension.
(root / "ham").mkdir()
(root / "ham" / "train.csv").write_text(
    "lesion_id,image_id,dx\nHAM_1,ISIC_0001,nv\nHAM_2,ISIC_0002,mel\nHAM_3,ISIC_0003,bcc\n"
)
write_image(root / "ham" / "part_1" / "ISIC_0001.jpg")
write_image(root / "ham" / "part_1" / "ISIC_0002.jpg")
write_image(root / "ham" / "part_2" / "ISIC_0003.jpg")
ham = CsvImageDataset(
    root / "ham" / "train.csv",
    [root / "ham" / "part_1", root / "ham" / "part_2"],
    id_column="image_id",
    label_column="dx",
)
assert ham.classes == ["bcc", "mel", "nv"]  # sorted distinct labels
assert [ham[i][1] for i in range(3)] == [2, 1, 0]

# Integer labels (Messidor-2's adjudicated_dr_grade) are the targets themselves.
(root / "grades.csv").write_text("image_id,adjudicated_dr_grade\nISIC_0001.jpg,0\nISIC_0003,4\n")
grades = CsvImageDataset(
    root / "grades.csv",
    [root / "ham" / "part_1", root / "ham" / "part_2"],
    id_column="image_id",
    label_column="adjudicated_dr_grade",
)
assert grades.classes == ["0", "1", "2", "3", "4"] and grades[1][1] == 4

# An unreadable file stops with an error (a ValueError) that names it.
(root / "busi" / "train" / "normal" / "normal_0.png").write_bytes(b"not a png")
try:
    image_folder(root / "busi" / "train")[6]
except UnreadableImageError as error:
    assert "normal_0.png" in str(error)
else:
    raise AssertionError("a corrupt image must raise")
shutil.rmtree(root)
