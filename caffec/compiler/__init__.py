"""The IR graphs, the op registry and the passes that transform them."""
