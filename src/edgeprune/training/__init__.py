"""Dense training, run folders, the built-in data sets and model builders."""
