"""Attention backends; each module exposes ``BACKEND`` (see :mod:`bigbird_kernels.dispatch`)."""
