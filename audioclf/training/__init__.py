"""Training: the loop, its schedule, EMA and the data-driven defaults."""
