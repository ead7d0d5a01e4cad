"""factmas: continual fact learning with a two-branch embedding and Memory Aware Synapses."""
__version__ = "0.1.0"
