"""Channel groups: which channels of a model must be removed together, found from its fx graph."""
