# A tiny CPU run on the built-in synthetic lesions, from scratch (seconds)
python examples/main_segment.py --model vit_micro_patch8_64 --input_size 32 \
    --decoder_channels 16 --num_train 32 --num_val 16 --num_test 16 --epochs 3 --lr 1e-3 \
    --num_workers 0 --device cpu --output_dir runs/segment_tiny
