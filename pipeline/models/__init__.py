"""The networks, readable and loaded from their official checkpoints: StyleGAN2 (the reference), e4e, CLIP."""
