"""Imports every built-in term module so their `@register_term` decorators run."""

from param_decomp.losses import (  # noqa: F401
    adversarial,
    faithfulness,
    importance,
    lm_terms,
    reconstruction,
)
