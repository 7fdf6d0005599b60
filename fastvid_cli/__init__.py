"""fastvid: answer questions about videos with a local Video LLM, pruned with FastVID."""

__version__ = "0.1.0"
