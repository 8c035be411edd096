"""The embedded default model: its builder, trainer and training diagnostics (not installed).

``embedded/README.md`` describes the model, how it was trained (runs 1-15) and what each
module here does; the model cards in ``checkpoints/*/README.md`` hold the training commands.
Run from a source checkout, e.g. ``python -m embedded.train_tiny --out run1``.
"""
