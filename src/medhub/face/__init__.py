"""Face photos: detection and crop, the face ViT's data, pretraining, finetuning, saliency, robustness."""
