"""BigBird model, tokenizer and fused block-sparse attention kernels."""
