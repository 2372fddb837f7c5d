"""Data: the NUS-WIDE layout, the embedded sample, download, preprocessing, splits, word vectors, data versions."""
