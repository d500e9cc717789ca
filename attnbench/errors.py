"""Errors raised on both sides of a data set's loading (:mod:`attnbench.data` and the image folders it
loads lazily, :mod:`attnbench.imagefolder`), kept below both so that neither imports the other for them."""


class DataError(Exception):
    """A data set that cannot be found or read, with what was expected, in one line."""
