"""Access control: card formats, credential store, pure policy, access service."""
