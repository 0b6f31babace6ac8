"""The loss terms. Importing the package imports every built-in term module, so each one's
`@register_term` has run before anyone reads the registry; `registry.py` imports none of them
(registration is one-way: terms -> registry)."""

from param_decomp.losses import (  # noqa: F401
    adversarial,
    faithfulness,
    importance,
    lm_terms,
    reconstruction,
)
