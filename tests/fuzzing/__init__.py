"""The HTTP fuzzing campaign against a real `kt gateway run` (issue 12, section 6).

- `wire`: a strict reader of the gateway's responses (what a client may rely on).
- `bodies`: valid JSON request bodies per route and structure-aware mutations of them.
- `requests`: a request as an editable draft (head, framing, body, how it is sent) and the
  mutation families that edit it: `head`, `framing`, `body`, `upstream`.
- `upstream`: a raw-socket upstream that answers each request as the case says (junk JSON,
  bad statuses and Retry-After, broken SSE, gzip, HTTP/1.0, stalls, ...).
- `campaign`: runs cases against the gateway process and judges them (the oracle), shrinks
  findings to a minimal reproducer, and reports what it tried and found.

`tests/test_gateway_http_fuzz.py` runs a bounded campaign in `make test`; `bench/fuzz.py` (`make fuzz`) a long one.
"""
