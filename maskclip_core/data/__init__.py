"""Data: OpenSDID parquet and folder readers, masks and edges, augmentations, synthetic edits."""
