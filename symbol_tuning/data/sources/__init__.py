"""Where classification and instruction rows come from: the HF hub and TFDS, local files and their readers,
and the on-disk layouts of the real raw datasets."""
