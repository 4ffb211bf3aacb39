"""The bottom layer: what the challenge defines and every other layer needs.

The contract and the scorer's constants, errors, safe reading and atomic writing, devices, sharding, progress,
DSA, the ConvNet, reading submissions, references and manifests, and the format and label checks. Nothing here
imports ``evaluator`` or the kit above it (``tests/project/test_layers.py`` holds that).
"""
