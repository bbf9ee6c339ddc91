"""Warnings of heml.dp that the command line imports without loading scikit-learn."""


class BoundsWarning(UserWarning):
    """Most training values of some column lie outside the declared bounds and are clipped.

    Computed from the private data and shown only to whoever runs the fit (a warning, never
    stored in the model or released); it is not covered by ε and says so.
    """
