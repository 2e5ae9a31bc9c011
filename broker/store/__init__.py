"""Storage: every Redis command Errand sends lives in this package."""
