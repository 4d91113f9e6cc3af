"""Target tasks of the fine-tuning stage: a reader of each public format and one common store (their synthetic
counterparts are written by synthetic/)."""
