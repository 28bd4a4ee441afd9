"""Console entry points: thin argparse wrappers over importable functions."""
