# BUSI as it ships: DATA/{benign,malignant,normal}/<name>.png beside <name>_mask.png
# (and <name>_mask_1.png ... for images with several lesions, merged into one mask)
BUSI=/data/Dataset_BUSI_with_GT
# 1. Link the training and validation images (no masks, no test image) for pre-training
python examples/main_segment.py --data folder --data_path $BUSI --export_images runs/busi_images
# 2. MSMAE pre-training on them (Tab. 4 defaults: ViT-B/16, 300 epochs, SAM)
python examples/main_pretrain.py --data imagefolder --data_path runs/busi_images \
    --output_dir runs/pretrain_busi
# 3. SETR fine-tuning from the pre-trained encoder (Tab. 6 defaults), and the Baseline
python examples/main_segment.py --data folder --data_path $BUSI \
    --finetune runs/pretrain_busi/checkpoint.pth --output_dir runs/segment_busi_msmae
python examples/main_segment.py --data folder --data_path $BUSI \
    --output_dir runs/segment_busi_baseline
