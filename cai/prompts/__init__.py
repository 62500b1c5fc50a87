"""Compiling the programs' prompts: `optimize` (a DSPy optimizer within a budget; saving, loading
and rendering compiled programs), `examples` (what each program is compiled on and against)."""
