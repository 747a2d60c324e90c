# HAM10000: tables with image_id and dx, images in two folders (ISIC_*.jpg)
python examples/main_pretrain.py --data csv \
    --csv_train /data/ham10000/train.csv --csv_val /data/ham10000/val.csv \
    --image_dir /data/ham10000/HAM10000_images_part_1 /data/ham10000/HAM10000_images_part_2 \
    --id_column image_id --label_column dx --output_dir runs/pretrain_ham
python examples/main_finetune.py --data csv \
    --csv_train /data/ham10000/train.csv --csv_val /data/ham10000/val.csv \
    --csv_test /data/ham10000/test.csv \
    --image_dir /data/ham10000/HAM10000_images_part_1 /data/ham10000/HAM10000_images_part_2 \
    --id_column image_id --label_column dx \
    --finetune runs/pretrain_ham/checkpoint.pth --output_dir runs/finetune_ham

# Messidor-2: integer grades; ids that end in .png or .jpg are used as they are
python examples/main_pretrain.py --data csv \
    --csv_train /data/messidor2/train.csv --csv_val /data/messidor2/val.csv \
    --image_dir /data/messidor2/images \
    --id_column image_id --label_column adjudicated_dr_grade --output_dir runs/pretrain_dr
