"""YAML search spaces and the code that turns one into Ray Tune objects."""
