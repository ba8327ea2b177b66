"""The chat page: conversations, messages, the composer and the model bar."""
