"""Provider adapters: how the gateway talks to an upstream (`openai`, `anthropic`, the built-in `mock`)."""
