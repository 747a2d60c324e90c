# DATA/train/<class>/*.png, DATA/val/<class>/*.png and DATA/test/<class>/*.png (optional),
# e.g. BUSI's benign, malignant, normal
python examples/main_pretrain.py --data imagefolder --data_path /data/busi \
    --output_dir runs/pretrain_busi
python examples/main_finetune.py --data imagefolder --data_path /data/busi \
    --finetune runs/pretrain_busi/checkpoint.pth --output_dir runs/finetune_busi

# Or start from facebookresearch/mae's ImageNet encoder: continue pre-training, fine-tune
python examples/main_pretrain.py --data imagefolder --data_path /data/busi \
    --init /models/mae_pretrain_vit_base.pth --output_dir runs/pretrain_busi_from_mae
python examples/main_finetune.py --data imagefolder --data_path /data/busi \
    --finetune /models/mae_pretrain_vit_base.pth --output_dir runs/finetune_busi_mae
