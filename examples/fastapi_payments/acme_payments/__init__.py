"""A payments service that charges cards in the background with Offload."""
