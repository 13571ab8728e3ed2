"""Clients of omnirag's services, for the other services and for anyone's code."""
