"""Model weights: the bundle, official sources, download, which bundle to use, the dev bundle, doctor."""
