"""Integrations with other libraries. Each submodule imports its library lazily, on use.

* :mod:`bigbird_kernels.integrations.transformers` - run Hugging Face ``transformers``' BigBird and
  BigBird-Pegasus block-sparse attention with :func:`~bigbird_kernels.block_sparse_attention`
  (``patch_bigbird`` / ``unpatch_bigbird``).
"""


