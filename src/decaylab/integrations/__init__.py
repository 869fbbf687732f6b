"""decaylab inside other libraries' training loops: `decaylab.integrations.transformers` (Hugging Face Trainer).

Each integration imports its library on import and needs its extra (`pip install 'decaylab[hf]'`).
"""
