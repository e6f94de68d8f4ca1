"""The gateway process in rooms: http (the wire), proxy (routes), providers (upstream formats), events, control.
`server.py` runs them; tests/test_layout.py enforces what each room may import (never `kt`)."""
