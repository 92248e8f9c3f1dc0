"""`edgevlm serve`: an OpenAI-compatible HTTP server (needs the `[server]` extra)."""
