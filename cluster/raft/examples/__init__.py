"""Example services built on the Raft library."""
