"""The supervisord configuration shipped with nfflowd (package data)."""
