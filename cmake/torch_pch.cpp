// Carrier translation unit for the precompiled <torch/torch.h> header.
