"""Runtime backends behind one interface."""
