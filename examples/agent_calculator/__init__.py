"""A tool-using agent written against the openai client, trained through the agent endpoint."""
