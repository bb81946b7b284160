"""Training: the seed CNN, augmentation, the training loop, evaluation. Needs tensorflow.

Submodules import tensorflow inside functions, so `dfx --help` stays fast without it.
"""
