"""The embedded default data (no download): generated task families and the datasets built from them."""
