"""Board data (Alveo U280 first), v++ connectivity and build scripts, resource budgets."""
