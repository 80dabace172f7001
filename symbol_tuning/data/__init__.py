"""The data side, in the order data flows: examples and sources -> symbols, formats and prompts -> tasks and
mixtures -> the batch stream and feature converters. Nothing here imports the models, training or evaluation."""
