"""An MCP server protected by errand_rs: see README.md here."""
