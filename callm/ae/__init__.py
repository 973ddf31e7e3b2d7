"""Stage 1: the 3D convolutional autoencoder that scores every frame."""
