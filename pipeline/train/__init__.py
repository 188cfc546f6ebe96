"""Fine-tuning the encoder on new faces: the loop, its losses, data set and runs."""
