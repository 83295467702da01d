"""Every layer type caffec knows, one module per family; importing registers them."""

from caffec.compiler.layers import (  # noqa: F401
    activations,
    convolution,
    data,
    inner_product,
    losses,
    normalization,
    python_layer,
    reduction,
    structure,
    vision,
)
