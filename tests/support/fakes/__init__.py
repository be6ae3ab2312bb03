"""Small HTTP stand-ins for Slack and Anthropic, run on 127.0.0.1 for the real SDK clients."""
