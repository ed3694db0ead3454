"""nfflowd data files (default config, bundled conntrack log)."""
