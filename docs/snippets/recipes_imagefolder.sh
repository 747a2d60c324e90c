# DATA/train/<class>/*.png and DATA/val/<class>/*.png, e.g. BUSI's benign, malignant, normal
python examples/main_pretrain.py --data imagefolder --data_path /data/busi \
    --output_dir runs/pretrain_busi
python examples/main_finetune.py --data imagefolder --data_path /data/busi \
    --finetune runs/pretrain_busi/checkpoint.pth --output_dir runs/finetune_busi
