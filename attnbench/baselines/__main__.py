"""``python -m attnbench.baselines``: count our networks and variants now and rewrite the shipped files."""

from attnbench.baselines import write_shipped

write_shipped()
