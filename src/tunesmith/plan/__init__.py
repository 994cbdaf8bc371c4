"""Planning a run before it starts: memory, time and cost, and how to make it fit."""
