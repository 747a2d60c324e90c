# Tables with the columns image,mask (paths relative to the table; several masks: a.png;b.png)
python examples/main_segment.py --data csv --csv_train data/train.csv \
    --csv_val data/val.csv --csv_test data/test.csv --output_dir runs/segment_csv
# Class-index masks (pixel values 0 = background, 1, 2): one output channel per class
python examples/main_segment.py --data csv --csv_train data/train.csv \
    --mask_mode multiclass --num_mask_classes 3 --output_dir runs/segment_classes
# 2 GPUs: --batch_size is per process (2 x 4 = the paper's 8); the lr is not rescaled
torchrun --nproc_per_node 2 examples/main_segment.py --data folder \
    --data_path /data/Dataset_BUSI_with_GT --batch_size 4 --output_dir runs/segment_busi_ddp
