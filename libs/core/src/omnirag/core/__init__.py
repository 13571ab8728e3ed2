"""omnirag.core: the ground every omnirag service stands on."""
