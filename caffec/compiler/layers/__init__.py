"""Every layer type caffec knows, one module per family; importing registers them."""

from caffec.compiler.layers import (  # noqa: F401
    activations,
    classification_losses,
    convolution,
    data,
    filter,
    indexing,
    inner_product,
    losses,
    normalization,
    output,
    python_layer,
    recurrent,
    reduction,
    resize,
    ssd,
    structure,
    vision,
)
