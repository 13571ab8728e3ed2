"""omnirag ui."""
