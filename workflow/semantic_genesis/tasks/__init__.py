"""Target tasks of the fine-tuning stage: readers of the public formats, synthetic counterparts, one common store."""
