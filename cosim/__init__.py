"""cosim: co-simulation of peer-to-peer energy trading on low-voltage networks."""
