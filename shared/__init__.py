"""Code both sockgate services use: settings pieces, token verification, metrics, logging."""
