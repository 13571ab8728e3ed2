"""omnirag gateway."""
