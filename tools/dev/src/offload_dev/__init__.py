"""Development helpers; never installed into the service images."""
