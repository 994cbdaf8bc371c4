"""Training. Every method (train/methods.py) runs through one path, train/skeleton.py; train/entry.py's `run` is
its entry. Empty on purpose: importing one train module (speed, hardware, ...) must not load every method."""
