"""Who may read what: principals, grants, per-reader column masks and row filters."""
