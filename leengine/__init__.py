"""Entry points: the leengine CLI and daemons. Only these choose adapters."""
