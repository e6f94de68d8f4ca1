"""Owns decision events: the request record, the bounded queue, the SQLite store and its writer, the forwarder.
Imports none of gateway.http, gateway.proxy, gateway.providers."""
