"""The attention variants. Each module registers itself on import; add new ones here, one line each."""

from attnbench import plain  # noqa: F401  (the textbook implementations)
from attnbench.variants import (  # noqa: F401
    axial,
    conv,
    efficient,
    gsa,
    local,
    mhsa,
    neighborhood,
    non_local,
    window,
)
