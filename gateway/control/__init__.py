"""The gateway's control side: state shared beyond one request (counters), config, health, metrics."""
