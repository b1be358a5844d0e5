"""The built-in target profiles (YAML files beside this one), shipped as ``edgeprune.profiles``."""
