"""The edit: the Editor, inversions, StyleCLIP directions, latent optimization and an edit's parameters."""
