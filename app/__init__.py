"""asklane web process, and what the web and worker processes share."""
