"""Task files for lm-evaluation-harness shipped with tcompress (YAML, and the Python their
`!function` entries name)."""
